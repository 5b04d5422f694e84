"""Target matching and `inject`: put a named adapter into any `nn.Module`.

Matching follows PEFT's semantics so configs move between the two tools:

* ``targets=None`` (the default): the model's attention query and value projections, found by
  name (`DEFAULT_TARGETS`, as PEFT picks defaults by model type);
* ``targets`` as a string: a regex that must match the whole module name;
* as a list: a module whose name equals an entry or ends with ``"." + entry``;
* ``"all-linear"``: every Linear / Conv1D except the output head
  (``get_output_embeddings()``) and classification heads (``classifier``, ``score``);
* ``exclude`` removes matches (same forms), and so does ``modules_to_save`` (a module trained fully,
  and what is inside it, gets no adapter); ``layers`` keeps only modules inside
  the listed block indices (``...layer.3.``, ``...layers.3.``, ``...h.3.``, ``...blocks.3.``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterator, Optional, Union

import torch
from torch import nn

from loralab.adapters.checkpointing import let_gradients_through_checkpoints
from loralab.adapters.config import LoraConfig
from loralab.adapters.kinds import check_supported, layer_kind
from loralab.adapters.lora import LoraLayer
from loralab.adapters.manage import set_active
from loralab.adapters.modules_to_save import ModulesToSave
from loralab.adapters.registry import (
    adapter_configs,
    adapter_modules,
    check_adapter_name,
    lora_layers,
    on_inner_module,
    on_unsharded_module,
)
from loralab.errors import AdapterError

ALL_LINEAR = "all-linear"
HEAD_NAMES = ("classifier", "score")
_LAYER_INDEX = re.compile(r"(?:^|.*\.)(?:layers|layer|h|block|blocks)\.(\d+)\.")


# The attention query/value projections by architecture family (leaf module names), tried in order;
# a fused q/k/v projection stands for both.
DEFAULT_TARGETS = (
    ("query", "value"),            # BERT, RoBERTa, XLM-R, ELECTRA, ALBERT
    ("q_proj", "v_proj"),          # Llama, Mistral, Qwen2, Gemma, Phi, OPT, BART
    ("q_lin", "v_lin"),            # DistilBERT
    ("query_proj", "value_proj"),  # DeBERTa-v2/v3
    ("q", "v"),                    # T5, MPNet
    ("c_attn",),                   # GPT-2, GPT-BigCode
    ("query_key_value",),          # BLOOM, GPT-NeoX, Falcon
    ("qkv_proj",),                 # Phi-3, CodeGen
    ("Wqkv",),                     # MPT, ModernBERT
    ("in_proj",),                  # DeBERTa (v1)
)


@on_inner_module
def default_targets(model: nn.Module) -> list[str]:
    """The attention query/value projections of ``model``: the first family of `DEFAULT_TARGETS` whose
    names are all Linear (or GPT-2 Conv1D) layers in it."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                  if layer_kind(module) in ("linear", "conv1d")}
    for family in DEFAULT_TARGETS:
        if set(family) <= leaf_names:
            return list(family)
    known = ", ".join("/".join(family) for family in DEFAULT_TARGETS)
    raise AdapterError(f"this model has none of the attention projections loralab knows ({known}); name the "
                       "layers to adapt with targets= (CLI: --targets), e.g. 'all-linear' or module names as "
                       "print(model) shows them.")


def with_targets(model: nn.Module, cfg: LoraConfig) -> LoraConfig:
    """``cfg`` itself, or a copy naming the model's default targets when ``cfg.targets`` is None."""
    return cfg if cfg.targets is not None else replace(cfg, targets=default_targets(model))


def name_matches(spec: Union[str, list[str]], name: str) -> bool:
    """PEFT's rule: a string is a full-match regex; a list entry matches exactly or as a ``.suffix``."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == entry or name.endswith("." + entry) for entry in spec)


def layer_index(name: str) -> Optional[int]:
    """The transformer block index a module lives in, e.g. 3 for ``encoder.layer.3.attention.self.query``."""
    found = _LAYER_INDEX.match(name)
    return int(found.group(1)) if found else None


def _candidate_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named modules that may be targets: not the root, and not inside an adapter's own parts."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, (LoraLayer, ModulesToSave)):
            inside.append(name)
        yield name, module


def _head_names(model: nn.Module) -> set[str]:
    heads = set()
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if (output is not None and module is output) or last in HEAD_NAMES:
            heads.add(name)
    return heads


def _adaptable_examples(model: nn.Module, count: int = 12) -> list[str]:
    return [n for n, m in _candidate_modules(model) if layer_kind(m) is not None][:count]


@on_inner_module
def match_targets(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Names of the modules ``cfg`` adapts, in model order.

    Raises:
        AdapterError: nothing matches (the message lists module names that exist), a match
            is a module type LoRA does not support, or one the config's DoRA/PiSSA cannot use.
    """
    cfg = with_targets(model, cfg)
    all_linear = cfg.targets == ALL_LINEAR
    heads = _head_names(model) if all_linear else set()
    saved = set(match_modules_to_save(model, cfg.modules_to_save, strict=False))
    matched = []
    for name, module in _candidate_modules(model):
        if isinstance(module, ModulesToSave) or any(name == s or name.startswith(s + ".") for s in saved):
            continue  # a module trained fully (and what is inside it) gets no adapter
        if all_linear:
            in_head = any(name == h or name.startswith(h + ".") for h in heads)
            if in_head or layer_kind(module) not in ("linear", "conv1d"):
                continue
        elif not name_matches(cfg.targets, name):
            continue
        if cfg.exclude is not None and name_matches(cfg.exclude, name):
            continue
        if cfg.layers is not None and layer_index(name) not in cfg.layers:
            continue
        if layer_kind(module) is None:
            raise AdapterError(
                f"target {name!r} is a {type(module).__name__}, which LoRA does not support "
                "(supported: Linear, Conv1D, Embedding); narrow targets to the layers inside it."
            )
        check_supported(layer_kind(module), cfg.dora, cfg.init, repr(name))
        matched.append(name)
    if not matched:
        raise AdapterError(
            f"no module matches targets={cfg.targets!r} (exclude={cfg.exclude!r}, layers={cfg.layers!r}); "
            f"some adaptable modules in this model: {_adaptable_examples(model)}"
        )
    return matched


