"""Random projections P: R^d → R^D for intrinsic-dimension training (θ = θ0 + P·θ_d).

All are seeded and deterministic, and have approximately unit-norm, nearly orthogonal
columns, so ‖P·u‖ ≈ ‖u‖ (exactly in expectation over the seed):

* `DenseProjection` — i.i.d. N(0, 1/D) entries, a stored (D, d) matrix: the reference.
* `SparseProjection` — Li, Hastie & Church (2006) very sparse projection: each entry is
  ±1/√(D·ρ) with probability ρ/2 each (ρ = 1/√D), else 0; stored as (row, col, sign).
* `FastfoodProjection` — Le, Sarlós & Smola (2013), as used for intrinsic dimension by
  Li et al. (2018) and Aghajanyan et al. (2021): blocks of V = H·G·Π·H·B of size
  n = 2^⌈log₂ d⌉, stacked until they cover D rows, with B random signs, Π a random
  permutation, G Gaussian and H the Walsh–Hadamard matrix applied by the fast transform.
  O(D) memory (three length-D vectors, no (D, d) matrix) and O(D log n) time.

Each has ``forward(u)`` = P·u and ``transpose(v)`` = Pᵀ·v (exact adjoint); ``project``
wraps them in an autograd function whose backward is the transpose.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform over the last dimension (a power of two).

    H_n = [[H, H], [H, −H]] applied in log₂ n butterfly stages; H·H = n·I.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        x = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = x[..., 0, :], x[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return x.reshape(*lead, n)


class Projection(nn.Module):
    """P: R^d → R^D. Subclasses implement `forward` (P·u) and `transpose` (Pᵀ·v)."""

    def __init__(self, full_dim: int, dim: int, seed: int):
        super().__init__()
        if dim < 1 or full_dim < 1:
            raise ValueError(f"projection sizes must be positive, got D={full_dim}, d={dim}")
        self.full_dim, self.dim, self.seed = full_dim, dim, seed

    def transpose(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"D={self.full_dim}, d={self.dim}, seed={self.seed}"


class DenseProjection(Projection):
    """A stored Gaussian matrix, P_ij ~ N(0, 1/D): E‖P·u‖² = ‖u‖²."""

    def __init__(self, full_dim: int, dim: int, seed: int):
        super().__init__(full_dim, dim, seed)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("matrix", torch.randn(full_dim, dim, generator=generator) / math.sqrt(full_dim),
                             persistent=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.matrix @ u  # (D,)

    def transpose(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix.T @ v  # (d,)


class SparseProjection(Projection):
    """Very sparse random projection: about d·√D non-zeros of ±(D·ρ)^(-1/2), ρ = 1/√D."""

    def __init__(self, full_dim: int, dim: int, seed: int):
        super().__init__(full_dim, dim, seed)
        generator = torch.Generator().manual_seed(seed)
        density = 1.0 / math.sqrt(full_dim)
        per_column = max(1, round(full_dim * density))
        rows = torch.randint(0, full_dim, (dim, per_column), generator=generator).flatten()
        cols = torch.arange(dim).repeat_interleave(per_column)
        signs = torch.randint(0, 2, (dim * per_column,), generator=generator).float() * 2 - 1
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("values", signs / math.sqrt(per_column), persistent=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.full_dim, dtype=u.dtype, device=u.device)
        return out.index_add_(0, self.rows, self.values.to(u.dtype) * u[self.cols])

    def transpose(self, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.dim, dtype=v.dtype, device=v.device)
        return out.index_add_(0, self.cols, self.values.to(v.dtype) * v[self.rows])


class FastfoodProjection(Projection):
    """Stacked Fastfood blocks (see the module docstring); buffers are length-D vectors only.

    Block j maps u (zero-padded to n) to c·H·G_j·Π_j·H·B_j·u. Column i of block j has
    squared norm n·Σ_k G_jk² (H·B·e_i is a ±1 vector, H·H = n·I), so c = (n·Σ_all G²)^(-1/2)
    makes every column of the stacked P unit-norm (up to the rows cut off at D).
    """

    def __init__(self, full_dim: int, dim: int, seed: int):
        super().__init__(full_dim, dim, seed)
        n = 1 << max(0, math.ceil(math.log2(dim)))
        blocks = math.ceil(full_dim / n)
        generator = torch.Generator().manual_seed(seed)
        self.n, self.blocks = n, blocks
        self.register_buffer("signs", torch.randint(0, 2, (blocks, n), generator=generator).float() * 2 - 1,
                             persistent=False)
        perm = torch.argsort(torch.rand(blocks, n, generator=generator), dim=1)
        self.register_buffer("perm", perm.to(torch.int32 if n < 2**31 else torch.int64), persistent=False)
        self.register_buffer("gauss", torch.randn(blocks, n, generator=generator), persistent=False)
        # ‖H·G·Π·H·B·e_i‖² = n·Σ_k G_k² per block; stacked blocks add up.
        self.scale = 1.0 / math.sqrt(n * float(self.gauss.square().sum()))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(self.blocks, self.n, dtype=u.dtype, device=u.device)
        x[:, : self.dim] = u  # every block sees the same padded u
        x = fwht(x * self.signs)  # H·B·u, (blocks, n)
        x = torch.gather(x, 1, self.perm.long())  # Π
        x = fwht(x * self.gauss)  # H·G
        return (x * self.scale).reshape(-1)[: self.full_dim]

    def transpose(self, v: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(self.blocks * self.n, dtype=v.dtype, device=v.device)
        x[: self.full_dim] = v
        x = fwht(x.reshape(self.blocks, self.n)) * self.gauss  # Gᵀ·Hᵀ (H symmetric)
        y = torch.zeros_like(x).scatter_(1, self.perm.long(), x)  # Πᵀ
        y = fwht(y) * self.signs  # Bᵀ·Hᵀ
        return (y.sum(dim=0) * self.scale)[: self.dim]


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: torch.Tensor, projection: Projection) -> torch.Tensor:
        ctx.projection = projection
        return projection(u)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.projection.transpose(grad), None


def project(projection: Projection, u: torch.Tensor) -> torch.Tensor:
    """P·u, differentiable in u; the backward pass is Pᵀ·grad (nothing of size D×d is saved)."""
    return _Project.apply(u, projection)


PROJECTIONS = {"dense": DenseProjection, "sparse": SparseProjection, "fastfood": FastfoodProjection}


def make_projection(kind: str, full_dim: int, dim: int, seed: int) -> Projection:
    if kind not in PROJECTIONS:
        raise ValueError(f"projection must be one of {tuple(PROJECTIONS)}, got {kind!r}")
    return PROJECTIONS[kind](full_dim, dim, seed)
