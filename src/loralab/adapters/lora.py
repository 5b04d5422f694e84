"""`LoraLayer`: a Linear, GPT-2 Conv1D or Embedding with any number of named LoRA adapters.

LoRA (Hu et al. 2021, §4.1) freezes W and learns ΔW = s·B·A:

    h = W·x + b + s·B·A·dropout(x),     A (r, in), B (out, r), s = α/r (rsLoRA: α/√r)

The layer keeps the base parameter names (``weight``, ``bias``), so a base
checkpoint loads unchanged, and adds one entry per adapter name to ``lora_A``,
``lora_B`` and, for DoRA, ``lora_magnitude``. ``weight`` keeps its native layout:
(out, in) for Linear, (in, out) for Conv1D, (num_embeddings, dim) for Embedding;
`weight_out_in` gives the (out, in) view that all the math uses. For an
Embedding, "in" is the vocabulary: A is (r, num_embeddings), B is (dim, r).

Merging is explicit (`merge` / `unmerge`) and never happens on ``train()`` or
``eval()``. What unmerge needs for DoRA (the row norms at merge time) is kept in
the ``dora_norm`` buffers, i.e. in the state dict.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from loralab.adapters.dora import adapted_row_norm, dora_term
from loralab.adapters.fused import DoraLinearFunction, LoraLinearFunction
from loralab.adapters.host import BASE, AdapterHost
from loralab.adapters.precision import autocast_off, cast, compute_dtype, dora_inference, lora_inference, routed_lora_inference
from loralab.adapters.weights_version import weights_key
from loralab.errors import AdapterError


def conv1d_class():
    """transformers' GPT-2 ``Conv1D`` (weight stored (in, out)), or None without transformers."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is optional
        return None
    return Conv1D


