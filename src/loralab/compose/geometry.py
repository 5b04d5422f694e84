"""How two adapters' updates relate, layer by layer — the geometry behind interference.

For ΔW_1, ΔW_2 of one layer (out, in):

* cosine ⟨ΔW_1, ΔW_2⟩_F / (‖ΔW_1‖_F‖ΔW_2‖_F), from the factors:
  ⟨s_1B_1A_1, s_2B_2A_2⟩_F = s_1s_2·Σ (B_1ᵀB_2) ⊙ (A_1A_2ᵀ), (r_1, r_2) matrices only;
* principal angles between the input subspaces (row spaces of A_1, A_2): cos θ_k are the singular
  values of Q_1ᵀQ_2, Q_i an orthonormal basis of A_iᵀ; reported as the largest cosine and the mean;
* the same between the output subspaces (column spaces of B_1, B_2);
* the cosine of the A's themselves (`similarity.a_cosine`): ≈ 0 for independent initialisations, clearly
  positive when the adapters started from the same A (the same seed and shapes), since A moves little
  in training. Their input subspaces then agree by construction, not because the tasks need the same
  directions; B starts at 0, so the output angles are all learned;
* sign-conflict rate (TIES, Yadav et al. 2023, §3): among the entries in both updates' top
  ``density`` fraction by magnitude, the share whose signs differ (dense, per layer).

`random_like` gives the baseline: factors of the same shapes and norms with random directions.
"""

from __future__ import annotations

import itertools

import torch

from loralab.analysis.factors import Factors
from loralab.analysis.similarity import a_cosine, started_together
from loralab.compose.task_arithmetic import trim


def cosine(f1: Factors, f2: Factors) -> float:
    a1, b1, a2, b2 = (t.double() for t in (f1.A, f1.B, f2.A, f2.B))
    inner = f1.scale * f2.scale * float(((b1.T @ b2) * (a1 @ a2.T)).sum())
    n1 = abs(f1.scale) * float(torch.trace((b1.T @ b1) @ (a1 @ a1.T)).clamp_min(0).sqrt())
    n2 = abs(f2.scale) * float(torch.trace((b2.T @ b2) @ (a2 @ a2.T)).clamp_min(0).sqrt())
    return inner / (n1 * n2) if n1 > 0 and n2 > 0 else 0.0


def principal_cosines(f1: Factors, f2: Factors, side: str = "input") -> torch.Tensor:
    """cos θ_k between the input subspaces (row spaces of A) or the output subspaces (column spaces of B)
    of the two updates, descending."""
    def basis(f: Factors) -> torch.Tensor:
        return torch.linalg.qr(f.A.double().T if side == "input" else f.B.double())[0]

    return torch.linalg.svdvals(basis(f1).T @ basis(f2))


MEASURES = ("cosine", "max_principal_cosine", "mean_principal_cosine", "max_output_principal_cosine",
            "mean_output_principal_cosine", "sign_conflict", "a_cosine")


def sign_conflicts(f1: Factors, f2: Factors, density: float = 0.2) -> float:
    d1 = trim(f1.scale * f1.B.double() @ f1.A.double(), density)
    d2 = trim(f2.scale * f2.B.double() @ f2.A.double(), density)
    both = (d1 != 0) & (d2 != 0)
    return float((d1.sign() != d2.sign())[both].double().mean()) if both.any() else 0.0


def pair_geometry(f1: Factors, f2: Factors, density: float = 0.2) -> dict:
    inputs, outputs = principal_cosines(f1, f2, "input"), principal_cosines(f1, f2, "output")
    a_cos = a_cosine(f1, f2)
    return {"cosine": cosine(f1, f2), "max_principal_cosine": float(inputs[0]),
            "mean_principal_cosine": float(inputs.mean()), "max_output_principal_cosine": float(outputs[0]),
            "mean_output_principal_cosine": float(outputs.mean()), "sign_conflict": sign_conflicts(f1, f2, density),
            "a_cosine": a_cos, "started_together": started_together(f1, f2, a_cos)}


def random_like(f: Factors, generator: torch.Generator) -> Factors:
    """Random directions with f's shapes and the same ‖A‖_F, ‖B‖_F and scale."""
    a = torch.randn(f.A.shape, generator=generator, dtype=torch.float64)
    b = torch.randn(f.B.shape, generator=generator, dtype=torch.float64)
    return Factors(a * f.A.double().norm() / a.norm(), b * f.B.double().norm() / b.norm(), f.scale, None, f.kind)


def adapters_geometry(first: dict[str, Factors], second: dict[str, Factors], density: float = 0.2,
                      seed: int = 0) -> dict:
    """Per shared layer: the pair's geometry and a random baseline of the same shapes; plus medians and
    ``shared_start``: the A's started equal in most shared layers (see the module docstring)."""
    import statistics

    generator = torch.Generator().manual_seed(seed)
    shared = [p for p in first if p in second]
    layers = {p: {"pair": pair_geometry(first[p], second[p], density),
                  "random": pair_geometry(random_like(first[p], generator), random_like(second[p], generator), density)}
              for p in shared}
    summary = {}
    for which, key in itertools.product(("pair", "random"), MEASURES):
        values = [layers[p][which][key] for p in shared if layers[p][which][key] is not None]
        summary[f"{which}_{key}"] = statistics.median(values) if values else None
    together = sum(layers[p]["pair"]["started_together"] for p in shared)
    return {"layers": layers, "summary": summary, "shared_start": together > len(shared) / 2}
