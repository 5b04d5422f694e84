"""Which dtype an adapted layer computes in, and the cheap forward used when no gradient is needed.

Compute dtype (the rules of ``torch.autocast``, device-agnostic):

* inside ``torch.autocast(device_type, dtype)`` for the input's device: that dtype (CPU bf16, CUDA
  fp16/bf16) — the fused nodes then run in it with every operand cast once, and return gradients
  that autograd casts back to each parameter's own dtype (float32 adapter weights stay float32);
* otherwise the input's dtype — a model cast to bf16 computes in bf16 even when its adapters were
  kept in float32 (`inject(..., autocast_adapter_dtype=True)`, PEFT's default).

`lora_inference` / `dora_inference` / `routed_lora_inference` serve ``torch.no_grad()`` and
``inference_mode``: no autograd node; the small rank-r term is written first and the big GEMM
accumulates into it; DoRA's per-row factor goes wherever it is cheaper (into W for many tokens,
onto the output for few).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def autocast_off(x: torch.Tensor):
    """Disable autocast on x's device while operands are already in the compute dtype."""
    device = x.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else contextlib.nullcontext()


def cast(dtype: torch.dtype, *tensors: Optional[torch.Tensor]) -> list:
    """Each tensor in ``dtype`` (differentiable; a no-op for tensors already in it); None stays None."""
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]


def lora_inference(x, weight, bias, lora_A, lora_B, scaling: float) -> torch.Tensor:
    """W·x + b + s·B·(A·x) without autograd: x (..., in), W (out, in), A (r, in), B (out, r).

    The rank-r term (with the bias, s as the product's alpha) is written first and the big GEMM
    accumulates into it: no pass over the (T, out) output beyond the GEMM's own.
    """
    x2d = x.reshape(-1, x.shape[-1])
    hidden = torch.mm(x2d, lora_A.T)  # (T, r)
    if bias is None:
        out = torch.mm(hidden.mul_(scaling), lora_B.T)
    else:
        out = torch.addmm(bias, hidden, lora_B.T, alpha=scaling)  # (T, out)
    return out.addmm_(x2d, weight.T).view(*x.shape[:-1], weight.shape[0])


def dora_inference(x, weight, bias, lora_A, lora_B, scaling: float, row_scale: torch.Tensor) -> torch.Tensor:
    """m/n ⊙ (W·x + s·B·A·x) + b without autograd; ``row_scale`` = m/n (out,).

    m/n is folded into W and B when that (out, in) copy is smaller than the (T, out) output (many
    tokens), else applied to the output with the bias in one pass (few tokens, e.g. generation).
    """
    x2d = x.reshape(-1, x.shape[-1])
    hidden = torch.mm(x2d, lora_A.T)  # (T, r)
    if x2d.shape[0] > x2d.shape[1]:
        scaled_b = lora_B * (row_scale * scaling)[:, None]
        out = torch.addmm(bias, hidden, scaled_b.T) if bias is not None else hidden @ scaled_b.T
        out.addmm_(x2d, (weight * row_scale[:, None]).T)
    else:
        out = torch.mm(x2d, weight.T).addmm_(hidden, lora_B.T, alpha=scaling)
        out = out.mul_(row_scale) if bias is None else torch.addcmul(bias, out, row_scale, out=out)  # in place
    return out.view(*x.shape[:-1], weight.shape[0])


def routed_lora_inference(x, weight, bias, lora_A, lora_B, example_scale: torch.Tensor) -> torch.Tensor:
    """A different LoRA adapter per example, without autograd: W·x + b + B·(S ⊙ A·x).

    x (batch, ..., in); A = [A_1; …; A_k] (R, in) and B = [B_1 … B_k] (out, R) stack k adapters
    (R = Σ r_i); ``example_scale`` S (batch, R) holds s_i on adapter i's R-columns for the examples
    routed to it and 0 elsewhere. An example routed to adapter i gets W·x + b + s_i·B_i·A_i·x, one
    routed to none gets W·x + b: two thin products over the whole batch, no gather or scatter.
    """
    batch, n_in = x.shape[0], x.shape[-1]
    x2d = x.reshape(-1, n_in)  # (T, in), the examples' tokens in order
    hidden = torch.mm(x2d, lora_A.T)  # (T, R)
    hidden.view(batch, -1, hidden.shape[1]).mul_(example_scale[:, None, :])
    out = torch.mm(hidden, lora_B.T) if bias is None else torch.addmm(bias, hidden, lora_B.T)  # (T, out)
    return out.addmm_(x2d, weight.T).view(*x.shape[:-1], weight.shape[0])
