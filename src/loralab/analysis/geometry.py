"""How an update sits relative to the pretrained weight: amplification, intruder dimensions, ΔM/ΔD.

* **Amplification** (Hu et al. 2021, LoRA §7.3, Table 7). With U (out, r), V (in, r) the top-r
  singular vectors of ΔW, project W0 onto that subspace: ‖Uᵀ·W0·V‖_F. The update amplifies
  directions W0 barely uses when this is small next to ‖ΔW‖_F:
  amplification = ‖ΔW‖_F / ‖Uᵀ·W0·V‖_F. Reference points: ‖Uᵀ·W0·V‖_F with U, V W0's own top-r
  singular vectors, and with random orthonormal U, V.
* **Intruder dimensions** (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
  Equivalence", §3): a singular vector among the top k of the tuned W' = W0 + ΔW whose largest
  cosine similarity to any singular vector of W0 is below ε. Left singular vectors, as the paper.
* **Magnitude and direction** (Liu et al. 2024, DoRA §3, eq. 2–3), per output row n of (out, in)
  weights (the magnitude vector DoRA trains): ΔM = mean_n |‖W'_n‖ − ‖W0_n‖|,
  ΔD = mean_n (1 − cos(W'_n, W0_n)).
"""

from __future__ import annotations

from typing import Optional

import torch

from loralab.analysis.spectra import SVD


def projected_norm(weight: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> float:
    """‖Uᵀ·W·V‖_F: W (out, in), U (out, r), V (in, r)."""
    return float((U.double().T @ weight.double() @ V.double()).norm())


def random_orthonormal(n: int, r: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64))
    return q


def amplification(base: torch.Tensor, update: SVD, r: int, seed: int = 0, w_svd: Optional[SVD] = None) -> dict:
    """LoRA Table 7 for one layer: ‖UᵀWV‖_F for ΔW's, W's own and random top-r directions, and the factor.

    Args:
        base: W0 (out, in).
        update: SVD of ΔW.
        r: How many top directions (the adapter's rank).
        w_svd: SVD of W0, when the caller has it.
    """
    r = min(r, len(update.S))
    top = update.top(r)
    w_svd = w_svd or SVD(*_svd(base), tuple(base.shape))
    generator = torch.Generator().manual_seed(seed)
    delta_norm = float(update.S.double().square().sum().sqrt())
    along_delta = projected_norm(base, top.U, top.V)
    out, n_in = base.shape
    return {
        "r": r,
        "delta_frobenius": delta_norm,
        "w_frobenius": float(base.double().norm()),
        "w_on_delta_directions": along_delta,
        "w_on_own_directions": projected_norm(base, w_svd.U[:, :r], w_svd.V[:, :r]),
        "w_on_random_directions": projected_norm(base, random_orthonormal(out, r, generator),
                                                 random_orthonormal(n_in, r, generator)),
        "amplification": delta_norm / along_delta if along_delta > 0 else float("inf"),
    }


def _svd(weight: torch.Tensor):
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    return u, s, vh.T


def intruder_dimensions(base: torch.Tensor, tuned: torch.Tensor, k: int = 10, epsilon: float = 0.5,
                        base_u: Optional[torch.Tensor] = None) -> dict:
    """Intruders among the top-``k`` left singular vectors of ``tuned`` against every one of ``base``'s.

    Returns the count, the top-k best cosines, and their singular-vector indices.
    """
    u0 = base_u if base_u is not None else torch.linalg.svd(base.double(), full_matrices=False)[0]
    u1 = torch.linalg.svd(tuned.double(), full_matrices=False)[0][:, :k]
    best = (u1.T @ u0).abs().max(dim=1).values  # (k,)
    intruders = (best < epsilon).nonzero().flatten().tolist()
    return {"count": len(intruders), "indices": intruders, "best_cosine": best.tolist(), "k": k, "epsilon": epsilon}


def magnitude_direction(base: torch.Tensor, tuned: torch.Tensor) -> dict:
    """ΔM and ΔD between W0 and W' (out, in), per output row (DoRA §3)."""
    w0, w1 = base.double(), tuned.double()
    n0, n1 = w0.norm(dim=1), w1.norm(dim=1)
    cosine = (w0 * w1).sum(dim=1) / (n0 * n1).clamp_min(1e-30)
    return {"delta_m": float((n1 - n0).abs().mean()), "delta_d": float((1 - cosine).mean())}
