"""Dropout on the LoRA input path, stored and applied as the positions of the dropped entries.

x̃ = dropout_p(x) = (x − X_d)/(1 − p), X_d = x⊙M, M the iid Bernoulli(p) mask of dropped entries.
Only A sees x̃; with G = s·(g·B)ᵀ (r, T):

    A·x̃ᵀ = A·(x − X_d)ᵀ / (1 − p)        ∂L/∂A = G·(x − X_d) / (1 − p)        (r, T), (r, in)
    ∂L/∂x through x̃ = (Gᵀ·A)/(1 − p), zero at the dropped entries

The mask is sampled as the gaps between drops, which for an iid Bernoulli(p) sequence are iid
Geometric(p) (by inversion: ⌊log(1 − u)/log(1 − p)⌋ + 1, u uniform): ~p·N random draws instead of
one per element. Nothing of size (T, in) is kept from the forward to the backward — only the K ≈ p·T·in
positions (int32 while T·in < 2³¹: 5% of an fp32 x's bytes at p = 0.05).

x − X_d is a copy of x with the K dropped entries zeroed (`SparseDropout.kept`), made for each product
and freed after it: x itself is never written — other nodes saved it (q, k and v share their input),
another thread may read it, it may be read-only memory. The rank-r input gradient Gᵀ·A is written into
∂L/∂x first (a tensor this code creates), zeroed at the drops, and g·W accumulated into it. The sparse
alternatives — a CSR product for A·X_dᵀ, X_dᵀ·Gᵀ for ∂A — measured slower on CPU (docs/results.md).
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
    log_keep = math.log1p(-p)

    def gaps() -> torch.Tensor:  # iid Geometric(p) on {1, 2, ...}: ⌊log(1 − u)/log(1 − p)⌋ + 1
        u = torch.rand(draws, device=device)  # [0, 1): 1 − u > 0, so every gap is finite
        return u.neg_().log1p_().add_(log_keep).div_(log_keep, rounding_mode="floor").long()

    positions = gaps().cumsum_(0).sub_(1)
    while positions[-1] < numel - 1:  # the draws ran out before the end (a ~6σ event): keep going
        positions = torch.cat([positions, positions[-1] + gaps().cumsum_(0)])
    return positions[: int(torch.searchsorted(positions, numel))]


class SparseDropout:
    """The dropped entries of a (T, n) input, as ascending flat positions t·n + j."""

    def __init__(self, positions: torch.Tensor, rows: int, cols: int, p: float):
        self.positions = positions
        self.shape = (rows, cols)
        self.keep_scale = 1.0 / (1.0 - p)

    @classmethod
    def sample(cls, x2d: torch.Tensor, p: float) -> "SparseDropout":
        return cls(dropped_positions(x2d.numel(), p, x2d.device), x2d.shape[0], x2d.shape[1], p)

    def packed(self) -> torch.Tensor:
        """The positions as the forward saves them for the backward: int32 when they fit (half the bytes)."""
        fits = self.shape[0] * self.shape[1] <= torch.iinfo(torch.int32).max
        return self.positions.int() if fits else self.positions

    @classmethod
    def unpack(cls, packed: torch.Tensor, x2d: torch.Tensor, p: float) -> "SparseDropout":
        return cls(packed.long(), x2d.shape[0], x2d.shape[1], p)

    def zero_(self, t2d: torch.Tensor) -> torch.Tensor:
        """t2d with the dropped entries set to 0, in place: only for a (T, n) contiguous tensor the caller made."""
        t2d.view(-1).index_fill_(0, self.positions, 0)
        return t2d

    def kept(self, x2d: torch.Tensor) -> torch.Tensor:
        """x − X_d: a new (T, n) contiguous tensor, x with the dropped entries zeroed; x is not touched."""
        return self.zero_(x2d.clone(memory_format=torch.contiguous_format))

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The dense mask of x̃ = x ⊙ mask: 0 at the drops, 1/(1 − p) elsewhere, in x's shape and dtype (the
        composed formula's, for double backward)."""
        mask = torch.full((x.numel(),), self.keep_scale, dtype=x.dtype, device=x.device)
        return mask.index_fill_(0, self.positions, 0).view(x.shape)


class DenseDropout:
    """The same interface over a dense keep mask (T, n) of bools: what runs under torch.compile, whose
    graphs cannot hold the data-dependent number of drop positions. Saves T·n bytes instead of ~4·p·T·n."""

    def __init__(self, keep: torch.Tensor, p: float):
        self.keep = keep
        self.keep_scale = 1.0 / (1.0 - p)

    @classmethod
    def sample(cls, x2d: torch.Tensor, p: float) -> "DenseDropout":
        return cls(torch.rand(x2d.shape, device=x2d.device) >= p, p)

    def packed(self) -> torch.Tensor:
        return self.keep

    def zero_(self, t2d: torch.Tensor) -> torch.Tensor:
        return t2d.mul_(self.keep)

    def kept(self, x2d: torch.Tensor) -> torch.Tensor:
        return x2d * self.keep

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        return (self.keep * self.keep_scale).to(x.dtype).view(x.shape)


def sample_dropout(x2d: torch.Tensor, p: float):
    """The dropped entries of x2d (T, n): as positions (`SparseDropout`), or as a dense mask while compiling."""
    if p <= 0:
        return None
    return DenseDropout.sample(x2d, p) if torch.compiler.is_compiling() else SparseDropout.sample(x2d, p)


def unpack_dropout(saved, x2d: torch.Tensor, p: float):
    """The dropout a forward saved (`packed`), for the backward; None without dropout."""
    if saved is None:
        return None
    return DenseDropout(saved, p) if saved.dtype == torch.bool else SparseDropout.unpack(saved, x2d, p)
