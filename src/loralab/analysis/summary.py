"""What an adapter directory holds: config, parameter count and the real ‖ΔW‖ of each layer."""

from __future__ import annotations

import os
from typing import Optional

import torch

from loralab.adapters.config import RESIDUAL_INITS
from loralab.analysis.factors import adapter_meta, base_weights, delta_weight, factors, layer_specs
from loralab.io.peft_format import read_adapter_dir


def low_rank_norm(A: torch.Tensor, B: torch.Tensor, scale: float) -> float:
    """‖s·B·A‖_F from the factors alone: ‖BA‖_F² = tr((BᵀB)(AAᵀ)), two (r, r) Gram matrices."""
    a, b = A.double(), B.double()
    return float(abs(scale) * torch.trace((b.T @ b) @ (a @ a.T)).clamp_min(0).sqrt())


def adapter_summary(directory: str | os.PathLike, model: Optional[str] = None) -> dict:
    """Config fields, tensor counts and per-layer rank, scale and ‖ΔW‖_F.

    LoRA layers need no base model (‖s·B·A‖_F from the factors). DoRA's change is
    m/‖W0 + sBA‖ ⊙ (W0 + sBA) − W0, so its layers read W0 from ``model`` (default: the
    adapter's ``base_model_name_or_path``). Works for loralab's and PEFT's adapters alike.
    """
    cfg, tensors = read_adapter_dir(directory)
    residual = cfg.init in RESIDUAL_INITS  # PiSSA/OLoRA: ΔW = s·(B·A − B₀·A₀), not given by the factors
    fs = factors(directory, residual_ok=residual)
    dora = {path: f for path, f in fs.items() if f.magnitude is not None and not residual}
    base = base_weights(model or adapter_meta(directory).get("base_model_name_or_path") or "",
                                 layer_specs(dora)) if dora else {}
    per_module = {}
    for path, f in fs.items():
        norm = float(delta_weight(f, base[path]).norm()) if path in dora else low_rank_norm(f.A, f.B, f.scale)
        per_module[path] = {"kind": f.kind, "rank": f.rank, "scaling": f.scale, "dora": f.magnitude is not None,
                            "delta_norm": None if residual else norm}
    notes = {"note": f"init {cfg.init}: W keeps the residual W − s·B₀·A₀, so ΔW = s·(B·A − B₀·A₀) is not "
                     "shown (delta_norm null)"} if residual else {}
    return {**notes,
        "config": cfg.to_dict(),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "tensors": len(tensors),
        "modules": per_module,
    }
