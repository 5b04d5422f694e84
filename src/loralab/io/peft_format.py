"""The PEFT on-disk adapter format, both ways — the one place that knows its key names.

A PEFT LoRA adapter directory holds ``adapter_config.json`` and
``adapter_model.safetensors`` whose keys are, for a module at ``<path>``:

=====================  ==============================================================
Linear / Conv1D        ``base_model.model.<path>.lora_A.weight`` (r, in),
                       ``base_model.model.<path>.lora_B.weight`` (out, r)
DoRA                   ``base_model.model.<path>.lora_magnitude_vector`` (out,)
Embedding              ``base_model.model.<path>.lora_embedding_A`` (r, vocab),
                       ``base_model.model.<path>.lora_embedding_B`` (dim, r)
modules_to_save        ``base_model.model.<path>.<key of the module's state dict>``
=====================  ==============================================================

Loading validates everything (config fields and types, keys, shapes, finiteness)
before touching the model, so a bad file changes nothing. Pickle files
(``adapter_model.bin``) are refused, never unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from loralab.adapters.config import LoraConfig
from loralab.adapters.inject import inject, match_modules_to_save, match_targets
from loralab.adapters.kinds import layer_kind, layer_shape
from loralab.adapters.lora import LoraLayer
from loralab.adapters.modules_to_save import ModulesToSave
from loralab.adapters.registry import (
    adapter_configs,
    adapter_modules,
    check_adapter_name,
    in_model_order,
    on_inner_module,
    on_unsharded_module,
)
from loralab.errors import AdapterError
from loralab.io.atomic import atomic_save_tensors, atomic_write_text
from loralab.io.model_card import CARD_FILE, model_card

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
PREFIX = "base_model.model."

# PEFT config fields that change what the adapter computes and that loralab does not implement:
# field -> the value that means "off".
_UNSUPPORTED = {
    "lora_bias": False,
    "layer_replication": None,
    "use_qalora": False,
    "target_parameters": None,
    "trainable_token_indices": None,
    "alora_invocation_tokens": None,
    "use_bdlora": None,
}
_KNOWN_LAYER_PATTERNS = (None, "layer", "layers", "h", "block", "blocks")
# PEFT inits that leave the base weights as they are: the loaded A and B replace the initial ones
_BASE_KEEPING_INITS = (True, False, None, "gaussian", "eva", "orthogonal", "mica")


def init_from_peft(value, where: str) -> str:
    """loralab's ``init`` for PEFT's ``init_lora_weights`` — what matters on loading is whether it moved part
    of W into the adapter. PiSSA (full SVD) and OLoRA (QR) are replayed on the base exactly, as PEFT does."""
    if value in _BASE_KEEPING_INITS:
        return "default"
    if isinstance(value, str) and value.lower() in ("pissa", "olora"):
        return value.lower()
    raise AdapterError(
        f"{where}: init_lora_weights={value!r} changed the base weights in a way loralab cannot replay (from random "
        "draws, data or quantisation); convert it to a plain LoRA adapter with PEFT first: "
        "peft_model.save_pretrained(DIR, path_initial_model_for_weight_conversion=DIR_OF_THE_UNTRAINED_ADAPTER).")


def init_to_peft(init: str):
    """PEFT's ``init_lora_weights`` for loralab's ``init`` (`init_from_peft` reversed)."""
    return True if init == "default" else init


# ----- keys -----------------------------------------------------------------------------------
def lora_keys(path: str, kind: str, dora: bool) -> dict[str, str]:
    """PEFT key for each of our tensors of one adapted module: {"A"|"B"|"m": key}."""
    if kind == "embedding":
        return {"A": f"{PREFIX}{path}.lora_embedding_A", "B": f"{PREFIX}{path}.lora_embedding_B"}
    keys = {"A": f"{PREFIX}{path}.lora_A.weight", "B": f"{PREFIX}{path}.lora_B.weight"}
    if dora:
        keys["m"] = f"{PREFIX}{path}.lora_magnitude_vector"
    return keys


_SUFFIXES = {  # key suffix → (part, embedding?)
    ".lora_A.weight": ("A", False), ".lora_B.weight": ("B", False), ".lora_magnitude_vector": ("m", False),
    ".lora_embedding_A": ("A", True), ".lora_embedding_B": ("B", True),
}


def split_adapter_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """PEFT-keyed tensors → ({module path: {"A", "B", ["m"], "embedding"}}, {other key without prefix: tensor}).

    The other keys are the ``modules_to_save`` copies (e.g. ``classifier.weight``) and saved base weights.
    """
    modules: dict[str, dict] = {}
    others: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        path = key[len(PREFIX):] if key.startswith(PREFIX) else key
        suffix = next((sfx for sfx in _SUFFIXES if path.endswith(sfx)), None)
        if suffix is None:
            others[path] = value
            continue
        part, embedding = _SUFFIXES[suffix]
        entry = modules.setdefault(path[: -len(suffix)], {"embedding": embedding})
        entry[part] = value
    return modules, others


def adapter_tensors(modules: dict[str, dict], others: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT-keyed tensors from per-module parts (the inverse of `split_adapter_tensors`)."""
    tensors = {}
    for path, parts in modules.items():
        keys = lora_keys(path, "embedding" if parts.get("embedding") else "linear", dora="m" in parts)
        for part, key in keys.items():
            tensors[key] = parts[part]
    tensors.update({f"{PREFIX}{key}": value for key, value in others.items()})
    return tensors


