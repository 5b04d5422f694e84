"""Random projections P: R^d → R^D for intrinsic-dimension training (θ = θ0 + P·θ_d).

All are seeded and deterministic, and have approximately unit-norm, nearly orthogonal
columns, so ‖P·u‖ ≈ ‖u‖ (exactly in expectation over the seed):

* `DenseProjection` — i.i.d. N(0, 1/D) entries, a stored (D, d) matrix: the reference.
* `SparseProjection` — a very sparse projection in the spirit of Li, Hastie & Church (2006):
  each column has k = round(√D) non-zeros at rows drawn uniformly (with replacement), each
  ±1/√k with a random sign, so every column has unit norm in expectation (exactly, unless two
  draws hit the same row); stored as (row, col, value) triples.
* `FastfoodProjection` — Le, Sarlós & Smola (2013), as used for intrinsic dimension by
  Li et al. (2018) and Aghajanyan et al. (2021): blocks of V = H·G·Π·H·B of size
  n = 2^⌈log₂ d⌉, stacked until they cover D rows, with B random signs, Π a random
  permutation, G Gaussian and H the Walsh–Hadamard matrix applied by the fast transform.
  O(D) memory (three length-D vectors, no (D, d) matrix) and O(D log n) time.

Each has ``forward(u)`` = P·u and ``transpose(v)`` = Pᵀ·v (exact adjoint); the training
step (`intrinsic._Assemble`) uses the buffer-reusing pair ``forward_buffer`` / ``transpose_``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_HADAMARD: dict[tuple[int, torch.dtype], torch.Tensor] = {}
MAX_FACTOR_BITS = 6  # Hadamard factors of at most 64×64


def hadamard(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Sylvester Hadamard matrix H_n (n a power of two): H_2n = [[H_n, H_n], [H_n, −H_n]]."""
    key = (n, dtype)
    if key not in _HADAMARD:
        h = torch.ones(1, 1, dtype=dtype)
        while h.shape[0] < n:
            h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
        _HADAMARD[key] = h
    return _HADAMARD[key]


def _factor_bits(n: int) -> list[int]:
    """log₂ of the Hadamard factors of H_n, the small factor first (the last one runs as one GEMM)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    bits = n.bit_length() - 1
    parts = [MAX_FACTOR_BITS] * (bits // MAX_FACTOR_BITS)
    if bits % MAX_FACTOR_BITS or not parts:
        parts.insert(0, bits % MAX_FACTOR_BITS)
    return parts


def fwht_(x: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """H_n·x over the last dimension, computed in ``x`` and ``work`` (same size; both overwritten).

    H_n = H_n1 ⊗ H_n2 ⊗ … (Sylvester order), so with x viewed row-major as (n1, n2, …)
    the transform is one small dense matmul per factor: O(n·Σ n_i) work, one pass over
    memory per factor, and no allocation of x's size (a fresh D-sized buffer costs more
    than the matmul on CPU: its pages fault in). Returns whichever of the two holds H·x.
    """
    n = x.shape[-1]
    parts = _factor_bits(n)
    rows = x.numel() // n
    src, dst = x.reshape(-1), work.reshape(-1)
    last = 1 << parts[-1]
    torch.mm(src.view(-1, last), hadamard(last, x.dtype).to(x.device), out=dst.view(-1, last))  # H symmetric
    src, dst = dst, src
    before = 1
    for part in parts[:-1]:
        size = 1 << part
        after = n // (before * size)
        h = hadamard(size, x.dtype).to(x.device)
        torch.matmul(h, src.view(rows * before, size, after), out=dst.view(rows * before, size, after))
        src, dst = dst, src
        before *= size
    return src.view(x.shape)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform H_n·x over the last dimension (n a power of two).

    H·H = n·I and H is symmetric. ``x`` is left unchanged (see `fwht_` for the in-place form).
    """
    return fwht_(x.clone(), torch.empty_like(x))


