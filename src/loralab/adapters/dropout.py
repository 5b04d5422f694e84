"""Dropout on the LoRA input path, stored and applied as the positions of the dropped entries.

x̃ = dropout_p(x) = (x − x⊙M)/(1 − p), M the iid Bernoulli(p) mask of dropped entries. Only A sees x̃,
so everything the rank-r path needs is its usual product with x plus a correction over the K ≈ p·T·in
dropped entries (t, j):

    A·x̃ᵀ  = (A·xᵀ − Σ_(t,j) A[:, j]·x[t, j]·e_t) / (1 − p)          (r, T)
    ∂L/∂A = (G·x − Σ_(t,j) G[:, t]·x[t, j]·e_jᵀ) / (1 − p)            G = s·(g·B)ᵀ, (r, T)
    ∂L/∂x̃ path = (Gᵀ·A)/(1 − p), zero at the dropped entries

The mask is sampled as the gaps between drops, which for an iid Bernoulli(p) sequence are iid
Geometric(p): about p·N random draws instead of one per element, and no (T, in) copy of x or of
the mask is kept — only K positions (int64). At p = 0.05 that is 1/20 of the random numbers and
about 10% of the memory of a boolean mask.
"""

from __future__ import annotations

import math

import torch


def dropped_positions(numel: int, p: float, device=None) -> torch.Tensor:
    """Flat indices of the entries an iid Bernoulli(p) mask drops, ascending (global torch RNG)."""
    if p <= 0 or numel == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    mean = numel * p
    draws = int(mean + 6 * math.sqrt(mean * (1 - p)) + 16)
    gaps = torch.empty(draws, dtype=torch.float64, device=device).geometric_(p)  # ≥ 1 each
    positions = gaps.cumsum(0) - 1
    while positions[-1] < numel - 1:  # the draws ran out before the end (a ~6σ event): keep going
        more = torch.empty(draws, dtype=torch.float64, device=device).geometric_(p)
        positions = torch.cat([positions, positions[-1] + more.cumsum(0)])
    return positions[positions < numel].long()


def add_rows(out: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """out[rows[k]] += values[k] for every k, in place; out (R, c), rows (K,), values (K, c).

    As one flat `index_add_` over K·c scalars (a 1-D index_add_ is a single loop on CPU).
    """
    width = out.shape[1]
    flat = (rows[:, None] * width + torch.arange(width, device=rows.device)).reshape(-1)
    out.view(-1).index_add_(0, flat, values.reshape(-1))
    return out


class SparseDropout:
    """The dropped entries of a (T, n) input: flat positions, their rows t and columns j.

    Gathers read rows of contiguous (·, r) matrices: `index_select` on a transposed view gathers
    element by element and cost more than the layer's products.
    """

    def __init__(self, positions: torch.Tensor, rows: int, cols: int, p: float):
        self.positions, self.p = positions, p
        self.shape = (rows, cols)
        self.t, self.j = positions // cols, positions % cols
        self.keep_scale = 1.0 / (1.0 - p)

    @classmethod
    def sample(cls, x2d: torch.Tensor, p: float) -> "SparseDropout":
        return cls(dropped_positions(x2d.numel(), p, x2d.device), x2d.shape[0], x2d.shape[1], p)

    def values(self, x2d: torch.Tensor) -> torch.Tensor:
        """x[t, j] at the dropped entries, (K,)."""
        return x2d.reshape(-1).index_select(0, self.positions)

    def hidden_correction(self, x2d: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Σ_(t,j) factor[:, j]·x[t, j] per token, (T, r): what the dropped entries added to x·factorᵀ."""
        contrib = factor.T.contiguous().index_select(0, self.j) * self.values(x2d)[:, None]  # (K, r)
        return add_rows(contrib.new_zeros(self.shape[0], factor.shape[0]), self.t, contrib)

    def factor_grad_correction(self, x2d: torch.Tensor, g_rows: torch.Tensor) -> torch.Tensor:
        """Σ_(t,j) g_rows[t]·x[t, j] per column j, (r, n): what the dropped entries added to Gᵀ-by-x."""
        contrib = g_rows.contiguous().index_select(0, self.t) * self.values(x2d)[:, None]  # (K, r)
        return add_rows(contrib.new_zeros(self.shape[1], g_rows.shape[1]), self.j, contrib).T

    def input_grad_at_drops(self, g_rows: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """(g_rows·factor)[t, j] at the dropped entries, (K,): the rank-r input gradient to take back out."""
        return (g_rows.contiguous().index_select(0, self.t) * factor.T.contiguous().index_select(0, self.j)).sum(1)