def layer_kind(module: nn.Module) -> Optional[str]:
    """"linear", "conv1d", "embedding", or None when LoRA does not support the module."""
    conv1d = conv1d_class()
    if isinstance(module, LoraLayer):
        return module.kind
    if isinstance(module, nn.Linear):
        return "linear"
    if conv1d is not None and isinstance(module, conv1d):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a supported layer as its adapter sees it: A is (r, in), B is (out, r).

    Linear: (in_features, out_features). Conv1D stores its weight (in, out). Embedding: "in" is
    the vocabulary, (num_embeddings, embedding_dim), as in PEFT.
    """
    kind = layer_kind(module)
    if isinstance(module, LoraLayer) or kind == "linear":
        return module.in_features, module.out_features
    if kind == "conv1d":
        return tuple(module.weight.shape)
    if kind == "embedding":
        return module.num_embeddings, module.embedding_dim
    raise AdapterError(f"LoRA wraps Linear, Conv1D or Embedding, not {type(module).__name__}.")


def check_supported(kind: str, dora: bool, init: str, where: str) -> None:
    """DoRA and PiSSA work on Linear and Conv1D layers only; ``where`` names the layer in the message."""
    if dora and kind == "embedding":
        raise AdapterError(f"DoRA supports Linear and Conv1D layers; {where} is an Embedding. Drop it from the "
                           "targets, or use plain LoRA for it in a second adapter.")
    if init == "pissa" and kind == "embedding":
        raise AdapterError(f"init='pissa' supports Linear and Conv1D layers; {where} is an Embedding.")
    if init == "olora" and kind != "linear":
        raise AdapterError(f"init='olora' supports Linear layers (as PEFT's OLoRA does); {where} is "
                           f"{'a GPT-2 Conv1D' if kind == 'conv1d' else 'an Embedding'}.")


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
        kind = layer_kind(base)
        if kind is None:
            raise AdapterError(f"LoraLayer wraps Linear, Conv1D or Embedding, not {type(base).__name__}.")
        self.kind = kind
        self.training = base.training
        self.weight = base.weight
        self.bias = getattr(base, "bias", None)
        self.in_features, self.out_features = layer_shape(base)
        if kind == "conv1d":
            self.nf = base.nf
        elif kind == "embedding":
            self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
            self.padding_idx, self.max_norm, self.norm_type = base.padding_idx, base.max_norm, base.norm_type
            self.scale_grad_by_freq, self.sparse = base.scale_grad_by_freq, base.sparse
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_magnitude = nn.ParameterDict()
        self.dora_norm = BufferDict()
        self.scaling: dict[str, float] = {}
        self.dropout: dict[str, float] = {}
        self.merged: list[str] = []
        self.norm_cache: dict[str, tuple] = {}  # DoRA row norms for inference (see `row_norm`)
        self.route_cache: dict[str, tuple] = {}  # stacked factors for routed inference (`routed_factors`)

    # ----- adapters -------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.lora_A.keys())

    def weight_out_in(self) -> torch.Tensor:
        """W as (out, in): a view of ``weight`` (transposed for Conv1D and Embedding)."""
        weight = self.own("weight")
        return weight if self.kind == "linear" else weight.T

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
        ref = self.weight
        dtype = dtype or ref.dtype
        lora_A = torch.empty(r, self.in_features, dtype=dtype, device=ref.device)
        lora_B = torch.zeros(self.out_features, r, dtype=dtype, device=ref.device)
        if self.kind == "embedding":  # PEFT's choice for embeddings: A = 0, B random
            nn.init.zeros_(lora_A)
            nn.init.normal_(lora_B)
        elif init == "gaussian":
            nn.init.normal_(lora_A, std=1.0 / r)
        else:
            nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
        self.lora_A[name] = nn.Parameter(lora_A)
        self.lora_B[name] = nn.Parameter(lora_B)
        self.scaling[name] = float(scaling)
        self.dropout[name] = float(dropout)
        if init == "pissa":
            self._init_pissa(name)
        elif init == "olora":
            self._init_olora(name)
        if dora:
            norm = adapted_row_norm(self.weight_out_in(), self.lora_A[name], self.lora_B[name], scaling)
            self.lora_magnitude[name] = nn.Parameter(norm.to(dtype))

    @torch.no_grad()
    def init_dora_magnitude(self, name: str) -> None:
        """m = ‖W + s·B·A‖_row: call after loading new base weights so the adapter starts at W."""
        norm = adapted_row_norm(self.weight_out_in(), self.lora_A[name], self.lora_B[name], self.scaling[name])
        self.lora_magnitude[name].copy_(norm)

    @torch.no_grad()
    def _init_pissa(self, name: str) -> None:
        """PiSSA (Meng et al. 2024, §3): s·B·A = U_r·S_r·V_rᵀ, W ← W − s·B·A, so W + s·B·A is unchanged."""
        s, r = self.scaling[name], self.lora_A[name].shape[0]
        weight = self.weight_out_in()
        u, sv, vh = torch.linalg.svd(weight.to(torch.promote_types(weight.dtype, torch.float32)), full_matrices=False)
        root = (sv[:r] / s).sqrt()  # (r,)
        self.lora_A[name].copy_(root[:, None] * vh[:r])  # (r, in)
        self.lora_B[name].copy_(u[:, :r] * root[None, :])  # (out, r)
        weight.sub_(self.delta_weight(name))

    @torch.no_grad()
    def _init_olora(self, name: str) -> None:
        """OLoRA (Büyükakyüz 2024): W = Q·R, B = Q[:, :r] (out, r), A = R[:r] (r, in), W ← W − s·B·A."""
        r, weight = self.lora_A[name].shape[0], self.weight_out_in()
        q, upper = torch.linalg.qr(weight.to(torch.promote_types(weight.dtype, torch.float32)))
        self.lora_A[name].copy_(upper[:r])
        self.lora_B[name].copy_(q[:, :r])
        weight.sub_(self.delta_weight(name))

    def delete_adapter(self, name: str) -> None:
        if name in self.merged:
            raise AdapterError(f"adapter {name!r} is merged; call ll.unmerge(model) before deleting it.")
        for store in (self.lora_A, self.lora_B, self.lora_magnitude):
            if name in store:
                del store[name]
        self.scaling.pop(name, None)
        self.dropout.pop(name, None)
        self.active = [a for a in self.active if a != name]

    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔW = s·B·A, (out, in)."""
        return (self.lora_B[name] @ self.lora_A[name]) * self.scaling[name]

    def adapter_params(self, name: str) -> list[nn.Parameter]:
        params = [self.lora_A[name], self.lora_B[name]]
        if name in self.lora_magnitude:
            params.append(self.lora_magnitude[name])
        return params

    # ----- merge ----------------------------------------------------------------------------
    @torch.no_grad()
    def merged_weight(self, weight: torch.Tensor, name: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(W with adapter ``name`` folded in, the DoRA row norm or None); W is (out, in).

        LoRA: W + s·B·A. DoRA: m/‖W + s·B·A‖ ⊙ (W + s·B·A).
        Raises AdapterError when the result is non-finite.
        """
        wide = torch.promote_types(weight.dtype, torch.float32)
        new = weight.to(wide) + self.delta_weight(name).to(wide)
        norm = None
        if name in self.lora_magnitude:
            norm = adapted_row_norm(weight, self.lora_A[name], self.lora_B[name], self.scaling[name])
            new = (self.lora_magnitude[name] / norm)[:, None] * new
        if not torch.isfinite(new).all():
            raise AdapterError(f"merging adapter {name!r} would make non-finite weights; weights left unchanged.")
        return new, norm

    @torch.no_grad()
    def check_merge(self, names: list[str]) -> None:
        """Raise AdapterError if `merge` would fail, without changing anything."""
        weight = self.weight_out_in()
        for name in names:
            if name not in self.merged:
                weight, _ = self.merged_weight(weight, name)

    @torch.no_grad()
    def merge(self, names: list[str]) -> None:
        """Fold adapters into W, in order (see `merged_weight`); already merged ones are skipped."""
        self.check_merge(names)
        for name in names:
            if name in self.merged:
                continue
            weight = self.weight_out_in()
            new, norm = self.merged_weight(weight, name)
            if norm is not None:
                self.dora_norm.set(name, norm)
            weight.copy_(new)
            self.merged.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge` exactly (up to float rounding), last merged first."""
        while self.merged:
            name = self.merged[-1]
            weight = self.weight_out_in()
            if name in self.lora_magnitude:
                norm = self.dora_norm.pop(name)
                weight.mul_((norm / self.lora_magnitude[name])[:, None])
            weight.sub_(self.delta_weight(name))
            self.merged.pop()

    # ----- forward --------------------------------------------------------------------------
    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, self.weight, self.bias)
        if self.kind == "conv1d":
            out = x @ self.weight
            return out if self.bias is None else out + self.bias
        return F.embedding(
            x, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )

    def adapter_term(self, name: str, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """What adapter ``name`` adds to the base output for input ``x``, (..., out) (stacks and routing).

        LoRA: s·B·A·x̃. DoRA: (m/n − 1) ⊙ W·x + m/n ⊙ s·B·A·x̃, i.e. the fused node's formula.
        """
        dtype = x.dtype if x.is_floating_point() else base_out.dtype  # autocast, if on, casts the matmuls itself
        lora_A, lora_B = cast(dtype, self.lora_A[name], self.lora_B[name])
        s = self.scaling[name]
        if self.kind == "embedding":
            hidden = F.embedding(x, lora_A.T, self.padding_idx)  # (..., r)
            return ((hidden @ lora_B.T) * s).to(base_out.dtype)
        p = self.dropout[name]
        dropped = F.dropout(x, p, self.training) if p > 0 and self.training else x
        low_rank = ((dropped @ lora_A.T) * s) @ lora_B.T  # s·B·A·x̃: s on the (..., r) hidden, (..., out)
        if name not in self.lora_magnitude:
            return low_rank
        with autocast_off(x):
            norm = self.row_norm(name)
        base_no_bias = base_out if self.bias is None else base_out - self.bias
        return dora_term(base_no_bias, low_rank, self.lora_magnitude[name], norm).to(base_out.dtype)

    def row_norm(self, name: str) -> torch.Tensor:
        """‖W + s·B·A‖_row in float32 (or wider), detached, (out,); cached while no gradient is needed."""
        if torch.is_grad_enabled():
            return adapted_row_norm(self.weight_out_in(), self.lora_A[name], self.lora_B[name], self.scaling[name])
        return self.dora_inference_factors(name)[0]

    def dora_inference_factors(self, name: str) -> tuple:
        """(‖W + s·B·A‖_row, {dtype: m/‖W + s·B·A‖_row}) for inference, cached per adapter.

        Reused until W, A, B or m changes (`weights_version.weights_key`: version counters and an
        optimizer-step count) or the scaling does; `train()` and `eval()` clear it. m/n is kept in
        each compute dtype asked for, so a call costs no division and no cast.
        """
        weight, (lora_A, lora_B, magnitude) = self.weight_out_in(), self.adapter_factors(name)
        key = weights_key(weight, lora_A, lora_B, magnitude)
        if key is None:  # inference tensors: no version counter, nothing cached
            return adapted_row_norm(weight, lora_A, lora_B, self.scaling[name]), {}
        key = (*key, self.scaling[name])
        cached = self.norm_cache.get(name)
        if cached is None or cached[0] != key:
            cached = self.norm_cache[name] = (key, (adapted_row_norm(weight, lora_A, lora_B, self.scaling[name]), {}))
        return cached[1]

    def row_scale(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """m/‖W + s·B·A‖_row in ``dtype``, (out,), for inference: cached (`dora_inference_factors`)."""
        norm, scales = self.dora_inference_factors(name)
        if dtype not in scales:
            scales[dtype] = (self.lora_magnitude[name] / norm).to(dtype)
        return scales[dtype]

    def train(self, mode: bool = True):
        self.norm_cache.clear()
        self.route_cache.clear()
        return super().train(mode)

    def single_adapter_forward(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """One Linear/Conv1D adapter, fused: W·x + b + s·B·A·x̃ for LoRA (x̃ = dropout(x)), or
        m/‖W + s·B·A‖ ⊙ (W·x + s·B·A·x̃) + b for DoRA.

        In the compute dtype (`precision.compute_dtype`: the autocast dtype, else the input's), every
        operand cast once. With gradients or training dropout, one autograd node per layer
        (`LoraLinearFunction`, `DoraLinearFunction` in ``fused.py``); otherwise the plain products of
        `precision`.
        """
        dtype, s = compute_dtype(x), self.scaling[name]
        lora_A, lora_B, magnitude = self.adapter_factors(name)
        with autocast_off(x):
            x, weight, bias, lora_A, lora_B = cast(dtype, x, self.weight_out_in(), self.own("bias"),
                                                   lora_A, lora_B)
            p = self.dropout[name] if self.training else 0.0
            if not torch.is_grad_enabled() and p == 0:
                if magnitude is not None:
                    return dora_inference(x, weight, bias, lora_A, lora_B, s, self.row_scale(name, dtype))
                return lora_inference(x, weight, bias, lora_A, lora_B, s)
            # with dropout the nodes run without gradients too: the same masks from the same RNG draws,
            # so a reentrant checkpoint's no-grad forward and its recompute agree
            if magnitude is not None:
                magnitude, norm = cast(dtype, magnitude, self.row_norm(name))
                return DoraLinearFunction.apply(x, weight, bias, lora_A, lora_B, magnitude, norm, s, p)
            return LoraLinearFunction.apply(x, weight, bias, lora_A, lora_B, s, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.merged or not (self.active or self.route):
            return self.base_forward(x)
        if self.route is None and len(self.active) == 1 and self.kind != "embedding":
            return self.single_adapter_forward(x, self.active[0])
        if self.route is not None and self.kind != "embedding" and not torch.is_grad_enabled():
            return self.routed_inference(x)
        out = self.base_forward(x)
        if self.route is None:
            for name in self.active:
                out = out + self.adapter_term(name, x, out)
            return out
        in_place = not torch.is_grad_enabled()  # serving: no copy of the output per adapter
        for name, rows in self.route_groups(x.shape[0], x.device):
            if name == BASE or name not in self.lora_A:
                continue
            needs_base = name in self.lora_magnitude or self.kind == "embedding"
            sub_out = out.index_select(0, rows) if needs_base else out[:0]
            term = self.adapter_term(name, x.index_select(0, rows), sub_out)
            out = out.index_add_(0, rows, term) if in_place else out.index_add(0, rows, term)
        return out

    def routed_inference(self, x: torch.Tensor) -> torch.Tensor:
        """A mixed batch without gradients (`loralab.routing`): every LoRA adapter of the route at once
        (`precision.routed_lora_inference`), then each DoRA adapter on its own examples."""
        names = [n for n in self.route_names(x.shape[0]) if n != BASE and n in self.lora_A]
        lora = [n for n in names if n not in self.lora_magnitude]
        if lora:
            dtype = compute_dtype(x)
            lora_A, lora_B, example_scale = self.routed_factors(lora, dtype, x.device)
            with autocast_off(x):
                x_c, weight, bias = cast(dtype, x, self.weight_out_in(), self.own("bias"))
                out = routed_lora_inference(x_c, weight, bias, lora_A, lora_B, example_scale)
        else:
            out = self.base_forward(x)
        for name in names:
            if name in self.lora_magnitude:  # DoRA: the rows routed to it hold the base output so far
                rows = self.route_rows(name, x.device)
                term = self.adapter_term(name, x.index_select(0, rows), out.index_select(0, rows))
                out.index_add_(0, rows, term.to(out.dtype))
        return out

    def routed_factors(self, names: list[str], dtype: torch.dtype, device) -> tuple:
        """(A stacked (R, in), B stacked (out, R), per-example scales S (batch, R)) for routing ``names``.

        Cached per layer until an A or B changes (`weights_version.weights_key`), a scaling changes or
        the route does; `train()` and `eval()` clear it. Costs a copy of the routed adapters' A and B.
        """
        factors = [self.adapter_factors(n)[:2] for n in names]  # [(A_i, B_i)]
        scalings = tuple(self.scaling[n] for n in names)
        key = weights_key(*(t for pair in factors for t in pair))
        key = None if key is None else (tuple(names), dtype, key, scalings)
        cached = self.route_cache.get("factors")
        if key is None or cached is None or cached[0] != key:
            lora_A = torch.cat([a for a, _ in factors]).to(dtype)
            lora_B = torch.cat([b for _, b in factors], dim=1).to(dtype)
            cached = (key, lora_A, lora_B)
            if key is not None:
                self.route_cache["factors"] = cached
        route_key = (tuple(self.route), tuple(names), scalings, dtype, device)
        scales = self.route_cache.get("scales")
        if scales is None or scales[0] != route_key:
            ranks = [a.shape[0] for a, _ in factors]
            scales = self.route_cache["scales"] = (route_key, self.example_scales(names, ranks, dtype, device))
        return cached[1], cached[2], scales[1]

    def example_scales(self, names: list[str], ranks: list[int], dtype: torch.dtype, device) -> torch.Tensor:
        """S (batch, R): s_i on adapter i's columns of the stacked factors for the examples routed to i."""
        ends = list(itertools.accumulate(ranks))
        columns = {n: (end - r, end) for n, r, end in zip(names, ranks, ends)}
        scales = torch.zeros(len(self.route), ends[-1], dtype=dtype)
        for example, name in enumerate(self.route):
            if name in columns:
                start, end = columns[name]
                scales[example, start:end] = self.scaling[name]
        return scales.to(device)

    def to_base_module(self) -> nn.Module:
        """A plain Linear / Conv1D / Embedding sharing this layer's (possibly merged) weight and bias."""
        if self.kind == "linear":
            module = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        elif self.kind == "conv1d":
            module = conv1d_class()(self.nf, self.in_features)
        else:
            module = nn.Embedding(
                self.num_embeddings, self.embedding_dim, self.padding_idx, self.max_norm, self.norm_type,
                self.scale_grad_by_freq, self.sparse, device="meta",
            )
        module.weight = self.weight
        if self.bias is not None:
            module.bias = self.bias
        return module

    def extra_repr(self) -> str:
        ranks = {n: a.shape[0] for n, a in self.lora_A.items()}
        return f"kind={self.kind}, in={self.in_features}, out={self.out_features}, ranks={ranks}, active={self.active}"
