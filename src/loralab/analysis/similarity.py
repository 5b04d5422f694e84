"""Subspace similarity between two updates (Hu et al. 2021, LoRA §7.2, eq. 4).

For orthonormal bases U (n, k1) and V (n, k2) whose columns are ordered by singular value,

    φ(i, j) = ‖U_iᵀ V_j‖_F² / min(i, j) ∈ [0, 1],

U_i the first i columns. φ = 1 when one top subspace contains the other, 0 when they are
orthogonal. The paper compares the right singular vectors of A_{r=8} and A_{r=64} (the input
directions the adapters read) and finds φ > 0.5 for the top direction. `phi_grid` computes
every (i, j) at once from one k1×k2 product: with M = (UᵀV)², φ(i, j) = Σ_{a≤i, b≤j} M_ab / min(i, j).

Random baseline: for U_i, V_j independent uniformly random subspaces of R^n,
E‖U_iᵀ V_j‖_F² = i·j/n, so E φ(i, j) = max(i, j)/n (`random_phi`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from loralab.analysis.factors import Factors
from loralab.analysis.spectra import SVD


def phi_grid(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """φ(i, j) for i = 1..k1, j = 1..k2: U (n, k1), V (n, k2), orthonormal columns → (k1, k2)."""
    m = (U.double().T @ V.double()).square()  # (k1, k2)
    cumulative = m.cumsum(0).cumsum(1)
    i = torch.arange(1, m.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, m.shape[1] + 1, dtype=torch.float64)[None, :]
    return cumulative / torch.minimum(i, j)


def random_phi(n: int, k1: int, k2: int) -> torch.Tensor:
    """E φ(i, j) = max(i, j)/n for random subspaces of R^n, (k1, k2)."""
    i = torch.arange(1, k1 + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, k2 + 1, dtype=torch.float64)[None, :]
    return torch.maximum(i, j) / n


def input_basis(svd: SVD) -> torch.Tensor:
    """The right singular vectors V (in, k): the input directions an update reads (for LoRA, A's row space)."""
    return svd.V


def output_basis(svd: SVD) -> torch.Tensor:
    """The left singular vectors U (out, k): the output directions an update writes."""
    return svd.U


def compare(first: SVD, second: SVD, side: str = "input", k1: Optional[int] = None, k2: Optional[int] = None) -> dict:
    """φ grid of two updates of the same layer on one side ('input': V, 'output': U), with its baseline.

    Returns {"phi": (k1, k2) list, "baseline": (k1, k2) list, "top": φ(1, 1), "n": dimension}.
    """
    basis = input_basis if side == "input" else output_basis
    u, v = basis(first), basis(second)
    k1, k2 = min(k1 or u.shape[1], u.shape[1]), min(k2 or v.shape[1], v.shape[1])
    grid = phi_grid(u[:, :k1], v[:, :k2])
    n = u.shape[0]
    return {"phi": grid.tolist(), "baseline": random_phi(n, k1, k2).tolist(), "top": float(grid[0, 0]), "n": n,
            "side": side}


def a_cosine(f1: Factors, f2: Factors) -> Optional[float]:
    """⟨A_1, A_2⟩_F/(‖A_1‖_F‖A_2‖_F) over the first k = min(r_1, r_2) rows (None for other input sizes).

    Independent random initialisations give ≈ 0 (standard deviation 1/√(k·in)). Adapters trained from
    the same A — the same seed and shapes — keep a clearly positive value, since A moves little in
    training (MiniLM, 100 steps at lr 4e-3: ≈ 0.5). Rows, because a same-seed adapter of higher rank
    draws the lower one's rows first: r = 8 and r = 64 runs share their first adapted layer's start.
    """
    k = min(f1.rank, f2.rank)
    if f1.A.shape[1] != f2.A.shape[1] or k == 0:
        return None
    a1, a2 = f1.A.double()[:k], f2.A.double()[:k]
    norms = a1.norm() * a2.norm()
    return float((a1 * a2).sum() / norms) if norms > 0 else None


STARTED_TOGETHER = 0.3  # MiniLM, 100 steps at lr 4e-3: shared starts 0.44-0.74, independent ones |cos| <= 0.26


def started_together(f1: Factors, f2: Factors, cos: Optional[float] = None) -> bool:
    """`a_cosine` (``cos`` when already computed) above 0.3 and four standard deviations of untrained
    independent starts: the two A's began equal.

    0.3, not just the four deviations (0.07 at 8 × 384): training aligns the rows of A with a few input
    directions the data shares, which correlates even independently started A's — measured up to 0.26
    between r = 8 and r = 64 runs of one task (the same data order), 0.09 across tasks; A's of one start
    kept 0.44-0.74 (docs/compose.md)."""
    cos = a_cosine(f1, f2) if cos is None else cos
    return cos is not None and cos > max(STARTED_TOGETHER, 4 / math.sqrt(min(f1.rank, f2.rank) * f1.A.shape[1]))
