"""Adapter variants: one object per way an adapter turns A and B into an output, chosen once per adapter.

A `LoraLayer` keeps the state (A, B and any extra parameter, per adapter name) and dispatches; the
variant holds the math, each formula once:

* ``forward(layer, x, name)``: the adapted layer's whole output with this adapter alone — a fused
  autograd node while training, a plain product without gradients;
* ``term(layer, x, name, base_out)``: what the adapter adds to the base output (stacked adapters);
* ``merged_weight`` / ``merge`` / ``unmerge`` ``(layer, weight, name)``: fold into W and back;
* ``add`` / ``remove`` / ``extra_params``: the parameters beyond A and B (DoRA's magnitude).

`LoraVariant` is plain LoRA (Hu et al. 2021, §4.1); `loralab.adapters.dora.DoraVariant` adds a magnitude.
A new variant (e.g. VeRA's frozen shared factors, a magnitude-only variant) is one new module with a
`Variant` subclass decorated by `register`, and a `LoraConfig` field that selects it (`variant_name`).
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from loralab.adapters.fused import LoraLinearFunction, lora_inference
from loralab.adapters.precision import cast
from loralab.errors import AdapterError

VARIANTS: dict[str, "Variant"] = {}


def register(cls: type["Variant"]) -> type["Variant"]:
    """Class decorator: make a variant available by ``cls.name``."""
    VARIANTS[cls.name] = cls()
    return cls


def get_variant(name: str) -> "Variant":
    if name not in VARIANTS:
        raise AdapterError(f"unknown adapter variant {name!r}; known: {sorted(VARIANTS)}.")
    return VARIANTS[name]


class Variant:
    """The math of one adapter variant; stateless (the layer holds every tensor)."""

    name: ClassVar[str] = ""
    routes_stacked: ClassVar[bool] = False  # routed without gradients inside one stacked product (plain LoRA)

    def add(self, layer, name: str, dtype: torch.dtype) -> None:
        """Create the variant's own parameters for adapter ``name`` (A and B exist already)."""

    def remove(self, layer, name: str) -> None:
        """Delete what `add` created."""

    def extra_params(self, layer, name: str) -> list:
        return []

    def forward(self, layer, x: torch.Tensor, name: str) -> torch.Tensor:
        raise NotImplementedError

    def term(self, layer, x: torch.Tensor, name: str, base_out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def merged_weight(self, layer, weight: torch.Tensor, name: str) -> torch.Tensor:
        """W with adapter ``name`` folded in, (out, in), in float32 or wider; changes nothing."""
        raise NotImplementedError

    def merge(self, layer, weight: torch.Tensor, name: str) -> None:
        """Fold adapter ``name`` into the (out, in) view ``weight``, in place, keeping what unmerge needs."""
        weight.copy_(self.merged_weight(layer, weight, name))

    def unmerge(self, layer, weight: torch.Tensor, name: str) -> None:
        """Undo `merged_weight` on the (out, in) view ``weight``, in place."""
        raise NotImplementedError


def low_rank_term(layer, x: torch.Tensor, name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """s·B·A·x̃ for every position, (..., out), with composed (autograd) ops: x̃ = dropout_p(x) for a dense
    input while training; for an Embedding, A's columns at the ids. In ``dtype`` (default: x's, or W's
    for integer ids); autocast, when on, casts the products itself."""
    dtype = dtype or (x.dtype if x.is_floating_point() else layer.weight.dtype)
    lora_A, lora_B, _ = layer.adapter_factors(name)
    lora_A, lora_B = cast(dtype, lora_A, lora_B)
    p = layer.dropout[name]
    if p > 0 and layer.training and x.is_floating_point():
        x = F.dropout(x, p, True)
    hidden = layer.layer_kind.low_rank_input(layer, x, lora_A)  # (..., r)
    return (hidden * layer.scaling[name]) @ lora_B.T


@register
class LoraVariant(Variant):
    """W' = W + s·B·A."""

    name = "lora"
    routes_stacked = True

    def forward(self, layer, x, name):
        """W·x + b + s·B·A·x̃ in the compute dtype: the fused node, or `lora_inference` without gradients."""
        s = layer.scaling[name]
        with layer.operands(x, name) as (x, weight, bias, lora_A, lora_B, p):
            if not torch.is_grad_enabled() and p == 0:
                return lora_inference(x, weight, bias, lora_A, lora_B, s)
            # with dropout the node runs without gradients too: the same masks from the same RNG draws, so
            # a reentrant checkpoint's no-grad forward and its recompute agree
            return LoraLinearFunction.apply(x, weight, bias, lora_A, lora_B, s, p)

    def term(self, layer, x, name, base_out):
        return low_rank_term(layer, x, name).to(base_out.dtype)

    @torch.no_grad()
    def merged_weight(self, layer, weight, name):
        wide = torch.promote_types(weight.dtype, torch.float32)
        return weight.to(wide) + layer.delta_weight(name).to(wide)

    def unmerge(self, layer, weight, name):
        weight.sub_(layer.delta_weight(name))
