"""Dropout on the LoRA input path, stored and applied as the positions of the dropped entries.

x̃ = dropout_p(x) = (x − X_d)/(1 − p), X_d = x⊙M, M the iid Bernoulli(p) mask of dropped entries.
Only A sees x̃; with G = s·(g·B)ᵀ (r, T):

    A·x̃ᵀ = A·(x − X_d)ᵀ / (1 − p)        ∂L/∂A = G·(x − X_d) / (1 − p)        (r, T), (r, in)
    ∂L/∂x through x̃ = (Gᵀ·A)/(1 − p), zero at the dropped entries

The mask is sampled as the gaps between drops, which for an iid Bernoulli(p) sequence are iid
Geometric(p) (by inversion: ⌊log(1 − u)/log(1 − p)⌋ + 1, u uniform): ~p·N random draws instead of
one per element. Nothing of size (T, in) is kept from the forward to the backward — only the K ≈ p·T·in
positions (int32 while T·in < 2³¹: 5% of an fp32 x's bytes at p = 0.05).

x − X_d is never a second copy of x: the two products run on x itself with the K dropped entries
zeroed for the duration of the GEMM and written back bit for bit afterwards (`SparseDropout.zeroed`),
three K-sized index operations instead of a (T, in) copy per product. The rank-r input gradient
Gᵀ·A is written into ∂L/∂x first, zeroed at the drops, and g·W accumulated into it. The sparse
alternatives — a CSR product for A·X_dᵀ, X_dᵀ·Gᵀ for ∂A, a sampled product for the input gradient at
the drops — measured slower on CPU (X_dᵀ·Gᵀ alone costs ~5 copies of x; docs/results.md).
"""

from __future__ import annotations

import contextlib
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
        """t2d with the dropped entries set to 0, in place; t2d (T, n) contiguous."""
        t2d.view(-1).index_fill_(0, self.positions, 0)
        return t2d

    @contextlib.contextmanager
    def zeroed(self, x2d: torch.Tensor):
        """x − X_d for the duration of the block: x itself with the dropped entries zeroed, restored on exit.

        Writes go through ``x2d.data`` so x's version counter does not move: other autograd nodes that
        saved x (q, k and v share their input) still find it unchanged, which it is once the block exits.
        A non-contiguous or inference-mode x gets a zeroed copy instead.
        """
        if not x2d.is_contiguous() or x2d.is_inference():
            yield self.zero_(x2d.clone(memory_format=torch.contiguous_format))
            return
        flat = x2d.data.view(-1)
        values = flat.gather(0, self.positions)  # 1-D gather runs on every thread; index_select on one
        flat.index_fill_(0, self.positions, 0)
        try:
            yield x2d.data
        finally:
            flat.index_copy_(0, self.positions, values)