def unmatched_entries(model: nn.Module, targets) -> list[str]:
    """Entries of a list-form ``targets`` that match no module of ``model`` (none for other forms).

    Not an error in `inject`: as in PEFT, a list may name modules of several architectures (adapter
    configs are shared that way); the command line refuses them, where they are usually typos.
    """
    if not isinstance(targets, list):
        return []
    names = [n for n, _ in _candidate_modules(model)]
    return [entry for entry in targets if not any(name_matches([entry], n) for n in names)]


def match_modules_to_save(model: nn.Module, specs: list[str], strict: bool = True) -> list[str]:
    """Names of the modules in ``specs`` (list form: exact name or ``.suffix``)."""
    if not specs:
        return []
    found = [name for name, _ in _candidate_modules(model) if name_matches(list(specs), name)]
    if strict and not found:
        examples = [n for n, _ in model.named_children()]
        raise AdapterError(f"no module matches modules_to_save={specs!r}; top-level modules: {examples}")
    return found


@on_unsharded_module
def inject(
    model: nn.Module, cfg: LoraConfig, name: str = "default", activate: bool = True, trainable: bool = True,
    autocast_adapter_dtype: bool = True,
) -> list[str]:
    """Add adapter ``name`` to the modules ``cfg`` targets; freeze everything else.

    Args:
        model: Any module; its matched layers are replaced by `LoraLayer` in place.
        cfg: What to adapt and how.
        name: Adapter name (PEFT's default is ``"default"``).
        activate: Make this the only active adapter.
        trainable: Leave the new adapter's parameters trainable (all others are frozen).
        autocast_adapter_dtype: On a float16/bfloat16 base, keep the adapter in float32 (PEFT's
            default); the layers cast it to the compute dtype in the forward pass. False: the base's dtype.

    Returns:
        The names of the adapted modules (modules_to_save not included).
    """
    if not isinstance(cfg, LoraConfig):
        raise AdapterError(f"inject needs a loralab.LoraConfig, got {type(cfg).__name__}.")
    check_adapter_name(model, name, new=True)
    cfg = with_targets(model, cfg)  # the adapter records the names it adapted, as PEFT does
    if any(layer.merged for _, layer in lora_layers(model)):
        raise AdapterError("cannot inject while adapters are merged; call ll.unmerge(model) first.")
    targets = match_targets(model, cfg)
    saves = match_modules_to_save(model, cfg.modules_to_save)
    model.requires_grad_(False)
    for module_name in targets:
        layer = model.get_submodule(module_name)
        if not isinstance(layer, LoraLayer):
            layer = LoraLayer(layer)
            model.set_submodule(module_name, layer)
        low_precision = layer.weight.dtype in (torch.float16, torch.bfloat16)
        layer.add_adapter(
            name,
            r=cfg.rank_for(module_name),
            scaling=cfg.scaling_for(module_name),
            dropout=cfg.dropout,
            dora=cfg.dora,
            init=cfg.init,
            dtype=torch.float32 if low_precision and autocast_adapter_dtype else None,
        )
    for module_name in saves:
        wrapper = model.get_submodule(module_name)
        if not isinstance(wrapper, ModulesToSave):
            wrapper = ModulesToSave(wrapper)
            model.set_submodule(module_name, wrapper)
        wrapper.add_adapter(name)
    adapter_configs(model)[name] = cfg
    for _, module in adapter_modules(model):
        if name in module.adapter_names:
            for param in module.adapter_params(name):
                param.requires_grad_(trainable)
    let_gradients_through_checkpoints(model)  # HF gradient checkpointing works on, in either order
    if activate:
        set_active(model, [name])
    return targets
