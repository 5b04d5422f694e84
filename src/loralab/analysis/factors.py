"""The one seam from an adapter to numbers: per-layer factors (A, B, s, m) and ΔW.

    fs = factors("runs/x/adapter")          # or a live model with adapters injected
    dw = delta_weight(fs[path], base)       # (out, in); DoRA needs the base weight W0

Every measurement (`spectra`, `similarity`, ...) and every composition (`loralab.compose`)
starts here, so none of them knows PEFT key names (only `loralab.io` does) or whether the
adapter came from loralab or PEFT. A directory is read without loading any model; base
weights, where a measurement needs them, come from `base_weights`, which reads only the
tensors it needs from the model's safetensors files.

Shapes: A (r, in), B (out, r), m (out,), ΔW (out, in). For an Embedding, "in" is the
vocabulary (A is (r, vocab), B is (dim, r)), as in PEFT.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from loralab.errors import AdapterError


@dataclass
class Factors:
    """One adapted layer: ΔW = s·B·A (LoRA), or DoRA's m/‖W0 + s·B·A‖ ⊙ (W0 + s·B·A) − W0."""

    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float  # s = alpha/r, or alpha/√r (rsLoRA)
    magnitude: Optional[torch.Tensor] = None  # m (out,), DoRA only
    kind: str = "linear"  # linear, conv1d or embedding

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of ΔW."""
        return self.B.shape[0], self.A.shape[1]

    def low_rank_delta(self) -> torch.Tensor:
        """s·B·A, (out, in) — dense; measurements use the factors and avoid this."""
        return self.scale * (self.B.double() @ self.A.double())


def factors(source: Union[nn.Module, str, os.PathLike], name: str = "default",
            residual_ok: bool = False) -> dict[str, Factors]:
    """{module path: Factors} of adapter ``name`` on a live model, or of an adapter directory.

    A PiSSA/OLoRA adapter is refused (`refuse_residual_init`) unless ``residual_ok``: then the
    factors are returned as they are, for what does not need ΔW (ranks, shapes)."""
    if isinstance(source, nn.Module):
        return _live_factors(source, name, residual_ok)
    return _directory_factors(Path(source), residual_ok)


def refuse_residual_init(init: str, where: str) -> None:
    """PiSSA and OLoRA adapters change W by s·(B·A − B₀·A₀), which their factors alone do not give."""
    from loralab.adapters.config import RESIDUAL_INITS

    if init in RESIDUAL_INITS:
        raise AdapterError(
            f"{where} was initialised with {init} (W keeps the residual W − s·B₀·A₀), so its weight change is "
            "s·(B·A − B₀·A₀), not the s·B·A that measurements and composition read; convert it to a plain LoRA "
            "adapter with PEFT first: save_pretrained(DIR, path_initial_model_for_weight_conversion=...).")


def _live_factors(model: nn.Module, name: str, residual_ok: bool = False) -> dict[str, Factors]:
    from loralab.adapters.registry import adapter_configs, check_adapter_name, lora_layers

    check_adapter_name(model, name, new=False)
    if not residual_ok:
        refuse_residual_init(adapter_configs(model)[name].init, f"adapter {name!r}")
    out = {}
    for path, layer in lora_layers(model):
        if name in layer.adapter_names:
            magnitude = layer.lora_magnitude[name].detach() if name in layer.lora_magnitude else None
            out[path] = Factors(layer.lora_A[name].detach(), layer.lora_B[name].detach(), layer.scaling[name],
                                magnitude, layer.kind)
    if not out:
        raise AdapterError(f"adapter {name!r} adapts no layer of this model ({adapter_configs(model)[name]}).")
    return out


def _directory_factors(directory: Path, residual_ok: bool = False) -> dict[str, Factors]:
    from loralab.adapters.registry import in_model_order
    from loralab.io.peft_format import read_adapter_dir, split_adapter_tensors

    cfg, tensors = read_adapter_dir(directory)
    if not residual_ok:
        refuse_residual_init(cfg.init, f"adapter {directory}")
    conv1d = adapter_meta(directory).get("fan_in_fan_out", False)
    modules, _ = split_adapter_tensors(tensors)
    out = {}
    for path in in_model_order(modules):
        parts = modules[path]
        if "A" not in parts or "B" not in parts:
            raise AdapterError(f"{directory}: {path} has {sorted(k for k in parts if k != 'embedding')}; "
                               "an adapted layer needs both lora_A and lora_B.")
        kind = "embedding" if parts["embedding"] else ("conv1d" if conv1d else "linear")
        out[path] = Factors(parts["A"], parts["B"], cfg.scaling_for(path), parts.get("m"), kind)
    return out


def adapter_meta(directory: Union[str, os.PathLike]) -> dict:
    """adapter_config.json as a dict (base model name, fan_in_fan_out, ...), read without checks."""
    return json.loads((Path(directory) / "adapter_config.json").read_text())


def delta_weight(f: Factors, base: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The layer's real weight change ΔW = W' − W0, (out, in), in float64.

    LoRA: s·B·A. DoRA (Liu et al. 2024, eq. 5): W' = m ⊙ (W0 + s·B·A)/‖W0 + s·B·A‖_row, so the
    change includes the magnitude's rescaling of W0 — not s·B·A. DoRA needs ``base`` = W0 (out, in).
    """
    low_rank = f.low_rank_delta()
    if f.magnitude is None:
        return low_rank
    if base is None:
        raise AdapterError("DoRA's weight change m/‖W0 + sBA‖ ⊙ (W0 + sBA) − W0 needs the base weight W0; "
                           "pass the base model (e.g. --model).")
    w0 = base.double()
    adapted = w0 + low_rank
    return adapted * (f.magnitude.double() / adapted.norm(dim=1))[:, None] - w0


