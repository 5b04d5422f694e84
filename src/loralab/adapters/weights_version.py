"""Has any of these weights changed since? A cheap key for caches of values derived from weights.

Every in-place change through a tensor op bumps the tensor's version counter: an optimizer's
foreach or per-tensor step, `load_state_dict`'s copy_, merge and unmerge. Fused optimizer kernels
(`AdamW(fused=True)`) write parameters without bumping it, so a global post-step hook on every
`torch.optim.Optimizer` counts steps as well. Writes through ``tensor.data`` are invisible to both:
after such a write call ``model.train()`` or ``model.eval()``, which clear the caches.

The key costs a few attribute reads; a checksum of the weights would cost a pass over them (the
DoRA inference cache used four float64 sums of A and B per call before).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_optimizer_steps = 0


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


def weights_key(*tensors: torch.Tensor) -> Optional[tuple]:
    """(optimizer steps so far, then version and storage address of each tensor): equal keys mean no
    tracked change in between. None for inference tensors (made under ``torch.inference_mode``),
    which have no version counter: values derived from them must not be cached."""
    if any(t.is_inference() for t in tensors):
        return None
    return (_optimizer_steps, *((t._version, t.data_ptr()) for t in tensors))
