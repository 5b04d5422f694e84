"""Which dtype an adapted layer computes in.

Compute dtype (the rules of ``torch.autocast``, device-agnostic):

* inside ``torch.autocast(device_type, dtype)`` for the input's device: that dtype (CPU bf16, CUDA
  fp16/bf16) — the fused nodes then run in it with every operand cast once, and return gradients
  that autograd casts back to each parameter's own dtype (float32 adapter weights stay float32);
* otherwise the input's dtype — a model cast to bf16 computes in bf16 even when its adapters were
  kept in float32 (`inject(..., autocast_adapter_dtype=True)`, PEFT's default).
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