def write_adapter_dir(directory: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a PEFT adapter directory: ``config`` (a full adapter_config.json dict, see `peft_config_dict`) and
    PEFT-keyed ``tensors`` (see `adapter_tensors`)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / WEIGHTS_FILE, {k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


@on_inner_module
def adapter_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name`` as a PEFT-keyed state dict (detached copies)."""
    check_adapter_name(model, name, new=False)
    tensors: dict[str, torch.Tensor] = {}
    for path, module in adapter_modules(model):
        if name not in module.adapter_names:
            continue
        if isinstance(module, LoraLayer):
            keys = lora_keys(path, module.kind, dora=name in module.lora_magnitude)
            tensors[keys["A"]] = module.lora_A[name]
            tensors[keys["B"]] = module.lora_B[name]
            if "m" in keys:
                tensors[keys["m"]] = module.lora_magnitude[name]
        else:
            for key, value in module.modules_to_save[name].state_dict().items():
                tensors[f"{PREFIX}{path}.{key}"] = value
    return {k: whole(v.detach()).clone().contiguous() for k, v in tensors.items()}


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor sharded by FSDP2 (a DTensor) gathered whole from every process; any other tensor as it is."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


# ----- config ---------------------------------------------------------------------------------
def config_to_peft(model: nn.Module, name: str, cfg: LoraConfig) -> dict:
    """A PEFT ``adapter_config.json`` dict. ``target_modules`` lists the adapted modules by full
    name, so PEFT adapts exactly the same modules whatever the matching rule was."""
    layers = {path: m for path, m in adapter_modules(model) if isinstance(m, LoraLayer) and name in m.adapter_names}
    base_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return peft_config_dict(cfg, in_model_order(layers), any(m.kind == "conv1d" for m in layers.values()), base_name,
                            task_type(model, cfg))


# PEFT's task types by the Hugging Face class name's ending: PeftModel.from_pretrained (and the AutoPeftModelFor…
# classes) then build PeftModelForCausalLM / …Seq2SeqLM / …SequenceClassification, as for an adapter PEFT trained.
TASK_TYPES = (("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
              ("ForSequenceClassification", "SEQ_CLS"))
PEFT_HEADS = ("classifier", "score")  # what PEFT's sequence-classification model adds to modules_to_save


def task_type(model: nn.Module, cfg: Optional[LoraConfig] = None) -> str | None:
    """PEFT's ``task_type`` for the model's Hugging Face class; None (PEFT's default) otherwise. SEQ_CLS only for
    an adapter that trained the head PEFT would add to modules_to_save (else PEFT looks for weights it lacks)."""
    name = type(model).__name__
    task = next((task for ending, task in TASK_TYPES if name.endswith(ending)), None)
    if task == "SEQ_CLS":
        trained = {m.rsplit(".", 1)[-1] for m in (cfg.modules_to_save if cfg else [])}
        heads = {h for h in PEFT_HEADS if isinstance(getattr(model, h, None), nn.Module)}
        return task if heads and heads <= trained else None
    return task


def peft_config_dict(cfg: LoraConfig, target_modules: list[str], fan_in_fan_out: bool, base_name,
                     task: str | None = None) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": task,
        "base_model_name_or_path": base_name,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": target_modules,
        "exclude_modules": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": dict(cfg.rank_pattern),
        "alpha_pattern": dict(cfg.alpha_pattern),
        "use_rslora": cfg.rslora,
        "use_dora": cfg.dora,
        "fan_in_fan_out": fan_in_fan_out,
        "modules_to_save": list(cfg.modules_to_save) or None,
        "init_lora_weights": init_to_peft(cfg.init),
        "bias": "none",
        "lora_bias": False,
        "inference_mode": True,
        "revision": None,
    }


def config_from_peft(data: dict, where: str) -> LoraConfig:
    """Build a `LoraConfig` from a PEFT config dict, refusing what loralab cannot reproduce."""
    if not isinstance(data, dict):
        raise AdapterError(f"{where}: expected a JSON object, got {type(data).__name__}.")
    if data.get("peft_type") != "LORA":
        raise AdapterError(f"{where}: peft_type is {data.get('peft_type')!r}; loralab reads LoRA adapters (\"LORA\").")
    for field_name in ("r", "target_modules"):
        if field_name not in data:
            raise AdapterError(f"{where}: required field {field_name!r} is missing.")
    for field_name, off in _UNSUPPORTED.items():
        if data.get(field_name, off) not in (off, [], {}):
            raise AdapterError(f"{where}: {field_name}={data[field_name]!r} is not supported by loralab.")
    if data.get("bias", "none") != "none":
        raise AdapterError(f"{where}: bias={data['bias']!r} is not supported by loralab; only 'none'.")
    if data.get("layers_pattern") not in _KNOWN_LAYER_PATTERNS:
        raise AdapterError(f"{where}: layers_pattern={data['layers_pattern']!r}; loralab knows {_KNOWN_LAYER_PATTERNS[1:]}.")
    layers = data.get("layers_to_transform")
    init = init_from_peft(data.get("init_lora_weights", True), where)
    try:
        return LoraConfig(
            r=data["r"],
            alpha=data.get("lora_alpha", 8),
            dropout=data.get("lora_dropout", 0.0),
            targets=data["target_modules"],
            exclude=data.get("exclude_modules"),
            layers=layers,
            rank_pattern=data.get("rank_pattern") or {},
            alpha_pattern=data.get("alpha_pattern") or {},
            rslora=data.get("use_rslora", False),
            dora=data.get("use_dora", False),
            modules_to_save=data.get("modules_to_save") or [],
            init=init,
        )
    except AdapterError as err:
        raise AdapterError(f"{where}: {err}") from None


# ----- save -----------------------------------------------------------------------------------
@on_inner_module
def save_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default", training: Optional[dict] = None,
                 write: bool = True) -> Path:
    """Write adapter ``name`` in PEFT format (loadable with ``PeftModel.from_pretrained``) with a model card
    (README.md; ``training``: data, metrics, command, labels — see `model_card`).

    On a model sharded by FSDP every process must call this (each gathers the adapter's shards); pass
    ``write=False`` on all but one.
    """
    check_adapter_name(model, name, new=False)
    tensors = adapter_state_dict(model, name)
    config = config_to_peft(model, name, adapter_configs(model)[name])
    out = Path(directory)
    if not write:
        return out
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / CARD_FILE, model_card(config, training))
    return out


# ----- load -----------------------------------------------------------------------------------
def read_adapter_dir(directory: str | os.PathLike) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Read and check a PEFT adapter directory without touching any model."""
    root = Path(directory)
    if not root.is_dir():
        raise AdapterError(f"adapter directory {str(root)!r} does not exist.")
    weights, pickled = root / WEIGHTS_FILE, root / PICKLE_FILE
    if not weights.exists():
        if pickled.exists():
            raise AdapterError(
                f"{pickled} is a pickle file, which loralab never loads (unpickling can run code). "
                "Convert it once, in an environment you trust: python -c \"import torch; "
                "from safetensors.torch import save_file; "
                f"save_file(torch.load('{pickled}', weights_only=True), '{weights}')\""
            )
        raise AdapterError(f"{root} has no {WEIGHTS_FILE}; a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}.")
    config_path = root / CONFIG_FILE
    if not config_path.exists():
        raise AdapterError(f"{root} has no {CONFIG_FILE}; a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}.")
    try:
        data = json.loads(config_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"{config_path} is not valid JSON ({err}); fix or re-save the adapter.") from None
    cfg = config_from_peft(data, str(config_path))
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise AdapterError(f"{weights} is not a readable safetensors file ({err}).") from None
    check_factors(cfg, tensors, str(weights))
    return cfg, tensors


FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_WEIGHT = 1e15


def check_factors(cfg: LoraConfig, tensors: dict[str, torch.Tensor], where: str) -> None:
    """What an adapter file must be whatever model it goes on: per adapted module an A (r, in) and a B (out, r)
    with r the config's rank for that module, DoRA's m (out,), every tensor floating point (float32, float16,
    bfloat16 or float64) and finite. `load_adapter` checks the shapes against the model besides."""
    modules, others = split_adapter_tensors(tensors)
    for path, parts in modules.items():
        missing = [p for p in ("A", "B") if p not in parts]
        if missing:
            raise AdapterError(f"{where}: {path} has no lora_{missing[0]}; an adapted layer needs both lora_A and lora_B.")
        a, b, r = parts["A"], parts["B"], cfg.rank_for(path)
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise AdapterError(f"{where}: {path} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; rank {r} (the "
                               f"config's) needs A ({r}, in) and B (out, {r}). The file and its config disagree.")
        if "m" in parts and (parts["m"].dim() != 1 or parts["m"].shape[0] != b.shape[0]):
            raise AdapterError(f"{where}: {path}'s magnitude vector is {tuple(parts['m'].shape)}; DoRA's is ({b.shape[0]},).")
    for key, tensor in tensors.items():
        if tensor.dtype not in FLOATS and (key.removeprefix(PREFIX) not in others or tensor.is_floating_point()):
            raise AdapterError(f"{where}: {key} holds {str(tensor.dtype).removeprefix('torch.')} values; adapter weights "
                               "are float32, float16, bfloat16 or float64. Re-save the adapter.")
        if tensor.is_floating_point() and tensor.dtype in FLOATS and tensor.numel():
            if not torch.isfinite(tensor).all():
                raise AdapterError(f"{where}: {key} holds non-finite values (nan/inf); the adapter is corrupt.")
            largest = float(tensor.abs().max())
            if largest > MAX_WEIGHT:
                raise AdapterError(f"{where}: {key} holds values up to {largest:.3g}, far beyond any trained weight "
                                   "(its outputs would overflow); the adapter is corrupt.")


def expected_shapes(model: nn.Module, cfg: LoraConfig) -> dict[str, tuple[int, ...]]:
    """The PEFT keys and shapes an adapter with ``cfg`` must have on ``model``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in match_targets(model, cfg):
        module = model.get_submodule(path)
        kind = layer_kind(module)
        n_in, n_out = layer_shape(module)
        r = cfg.rank_for(path)
        keys = lora_keys(path, kind, cfg.dora)
        shapes[keys["A"]] = (r, n_in)
        shapes[keys["B"]] = (n_out, r)
        if "m" in keys:
            shapes[keys["m"]] = (n_out,)
    for path in match_modules_to_save(model, cfg.modules_to_save):
        module = model.get_submodule(path)
        if isinstance(module, ModulesToSave):
            module = module.original_module
        for key, value in module.state_dict().items():
            shapes[f"{PREFIX}{path}.{key}"] = tuple(value.shape)
    return shapes


def integer_keys(model: nn.Module, cfg: LoraConfig) -> set[str]:
    """The modules_to_save keys whose tensors are not floating point in the model (e.g. int buffers)."""
    keys = set()
    for path in match_modules_to_save(model, cfg.modules_to_save):
        module = model.get_submodule(path)
        module = module.original_module if isinstance(module, ModulesToSave) else module
        keys |= {f"{PREFIX}{path}.{k}" for k, v in module.state_dict().items() if not v.is_floating_point()}
    return keys


def base_weight_key(path: str) -> str:
    """Key PEFT uses (``save_embedding_layers``) for a target's own base weight, e.g. a resized vocabulary."""
    return f"{PREFIX}{path}.base_layer.weight"


def embedding_weights(model: nn.Module, targets: list[str]) -> dict[str, nn.Parameter]:
    """{PEFT key: the model's tensor} for what PEFT's ``save_embedding_layers`` writes (an embedding was
    targeted, or the vocabulary resized): the base weight (and bias) of embedding targets and of the input
    and output embeddings — under ``.base_layer.`` when targeted, as they are otherwise."""
    found = {}
    for path in targets:
        module = model.get_submodule(path)
        if layer_kind(module) == "embedding":
            found[base_weight_key(path)] = module.weight
    names = {id(m): n for n, m in model.named_modules()}
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get)() if callable(getattr(model, get, None)) else None
        if not isinstance(module, nn.Module) or id(module) not in names:
            continue
        path = names[id(module)]
        inner = f"{path}.base_layer" if path in targets else path
        for key, tensor in module.named_parameters(recurse=False):
            found[f"{PREFIX}{inner}.{key}"] = tensor
    return found


def _check_tensors(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]],
                   optional: dict[str, tuple[int, ...]], integers: set[str], where: str) -> None:
    missing = sorted(set(shapes) - set(tensors))
    unknown = sorted(set(tensors) - set(shapes) - set(optional))
    shapes = {**shapes, **{k: v for k, v in optional.items() if k in tensors}}
    if missing:
        raise AdapterError(f"{where}: {len(missing)} keys the config implies are missing, e.g. {missing[:4]}.")
    if unknown:
        raise AdapterError(
            f"{where}: {len(unknown)} keys match no adapted module of this model, e.g. {unknown[:4]}; "
            "is this adapter for another model?"
        )
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            resize = (f" The adapter's vocabulary has {tensors[key].shape[0]} rows: resize the model first, "
                      f"model.resize_token_embeddings({tensors[key].shape[0]}).") if key in optional else ""
            raise AdapterError(f"{where}: {key} has shape {tuple(tensors[key].shape)}, this model needs {shape}.{resize}")
        if tensors[key].is_floating_point() == (key in integers):
            wanted = "integer" if key in integers else "floating point (float32, float16 or bfloat16)"
            raise AdapterError(f"{where}: {key} holds {tensors[key].dtype} values; this model needs {wanted} values "
                               "there. Re-save the adapter.")
        if tensors[key].is_floating_point() and not torch.isfinite(tensors[key]).all():
            raise AdapterError(f"{where}: {key} holds non-finite values (nan/inf); the adapter is corrupt.")


@on_unsharded_module
def copy_adapter_weights(model: nn.Module, directory: str | os.PathLike, name: str = "default") -> None:
    """Fill the existing adapter ``name`` with the tensors of a saved one (same config: e.g. a checkpoint of
    it), checked first; nothing is injected or activated."""
    check_adapter_name(model, name, new=False)
    cfg, tensors = read_adapter_dir(directory)
    current = adapter_state_dict(model, name)
    where = str(Path(directory) / WEIGHTS_FILE)
    _check_tensors(tensors, {k: tuple(v.shape) for k, v in current.items()}, {},
                   {k for k, v in current.items() if not v.is_floating_point()}, where)
    params = {}
    for path, module in adapter_modules(model):
        if name not in module.adapter_names:
            continue
        if isinstance(module, LoraLayer):
            keys = lora_keys(path, module.kind, dora=name in module.lora_magnitude)
            params.update({keys["A"]: module.lora_A[name], keys["B"]: module.lora_B[name]})
            if "m" in keys:
                params[keys["m"]] = module.lora_magnitude[name]
        else:
            params.update({f"{PREFIX}{path}.{k}": v for k, v in module.modules_to_save[name].state_dict().items()})
    with torch.no_grad():
        for key, target in params.items():
            target.copy_(tensors[key])


@on_unsharded_module
def load_adapter(
    model: nn.Module,
    directory: str | os.PathLike,
    name: str = "default",
    activate: bool = True,
    trainable: bool = False,
) -> list[str]:
    """Load a PEFT-format adapter (saved by loralab or by PEFT) as adapter ``name``.

    Everything is checked before the model changes. The adapter is injected, filled
    with the file's tensors and (by default) made the only active adapter, frozen.

    Returns:
        The names of the adapted modules.
    """
    check_adapter_name(model, name, new=True)
    cfg, tensors = read_adapter_dir(directory)
    return attach_adapter(model, cfg, tensors, name, str(Path(directory) / WEIGHTS_FILE), activate, trainable)


@on_unsharded_module
def attach_adapter(model: nn.Module, cfg: LoraConfig, tensors: dict[str, torch.Tensor], name: str = "default",
                   where: str = "adapter", activate: bool = True, trainable: bool = False) -> list[str]:
    """`load_adapter` for an adapter already in memory: its config and PEFT-keyed tensors (e.g. a composition),
    checked against the model first (``where`` names them in errors)."""
    check_adapter_name(model, name, new=True)
    check_factors(cfg, tensors, where)
    base_tensors = embedding_weights(model, match_targets(model, cfg))  # what PEFT may save besides the adapter
    _check_tensors(tensors, expected_shapes(model, cfg), {k: tuple(t.shape) for k, t in base_tensors.items()},
                   integer_keys(model, cfg), where)
    with torch.no_grad():  # base embedding tensors first: a PiSSA/OLoRA init in inject starts from them
        for key, tensor in base_tensors.items():
            if key in tensors:
                tensor.copy_(tensors[key])
    targets = inject(model, cfg, name=name, activate=activate, trainable=trainable)
    with torch.no_grad():
        for path, module in adapter_modules(model):
            if name not in module.adapter_names:
                continue
            if isinstance(module, LoraLayer):
                keys = lora_keys(path, module.kind, dora=cfg.dora)
                module.lora_A[name].copy_(tensors[keys["A"]])
                module.lora_B[name].copy_(tensors[keys["B"]])
                if "m" in keys:
                    module.lora_magnitude[name].copy_(tensors[keys["m"]])
            else:
                prefix = f"{PREFIX}{path}."
                state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                module.modules_to_save[name].load_state_dict(state)
    return targets

