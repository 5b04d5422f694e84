"""Singular spectra of weight updates, and the ranks read off them.

A LoRA update ΔW = s·B·A (out × in, rank ≤ r) is decomposed from its factors alone:

    B = Q_B·R_B,  Aᵀ = Q_A·R_A  (thin QR)   ⇒   ΔW = Q_B·(s·R_B·R_Aᵀ)·Q_Aᵀ,

and the SVD of the r×r core C = s·R_B·R_Aᵀ = U_c·Σ·V_cᵀ gives ΔW = (Q_B·U_c)·Σ·(Q_A·V_c)ᵀ:
O((out + in)·r²) work and no out×in tensor (`low_rank_svd`). A full fine-tuning update
W_ft − W0 is dense and takes an ordinary SVD (`dense_svd`).

Read off the singular values σ_1 ≥ σ_2 ≥ … (`summarize`):

* energy rank k@p: the smallest k with Σ_{i≤k} σ_i² ≥ p·Σ σ_i² (LoRA paper §7 asks how few
  directions carry the update);
* entropy effective rank exp(H(p)), p_i = σ_i / Σσ (Roy & Vetterli 2007);
* stable rank ‖ΔW‖_F² / ‖ΔW‖_2² = Σσ² / σ_1²;
* noise rank: the number of σ above the Gavish–Donoho (2014) optimal hard threshold for
  an unknown noise level, τ = ω(β)·median(σ), β = min/max aspect ratio, ω(β) ≈ 0.56β³ −
  0.95β² + 1.82β + 1.43. For a low-rank update most of the min(out, in) singular values are
  exactly 0, the median is 0, and the count is the numerical rank (σ > σ_1·n·ε).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

ENERGIES = (0.5, 0.9, 0.99)


@dataclass
class SVD:
    """ΔW ≈ U·diag(S)·Vᵀ: U (out, k), S (k,) descending, V (in, k); ``shape`` is ΔW's (out, in)."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    shape: tuple[int, int]

    def top(self, k: int) -> "SVD":
        return SVD(self.U[:, :k], self.S[:k], self.V[:, :k], self.shape)


def low_rank_svd(A: torch.Tensor, B: torch.Tensor, scale: float = 1.0) -> SVD:
    """SVD of s·B·A from the factors: A (r, in), B (out, r); float64; never forms the out×in product."""
    a, b = A.double(), B.double()
    q_b, r_b = torch.linalg.qr(b)  # (out, r), (r, r)
    q_a, r_a = torch.linalg.qr(a.T)  # (in, r), (r, r)
    u_c, s, v_ch = torch.linalg.svd(scale * (r_b @ r_a.T))  # (r, r) core; σ ≥ 0 whatever the sign of s
    return SVD(q_b @ u_c, s, q_a @ v_ch.T, (b.shape[0], a.shape[1]))


def dense_svd(delta: torch.Tensor) -> SVD:
    """SVD of a dense update (out, in), float64."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return SVD(u, s, vh.T, tuple(delta.shape))


def energy_rank(s: torch.Tensor, fraction: float) -> int:
    """Smallest k with Σ_{i≤k} σ_i² ≥ fraction·Σσ² (0 for a zero update)."""
    energy = s.double().square()
    total = float(energy.sum())
    if total == 0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(fraction - 1e-12, dtype=cumulative.dtype)).item()) + 1


def effective_rank(s: torch.Tensor) -> float:
    """exp of the entropy of σ_i / Σσ (Roy & Vetterli 2007); 0 for a zero update."""
    s = s.double()
    total = float(s.sum())
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(s: torch.Tensor) -> float:
    """‖ΔW‖_F² / ‖ΔW‖_2²."""
    s = s.double()
    return float(s.square().sum() / s[0].square()) if len(s) and s[0] > 0 else 0.0


def gavish_donoho_omega(beta: float) -> float:
    """ω(β) of the optimal hard threshold τ = ω(β)·median(σ) for unknown noise (Gavish & Donoho 2014, eq. 5)."""
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def noise_rank(s: torch.Tensor, shape: tuple[int, int]) -> int:
    """How many singular values rise above noise (see the module docstring)."""
    n_min, n_max = min(shape), max(shape)
    full = torch.zeros(n_min, dtype=torch.float64)
    full[: len(s)] = s.double()[:n_min]
    median = float(full.median())
    if median == 0:
        return int((full > full.max() * n_max * torch.finfo(torch.float32).eps).sum()) if full.max() > 0 else 0
    return int((full > gavish_donoho_omega(n_min / n_max) * median).sum())


def summarize(svd: SVD, keep: Optional[int] = 64) -> dict:
    """The numbers a report shows for one update: σ (first ``keep``), ‖ΔW‖_F and every rank above."""
    s = svd.S
    return {
        "shape": list(svd.shape),
        "singular_values": [float(v) for v in s[:keep]],
        "frobenius": float(s.double().square().sum().sqrt()),
        "spectral": float(s[0]) if len(s) else 0.0,
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        **{f"k{round(p * 100)}": energy_rank(s, p) for p in ENERGIES},
        "noise_rank": noise_rank(s, svd.shape),
        "noise_rank_method": "Gavish-Donoho (2014), unknown noise",
    }
