"""TIES and DARE merging on each layer's ΔW, then re-factored to a chosen rank.

Both work on the dense update of each layer, τ_i = ΔW_i (out, in), as in model-merging papers,
and return a low-rank adapter by truncated SVD, with the relative Frobenius error of that step.

* **TIES** (Yadav et al. 2023, §3): *trim* each τ_i to its top ``density`` fraction of entries by
  magnitude, weight it by w_i, *elect* a sign per entry, γ = sign(Σ_i w_i·τ̂_i) (ties go to +),
  and take the *disjoint mean* over the adapters whose entry has that sign:
  τ = Σ_i [sign(w_i τ̂_i) = γ]·w_i·τ̂_i / max(1, #{i : sign(w_i τ̂_i) = γ}).
* **DARE** (Yu et al. 2024, §3): drop each entry of τ_i with probability p, rescale the rest by
  1/(1 − p) (unbiased: E τ̃_i = τ_i), then sum Σ_i w_i·τ̃_i. The masks come from ``seed``.

These follow PEFT's ``ties`` (``majority_sign_method="total"``) and ``dare_linear`` on tensors.
"""

from __future__ import annotations

from typing import Optional

import torch

from loralab.adapters.registry import in_model_order
from loralab.analysis.factors import Factors, delta_weight
from loralab.compose.combine import check_composable
from loralab.errors import AdapterError


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """τ with all but its top ⌊density·numel⌋ entries by magnitude set to 0."""
    keep = int(density * tau.numel())
    if keep <= 0:
        return torch.zeros_like(tau)
    threshold = tau.abs().flatten().kthvalue(tau.numel() - keep + 1).values
    mask = tau.abs() >= threshold
    if int(mask.sum()) > keep:  # ties at the threshold: keep the first ones, as topk would
        index = tau.abs().flatten().topk(keep).indices
        mask = torch.zeros(tau.numel(), dtype=torch.bool, device=tau.device)
        mask[index] = True
        mask = mask.view(tau.shape)
    return tau * mask


def ties_merge(taus: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES on tensors of one layer (see the module docstring)."""
    weighted = torch.stack([trim(t.double(), density) * w for t, w in zip(taus, weights)])  # (n, out, in)
    elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(weighted.dtype)
    agree = weighted.sign() == elected
    return (weighted * agree).sum(0) / agree.sum(0).clamp_min(1)


def dare_merge(taus: list[torch.Tensor], weights: list[float], drop: float, generator: torch.Generator) -> torch.Tensor:
    """DARE-linear on tensors of one layer: Σ_i w_i·(m_i ⊙ τ_i)/(1 − p), m_i ~ Bernoulli(1 − p)."""
    out = torch.zeros_like(taus[0], dtype=torch.float64)
    for tau, w in zip(taus, weights):
        keep = torch.rand(tau.shape, generator=generator, dtype=torch.float64) >= drop
        out += w * tau.double() * keep / (1.0 - drop)
    return out


def refactor(delta: torch.Tensor, kind: str, rank: Optional[int] = None, energy: Optional[float] = None):
    """(rank-k factors of a dense ΔW, relative Frobenius error): B = U_k·√Σ_k, A = √Σ_k·V_kᵀ."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    energies = s.square()
    total = float(energies.sum())
    if rank is not None:
        k = rank
    elif energy is not None:
        k = int(torch.searchsorted(torch.cumsum(energies, 0) / max(total, 1e-300), energy - 1e-12)) + 1
    else:
        raise AdapterError("TIES and DARE re-factor a dense ΔW: give the rank (or the energy) to keep.")
    k = max(1, min(k, len(s)))
    root = s[:k].sqrt()
    error = (float(energies[k:].sum()) / total) ** 0.5 if total > 0 else 0.0
    return Factors(root[:, None] * vh[:k], u[:, :k] * root[None, :], 1.0, None, kind), error


def merge_dense(adapters: list[dict[str, Factors]], weights: list[float], merge, rank: Optional[int],
                energy: Optional[float]) -> tuple[dict[str, Factors], dict[str, float]]:
    """Apply ``merge(taus, weights)`` layer by layer; a layer only some adapters have uses theirs."""
    check_composable(adapters, weights)
    out, errors = {}, {}
    for path in in_model_order({p for a in adapters for p in a}):
        parts = [(a[path], w) for a, w in zip(adapters, weights) if path in a]
        merged = merge([delta_weight(f) for f, _ in parts], [w for _, w in parts])
        out[path], errors[path] = refactor(merged, parts[0][0].kind, rank, energy)
    return out, errors


def ties(adapters: list[dict[str, Factors]], weights: list[float], density: float = 0.2, rank: Optional[int] = None,
         energy: Optional[float] = None):
    if not 0 < density <= 1:
        raise AdapterError(f"TIES density is the fraction of entries kept, in (0, 1]; got {density}.")
    return merge_dense(adapters, weights, lambda taus, ws: ties_merge(taus, ws, density), rank, energy)


def dare(adapters: list[dict[str, Factors]], weights: list[float], drop: float = 0.5, seed: int = 0,
         rank: Optional[int] = None, energy: Optional[float] = None):
    if not 0 <= drop < 1:
        raise AdapterError(f"DARE drop probability must be in [0, 1); got {drop}.")
    generator = torch.Generator().manual_seed(seed)
    return merge_dense(adapters, weights, lambda taus, ws: dare_merge(taus, ws, drop, generator), rank, energy)
