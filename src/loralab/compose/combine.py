"""Combine adapters exactly: ΔW = Σ_i w_i·ΔW_i, never by mixing factors.

Mixing A's and B's separately (PEFT's ``linear``, ``ties`` and ``dare_*`` combinations) computes
(Σ w_i B_i)(Σ w_j A_j) and so adds cross terms B_i·A_j that no adapter learned. Here:

* `cat` stacks the factors: A = [A_1; …; A_n] (Σr_i, in), B = [w_1 s_1 B_1, …, w_n s_n B_n]
  (out, Σr_i), so B·A = Σ_i w_i s_i B_i A_i exactly, at rank Σ r_i. Each adapter keeps its own
  rank, alpha, rsLoRA and targets; a layer only some adapters touch keeps only their updates.
  Parts with an identical A share one block (their weighted B's are added first), so an adapter
  minus itself is exactly 0.
* `svd` re-ranks that exact sum from the stacked factors: QR of B and Aᵀ and an SVD of the small
  (Σr)×(Σr) core (as `analysis.spectra.low_rank_svd`), truncated to a rank or an energy
  fraction — never an out×in product. The relative Frobenius error per layer is
  √(Σ_{i>k} σ_i²) / √(Σ σ_i²), the energy of the discarded singular values.
* `rerank` is `svd` of one adapter: a single adapter re-ranked.

Every result has its scale folded into B (s = 1). DoRA adapters are refused: their magnitude
vector rescales W0 itself, so a weighted sum of DoRA updates is not a DoRA adapter (see
`check_composable` for what to do instead).
"""

from __future__ import annotations

from typing import Optional

import torch

from loralab.adapters.registry import in_model_order
from loralab.analysis.factors import Factors
from loralab.analysis.spectra import low_rank_svd
from loralab.errors import AdapterError


def check_composable(adapters: list[dict[str, Factors]], weights: list[float]) -> None:
    """Same number of adapters and weights; no DoRA; a layer's shape and kind agree across adapters."""
    if not adapters:
        raise AdapterError("give at least one adapter to combine.")
    if len(weights) != len(adapters):
        raise AdapterError(f"{len(adapters)} adapters but {len(weights)} weights; give one weight per adapter.")
    if any(not torch.isfinite(torch.tensor(float(w))) for w in weights):
        raise AdapterError(f"weights must be finite numbers, got {weights}.")
    seen: dict[str, tuple] = {}
    for index, adapter in enumerate(adapters):
        for path, f in adapter.items():
            if f.magnitude is not None:
                raise AdapterError(
                    f"adapter {index} is DoRA ({path} has a magnitude vector): its magnitude rescales W0 itself, so a "
                    "weighted sum of DoRA updates is not a DoRA adapter. Merge each into the base model instead "
                    "(`loralab merge`) and combine the merged models, or combine LoRA adapters.")
            key = (f.kind == "embedding", f.shape)
            if seen.setdefault(path, key) != key:
                raise AdapterError(f"{path} is {seen[path][1]} in one adapter and {f.shape} in another; are these "
                                   "adapters for different base models?")


def cat(adapters: list[dict[str, Factors]], weights: list[float]) -> dict[str, Factors]:
    """The exact weighted sum, factors stacked: rank Σ r_i per layer, scale folded into B."""
    check_composable(adapters, weights)
    paths = in_model_order({p for adapter in adapters for p in adapter})
    out = {}
    for path in paths:
        groups: list[tuple[torch.Tensor, torch.Tensor]] = []  # (A, Σ w·s·B) per distinct A
        for adapter, w in zip(adapters, weights):
            if path not in adapter:
                continue
            f = adapter[path]
            a, b = f.A.double(), f.B.double() * (w * f.scale)
            same = next((i for i, (g, _) in enumerate(groups) if g.shape == a.shape and torch.equal(g, a)), None)
            if same is None:
                groups.append((a, b))
            else:  # an adapter repeated (e.g. w = 1 and −1): its B's add first, so the sum is exact
                groups[same] = (a, groups[same][1] + b)
        A = torch.cat([a for a, _ in groups], 0)  # (Σr, in)
        B = torch.cat([b for _, b in groups], 1)  # (out, Σr)
        out[path] = Factors(A, B, 1.0, None, next(a[path].kind for a in adapters if path in a))
    return out


def truncated(f: Factors, rank: Optional[int] = None, energy: Optional[float] = None) -> tuple[Factors, float]:
    """(the best rank-k approximation of s·B·A as factors, its relative Frobenius error).

    k = ``rank``, or the smallest k keeping ``energy`` of Σσ², or every non-zero σ. The kept part is
    split evenly: B' = U_k·√Σ_k, A' = √Σ_k·V_kᵀ.
    """
    svd = low_rank_svd(f.A, f.B, f.scale)
    energies = svd.S.square()
    total = float(energies.sum())
    if rank is not None:
        k = max(1, min(rank, len(svd.S)))
    elif energy is not None:
        k = int(torch.searchsorted(torch.cumsum(energies, 0) / max(total, 1e-300), energy - 1e-12)) + 1
    else:
        k = int((svd.S > svd.S[0] * 1e-12).sum()) if total > 0 else 1
    k = min(k, len(svd.S))
    root = svd.S[:k].sqrt()
    error = (float(energies[k:].sum()) / total) ** 0.5 if total > 0 else 0.0
    return Factors(root[:, None] * svd.V[:, :k].T, svd.U[:, :k] * root[None, :], 1.0, None, f.kind), error


def svd(adapters: list[dict[str, Factors]], weights: list[float], rank: Optional[int] = None,
        energy: Optional[float] = None) -> tuple[dict[str, Factors], dict[str, float]]:
    """The exact weighted sum re-ranked per layer; returns (factors, relative Frobenius error per layer)."""
    if rank is not None and rank < 1:
        raise AdapterError(f"rank must be ≥ 1, got {rank}.")
    if energy is not None and not 0 < energy <= 1:
        raise AdapterError(f"energy is a fraction in (0, 1], got {energy}.")
    exact = cat(adapters, weights)
    out, errors = {}, {}
    for path, f in exact.items():
        out[path], errors[path] = truncated(f, rank, energy)
    return out, errors


def rerank(adapter: dict[str, Factors], rank: Optional[int] = None, energy: Optional[float] = None):
    """One adapter at another rank (or energy): `svd` with weight 1."""
    return svd([adapter], [1.0], rank, energy)


def check_finite(factors: dict[str, Factors]) -> None:
    for path, f in factors.items():
        if not (torch.isfinite(f.A).all() and torch.isfinite(f.B).all()):
            raise AdapterError(f"the combination of {path} is not finite (nan/inf); check the weights and the adapters.")
