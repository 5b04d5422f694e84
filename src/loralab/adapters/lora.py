"""`LoraLayer`: a Linear, GPT-2 Conv1D or Embedding with any number of named LoRA/DoRA adapters.

LoRA (Hu et al. 2021, §4.1) freezes W and learns ΔW = s·B·A:

    h = W·x + b + s·B·A·dropout(x),     A (r, in), B (out, r), s = α/r (rsLoRA: α/√r)

The layer keeps the base parameter names (``weight``, ``bias``), so a base checkpoint loads unchanged,
and adds one entry per adapter name to ``lora_A``, ``lora_B`` and, for DoRA, ``lora_magnitude``.
``weight`` keeps its native layout; `weight_out_in` gives the (out, in) view all the math uses
(`kinds.LayerKind`). The layer holds state and dispatches: each adapter's math lives in its variant
(`variant.LoraVariant`, `dora.DoraVariant`), chosen once when the adapter is added.

Merging is explicit (`merge` / `unmerge`) and never happens on ``train()`` or ``eval()``. What unmerge
needs for DoRA (the row norms at merge time) is kept in the ``dora_norm`` buffers, i.e. in the state
dict. Values derived from the weights are cached only inside `loralab.frozen` (`cache.DerivedCache`).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

import loralab.adapters.dora  # noqa: F401 - registers the DoRA variant
from loralab.adapters.cache import DerivedCache
from loralab.adapters.host import BASE, AdapterHost
from loralab.adapters.kinds import check_supported, kind_of
from loralab.adapters.precision import autocast_off, cast, compute_dtype
from loralab.adapters.residual_init import init_olora, init_pissa
from loralab.adapters.routing import routed_lora_inference
from loralab.adapters.variant import Variant, get_variant
from loralab.errors import AdapterError


class BufferDict(nn.Module):
    """Named buffers (saved in the state dict, never trained)."""

    def set(self, name: str, value: torch.Tensor) -> None:
        self.register_buffer(name, value)

    def get(self, name: str) -> torch.Tensor:
        return self._buffers[name]

    def pop(self, name: str) -> torch.Tensor:
        return self._buffers.pop(name)

    def __contains__(self, name: str) -> bool:
        return name in self._buffers


class LoraLayer(AdapterHost):
    """A supported base layer plus named LoRA/DoRA adapters (see the module docstring)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        kind = kind_of(base)
        if kind is None:
            raise AdapterError(f"LoraLayer wraps Linear, Conv1D or Embedding, not {type(base).__name__}.")
        self.layer_kind = kind
        self.training = base.training
        self.weight = base.weight
        self.bias = getattr(base, "bias", None)
        self.in_features, self.out_features = kind.shape(base)
        kind.copy_attributes(base, self)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_magnitude = nn.ParameterDict()
        self.dora_norm = BufferDict()
        self.scaling: dict[str, float] = {}
        self.dropout: dict[str, float] = {}
        self.variants: dict[str, Variant] = {}
        self.merged: list[str] = []
        self.derived = DerivedCache()

    @property
    def kind(self) -> str:
        """"linear", "conv1d" or "embedding"."""
        return self.layer_kind.name

    # ----- adapters -------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.lora_A.keys())

    def weight_out_in(self) -> torch.Tensor:
        """W as (out, in): a view of ``weight`` (transposed for Conv1D and Embedding)."""
        return self.layer_kind.out_in(self.own("weight"))

    def own(self, attr: str) -> Optional[torch.Tensor]:
        """``getattr(self, attr)`` for ``weight``/``bias``, from the parameter table first (see `adapter_factors`)."""
        params = self._parameters
        return params[attr] if attr in params else getattr(self, attr)

    def adapter_factors(self, name: str) -> tuple[nn.Parameter, nn.Parameter, Optional[nn.Parameter]]:
        """(A, B, m or None for LoRA) of adapter ``name``.

        Read from the ParameterDicts' own tables: nn.Module's attribute lookup costs 1–3 µs per name,
        which at batch 1 is a measurable share of an unmerged layer call (docs/results.md, issue 16).
        """
        modules = self._modules
        return (modules["lora_A"]._parameters[name], modules["lora_B"]._parameters[name],
                modules["lora_magnitude"]._parameters.get(name))

    def add_adapter(self, name: str, r: int, scaling: float, dropout: float, dora: bool, init: str,
                    dtype: Optional[torch.dtype] = None) -> None:
        """Create adapter ``name`` with rank ``r``: A (r, in), B (out, r) and, for DoRA, m (out,), in
        ``dtype`` (default: the base weight's)."""
        check_supported(self.kind, dora, init, "this layer")
        if self.merged:
            raise AdapterError("cannot add an adapter while adapters are merged; call ll.unmerge(model) first.")
        dtype, device = dtype or self.weight.dtype, self.weight.device
        lora_A = torch.empty(r, self.in_features, dtype=dtype, device=device)
        lora_B = torch.empty(self.out_features, r, dtype=dtype, device=device)
        self.layer_kind.init_factors(lora_A, lora_B, init)
        self.lora_A[name], self.lora_B[name] = nn.Parameter(lora_A), nn.Parameter(lora_B)
        self.scaling[name], self.dropout[name] = float(scaling), float(dropout)
        if init in ("pissa", "olora"):
            (init_pissa if init == "pissa" else init_olora)(self, name)
        self.variants[name] = get_variant("dora" if dora else "lora")
        self.variants[name].add(self, name, dtype)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged:
            raise AdapterError(f"adapter {name!r} is merged; call ll.unmerge(model) before deleting it.")
        if name in self.variants:
            self.variants.pop(name).remove(self, name)
        for store in (self.lora_A, self.lora_B):
            if name in store:
                del store[name]
        self.scaling.pop(name, None)
        self.dropout.pop(name, None)
        self.active = [a for a in self.active if a != name]

    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔW = s·B·A, (out, in)."""
        return (self.lora_B[name] @ self.lora_A[name]) * self.scaling[name]

    def adapter_params(self, name: str) -> list[nn.Parameter]:
        return [self.lora_A[name], self.lora_B[name], *self.variants[name].extra_params(self, name)]

    # ----- merge ----------------------------------------------------------------------------
    @torch.no_grad()
    def check_merge(self, names: list[str]) -> None:
        """Raise AdapterError if `merge` would make non-finite weights, without changing anything."""
        weight = self.weight_out_in()
        for name in names:
            if name not in self.merged:
                weight = self.variants[name].merged_weight(self, weight, name)
                if not torch.isfinite(weight).all():
                    raise AdapterError(f"merging adapter {name!r} would make non-finite weights; weights left unchanged.")

    @torch.no_grad()
    def merge(self, names: list[str]) -> None:
        """Fold adapters into W, in order; already merged ones are skipped."""
        self.check_merge(names)
        for name in names:
            if name not in self.merged:
                self.variants[name].merge(self, self.weight_out_in(), name)
                self.merged.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge` exactly (up to float rounding), last merged first."""
        while self.merged:
            name = self.merged[-1]
            self.variants[name].unmerge(self, self.weight_out_in(), name)
            self.merged.pop()

    # ----- forward --------------------------------------------------------------------------
    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_kind.base_forward(self, x)

    @contextlib.contextmanager
    def operands(self, x: torch.Tensor, name: str):
        """(x, W (out, in), b, A, B, dropout p) of adapter ``name`` in the compute dtype (`precision`), every
        operand cast once, with autocast off inside the block; p is 0 unless training."""
        dtype = compute_dtype(x)
        lora_A, lora_B, _ = self.adapter_factors(name)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling() and x.is_inference():
            x = x.clone()  # an inference tensor cannot be saved for the backward; a copy made here can
        with autocast_off(x):
            yield (*cast(dtype, x, self.weight_out_in(), self.own("bias"), lora_A, lora_B),
                   self.dropout[name] if self.training else 0.0)

    def adapter_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The layer's output with adapter ``name`` alone."""
        if self.layer_kind.fused:
            return self.variants[name].forward(self, x, name)
        out = self.base_forward(x)
        return out + self.variants[name].term(self, x, name, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.merged or not (self.active or self.route):
            return self.base_forward(x)
        if self.route is not None:
            return self.routed_forward(x)
        if len(self.active) == 1:
            return self.adapter_output(x, self.active[0])
        out = self.base_forward(x)
        for name in self.active:  # stacked: the updates add up
            out = out + self.variants[name].term(self, x, name, out)
        return out

    def routed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Example i runs adapter ``route[i]`` (`loralab.routing`): each example's rows computed once by its
        adapter (or the base); without gradients, every LoRA adapter of the route in one pair of products
        (`routing.routed_lora_inference`) and the other variants on their own examples."""
        groups = self.route_names(x.shape[0])
        names = [n for n in groups if n != BASE and n in self.lora_A]
        fast = [n for n in names if self.variants[n].routes_stacked] if self.layer_kind.fused and \
            not torch.is_grad_enabled() else []
        out = self.routed_lora(x, fast) if fast else None  # every row's base output, plus its LoRA adapter's
        for name in [n for n in names if n not in fast] if fast else groups:
            rows = self.route_rows(name, x.device)
            part = self.adapter_output(x.index_select(0, rows), name) if name in names else \
                self.base_forward(x.index_select(0, rows))
            if out is None:
                out = part.new_zeros((x.shape[0], *part.shape[1:]))
            part = part.to(out.dtype)
            out = out.index_copy(0, rows, part) if torch.is_grad_enabled() else out.index_copy_(0, rows, part)
        return out

    def routed_lora(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        """W·x + b + B·(S ⊙ A·x) for the LoRA adapters ``names`` of the route, no autograd: A and B stacked
        (kept inside `frozen`), S the per-example scales (`routing.example_scales`)."""
        dtype = compute_dtype(x)
        factors = [t for n in names for t in self.adapter_factors(n)[:2]]
        lora_A, lora_B = self.derived.get(("route", tuple(names), dtype), tuple(factors), lambda: (
            torch.cat(factors[0::2]).to(dtype), torch.cat(factors[1::2], dim=1).to(dtype)))
        ranks = [a.shape[0] for a in factors[0::2]]
        with autocast_off(x):
            x_c, weight, bias = cast(dtype, x, self.weight_out_in(), self.own("bias"))
            return routed_lora_inference(x_c, weight, bias, lora_A, lora_B, self.route, names, ranks,
                                         [self.scaling[n] for n in names])

    def to_base_module(self) -> nn.Module:
        """A plain Linear / Conv1D / Embedding sharing this layer's (possibly merged) weight and bias."""
        return self.layer_kind.plain_module(self)

    def extra_repr(self) -> str:
        ranks = {n: a.shape[0] for n, a in self.lora_A.items()}
        return f"kind={self.kind}, in={self.in_features}, out={self.out_features}, ranks={ranks}, active={self.active}"