class Projection(nn.Module):
    """P: R^d → R^D. Subclasses implement `forward` (P·u) and `transpose` (Pᵀ·v).

    `forward_buffer` and `transpose_` are the allocation-lean pair the training step uses:
    the first returns a buffer whose first D entries are P·u (Fastfood pads it to whole
    blocks), the second takes such a buffer holding v in its first D entries and may
    overwrite all of it.
    """

    def __init__(self, full_dim: int, dim: int, seed: int):
        super().__init__()
        if dim < 1 or full_dim < 1:
            raise ValueError(f"projection sizes must be positive, got D={full_dim}, d={dim}")
        self.full_dim, self.dim, self.seed = full_dim, dim, seed

    def transpose(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_buffer(self, u: torch.Tensor) -> torch.Tensor:
        return self(u)

    def transpose_(self, buffer: torch.Tensor) -> torch.Tensor:
        return self.transpose(buffer[: self.full_dim])

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
    """Very sparse random projection: k = round(√D) entries ±1/√k per column at uniformly drawn rows."""

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
    """Stacked Fastfood blocks with O(D) memory and no (D, d) matrix.

    Block j maps u (zero-padded to n) to c·H·G_j·Π_j·H·B·u. The signs B are shared by
    the blocks, so H·B·u is computed once (an n-vector); the per-block permutations Π_j
    and Gaussians G_j make the blocks differ. Each column of a block has squared norm
    n·Σ_k G_jk² (H·B·e_i is a ±1 vector, H·H = n·I), so c = (n·Σ_all G²)^(-1/2) makes
    every column of the stacked P unit-norm (up to the rows cut off at D), and the
    shared B keeps distinct columns orthogonal in expectation. The buffer ``gauss`` holds
    c·G_j (the constant folded in), (blocks, n).
    """

    def __init__(self, full_dim: int, dim: int, seed: int):
        super().__init__(full_dim, dim, seed)
        n = 1 << max(0, math.ceil(math.log2(dim)))
        blocks = math.ceil(full_dim / n)
        generator = torch.Generator().manual_seed(seed)
        self.n, self.blocks = n, blocks
        self.register_buffer("signs", torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1,
                             persistent=False)  # B
        perm = torch.argsort(torch.rand(blocks, n, generator=generator), dim=1)
        self.register_buffer("perm", perm.to(torch.int32).reshape(-1), persistent=False)  # Π_j, local indices
        gauss = torch.randn(blocks, n, generator=generator)  # G_j
        self.scale = 1.0 / math.sqrt(n * float(gauss.double().square().sum()))
        self.register_buffer("gauss", gauss * self.scale, persistent=False)  # c·G_j

    def forward_buffer(self, u: torch.Tensor) -> torch.Tensor:
        """(blocks·n,): P·u in the first D entries."""
        w = torch.zeros(self.n, dtype=u.dtype, device=u.device)
        w[: self.dim] = u
        w = fwht(w * self.signs)  # H·B·u, (n,)
        x = w.index_select(0, self.perm).view(self.blocks, self.n)  # Π_j·H·B·u for every block
        x.mul_(self.gauss.to(u.dtype))  # c·G_j·…
        return fwht_(x, torch.empty_like(x)).reshape(-1)  # H·…

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.forward_buffer(u)[: self.full_dim]

    def transpose_(self, buffer: torch.Tensor) -> torch.Tensor:
        """Pᵀ·v for v in the first D entries of a (blocks·n,) buffer (overwritten)."""
        buffer[self.full_dim :].zero_()
        x = buffer.view(self.blocks, self.n)
        x = fwht_(x, torch.empty_like(x)).mul_(self.gauss.to(buffer.dtype))  # (c·G_j)ᵀ·Hᵀ (H symmetric)
        z = torch.zeros(self.n, dtype=buffer.dtype, device=buffer.device)
        z.index_add_(0, self.perm, x.reshape(-1))  # Σ_j Π_jᵀ
        return (fwht(z) * self.signs)[: self.dim]  # Bᵀ·Hᵀ

    def transpose(self, v: torch.Tensor) -> torch.Tensor:
        buffer = torch.empty(self.blocks * self.n, dtype=v.dtype, device=v.device)
        buffer[: self.full_dim] = v
        return self.transpose_(buffer)


PROJECTIONS = {"dense": DenseProjection, "sparse": SparseProjection, "fastfood": FastfoodProjection}


def make_projection(kind: str, full_dim: int, dim: int, seed: int) -> Projection:
    if kind not in PROJECTIONS:
        raise ValueError(f"projection must be one of {tuple(PROJECTIONS)}, got {kind!r}")
    return PROJECTIONS[kind](full_dim, dim, seed)