def layer_specs(fs: dict[str, Factors]) -> dict[str, tuple[str, tuple[int, int]]]:
    """{path: (kind, (out, in))} of factors, what `base_weights` needs to find and orient W0."""
    return {path: (f.kind, f.shape) for path, f in fs.items()}


def base_weights(source: Union[nn.Module, str, os.PathLike],
                 specs: dict[str, tuple[str, tuple[int, int]]]) -> dict[str, torch.Tensor]:
    """{path: W (out, in)} for the layers of ``specs`` (see `layer_specs`), from a live model or a model
    name/directory.

    A live model's adapted layers give their unmerged weight. From files, only the needed tensors
    are read (``<path>.weight``, with or without the model's leading prefix such as ``bert.``) and
    turned to (out, in) by the layer kind (Conv1D and Embedding store the transpose).
    """
    if isinstance(source, nn.Module):
        return {path: _live_base(source.get_submodule(path)) for path in specs}
    from safetensors import safe_open

    from loralab import models

    root = Path(models.resolve(str(source)))
    index = {}
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            index.update({key: file for key in handle.keys()})
    out = {}
    for path, (kind, shape) in specs.items():
        key = _find_key(index, path + ".weight")
        with safe_open(str(index[key]), "pt") as handle:
            weight = handle.get_tensor(key)
        out[path] = weight.T if kind != "linear" else weight
        if tuple(out[path].shape) != tuple(shape):
            raise AdapterError(f"base weight {key} has shape {tuple(weight.shape)}; the adapter's {path} needs "
                               f"(out, in) = {tuple(shape)}. Is this adapter for another model?")
    return out


def _find_key(index: dict, key: str) -> str:
    candidates = [key, key.split(".", 1)[-1]] + [k for k in index if k.endswith("." + key) or key.endswith("." + k)]
    for candidate in candidates:
        if candidate in index:
            return candidate
    raise AdapterError(f"the base model has no tensor for {key!r} (nor without its first prefix); is this adapter for "
                       "another model?")


def _live_base(module: nn.Module) -> torch.Tensor:
    from loralab.adapters.kinds import layer_kind
    from loralab.adapters.lora import LoraLayer

    if isinstance(module, LoraLayer):
        if module.merged:
            raise AdapterError("the base weights are needed unmerged; call ll.unmerge(model) first.")
        return module.weight_out_in().detach()
    kind = layer_kind(module)
    if kind is None:
        raise AdapterError(f"{type(module).__name__} is not a layer LoRA adapts.")
    return module.weight.detach() if kind == "linear" else module.weight.detach().T
