"""DoRA's weight-decomposition math (Liu et al. 2024, "DoRA", §4.1 and §4.3).

DoRA writes the adapted weight as magnitude times direction:

    W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖_row

with W (out, in), A (r, in), B (out, r), m (out,) and the norm taken over each
output row. §4.3 treats the norm as a constant in the backward pass, so it is
computed here without autograd and never needs the (out, in) matrix W + s·B·A.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def adapted_row_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """‖W_i + s·(B·A)_i‖ for every output row i, without forming W + s·B·A.

    ‖W_i + s(BA)_i‖² = ‖W_i‖² + 2s·Σ_k B_ik (W·Aᵀ)_ik + s²·B_i (A·Aᵀ) B_iᵀ,
    so the only temporaries are (out, r) and (r, r) matrices.

    Args:
        weight: W, (out, in).
        lora_A: A, (r, in).
        lora_B: B, (out, r).
        scaling: s.

    Returns:
        The detached row norms, (out,), in float32 (or the inputs' wider type) whatever the
        inputs' precision (a bf16 base with float32 adapters computes in float32).
    """
    dtype = torch.promote_types(torch.promote_types(weight.dtype, lora_A.dtype), torch.float32)
    weight, lora_A, lora_B = weight.to(dtype), lora_A.to(dtype), lora_B.to(dtype)
    w_sq = torch.linalg.vector_norm(weight, dim=1).square()  # (out,), no (out, in) temporary
    w_at = weight @ lora_A.T  # (out, r)
    gram = lora_A @ lora_A.T  # (r, r)
    cross = (lora_B * w_at).sum(dim=1)  # (out,)
    delta_sq = ((lora_B @ gram) * lora_B).sum(dim=1)  # (out,)
    norm_sq = w_sq + 2.0 * scaling * cross + scaling * scaling * delta_sq
    return norm_sq.clamp_min(0.0).sqrt()


def dora_term(base_no_bias: torch.Tensor, low_rank: torch.Tensor, magnitude: torch.Tensor,
              weight_norm: torch.Tensor) -> torch.Tensor:
    """What DoRA adds to the base output W·x + b (the composed path: stacks and routing).

    m/‖W'‖ ⊙ (W·x + s·B·A·x̃) − W·x = (m/‖W'‖ − 1) ⊙ W·x + m/‖W'‖ ⊙ s·B·A·x̃.

    Args:
        base_no_bias: W·x, (..., out).
        low_rank: s·B·A·x̃, (..., out).
        magnitude: m, (out,).
        weight_norm: ‖W + s·B·A‖_row, detached, (out,).
    """
    scale = magnitude / weight_norm  # (out,)
    return (scale - 1.0) * base_no_bias + scale * low_rank
