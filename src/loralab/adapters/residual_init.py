"""Initialisations that move the principal part of W into the adapter: W keeps the residual.

Both set A and B from W and subtract s·B·A from W, so W + s·B·A — the layer's output — is unchanged:

* PiSSA (Meng et al. 2024, §3): s·B·A = U_r·S_r·V_rᵀ, the top-r singular directions;
* OLoRA (Büyükakyüz 2024): W = Q·R, B = Q[:, :r] (out, r), A = R[:r] (r, in).

Loading such an adapter onto the original base replays the same decomposition (as PEFT does).
"""

from __future__ import annotations

import torch


def _wide(weight: torch.Tensor) -> torch.Tensor:
    return weight.to(torch.promote_types(weight.dtype, torch.float32))


@torch.no_grad()
def init_pissa(layer, name: str) -> None:
    """PiSSA: A = √(S_r/s)·V_rᵀ (r, in), B = U_r·√(S_r/s) (out, r); W ← W − s·B·A."""
    s, r = layer.scaling[name], layer.lora_A[name].shape[0]
    weight = layer.weight_out_in()
    u, sv, vh = torch.linalg.svd(_wide(weight), full_matrices=False)
    root = (sv[:r] / s).sqrt()  # (r,)
    layer.lora_A[name].copy_(root[:, None] * vh[:r])  # (r, in)
    layer.lora_B[name].copy_(u[:, :r] * root[None, :])  # (out, r)
    weight.sub_(layer.delta_weight(name))


@torch.no_grad()
def init_olora(layer, name: str) -> None:
    """OLoRA: B = Q[:, :r], A = R[:r]; W ← W − s·B·A."""
    r, weight = layer.lora_A[name].shape[0], layer.weight_out_in()
    q, upper = torch.linalg.qr(_wide(weight))
    layer.lora_A[name].copy_(upper[:r])
    layer.lora_B[name].copy_(q[:, :r])
    weight.sub_(layer.delta_weight(name))
