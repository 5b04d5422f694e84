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
    base_model = adapter_meta(directory).get("base_model_name_or_path")
    residual = cfg.init in RESIDUAL_INITS  # PiSSA/OLoRA: ΔW = s·(B·A − B₀·A₀), not given by the factors
    fs = factors(directory, residual_ok=residual)
    dora = {path: f for path, f in fs.items() if f.magnitude is not None and not residual}
    base = base_weights(model or base_model or "",
                                 layer_specs(dora)) if dora else {}
    per_module = {}
    for path, f in fs.items():
        norm = float(delta_weight(f, base[path]).norm()) if path in dora else low_rank_norm(f.A, f.B, f.scale)
        per_module[path] = {"kind": f.kind, "rank": f.rank, "scaling": f.scale, "dora": f.magnitude is not None,
                            "delta_norm": None if residual else norm}
    notes = {"note": f"init {cfg.init}: W keeps the residual W − s·B₀·A₀, so ΔW = s·(B·A − B₀·A₀) is not "
                     "shown (delta_norm null)"} if residual else {}
    return {**notes,
        "base_model": base_model,
        "config": cfg.to_dict(),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "tensors": len(tensors),
        "modules": per_module,
    }


def summary_text(summary: dict, where: str) -> str:
    """`adapter_summary` as `loralab info` prints it: the config in a few lines, then one row per module."""
    cfg, modules = summary["config"], summary["modules"]
    kind = "DoRA" if cfg["dora"] else "LoRA"
    scale = "alpha/√r" if cfg["rslora"] else "alpha/r"
    lines = [f"{where}: {kind}, {len(modules)} adapted modules, {summary['parameters']:,} parameters in "
             f"{summary['tensors']} tensors",
             f"r {cfg['r']}, alpha {cfg['alpha']:g} (scale {scale}), dropout {cfg['dropout']:g}, init {cfg['init']}"
             + "".join(f"; {name} {len(cfg[name])} entries" for name in ("rank_pattern", "alpha_pattern") if cfg[name])]
    if summary.get("base_model"):
        lines.append(f"base model: {summary['base_model']}")
    if cfg.get("modules_to_save"):
        lines.append("trained fully and saved with the adapter: " + ", ".join(cfg["modules_to_save"]))
    if "note" in summary:
        lines.append(summary["note"])
    width = max(len("module"), *(len(path) for path in modules))
    lines += ["", f"{'module':<{width}}  {'kind':<9} {'rank':>4} {'scale':>7} {'‖ΔW‖_F':>9}"]
    for path, m in modules.items():
        norm = "–" if m["delta_norm"] is None else f"{m['delta_norm']:.4g}"
        lines.append(f"{path:<{width}}  {m['kind']:<9} {m['rank']:>4} "
                     f"{m['scaling']:>7.4g} {norm:>9}")
    return "\n".join(lines)
