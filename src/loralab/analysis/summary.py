"""What an adapter directory holds: config, parameter count and ‖ΔW‖ per module."""

from __future__ import annotations

import os

from loralab.io.peft_format import PREFIX, read_adapter_dir


def adapter_summary(directory: str | os.PathLike) -> dict:
    """Config fields, tensor counts and per-module Frobenius norms ‖ΔW‖_F = s·‖B·A‖_F.

    Works from the files alone (no base model needed), so it also reads PEFT's adapters.
    """
    cfg, tensors = read_adapter_dir(directory)
    modules: dict[str, dict] = {}
    for key in sorted(tensors):
        path = key[len(PREFIX):]
        for suffix, part in ((".lora_A.weight", "A"), (".lora_B.weight", "B"),
                             (".lora_embedding_A", "A"), (".lora_embedding_B", "B")):
            if path.endswith(suffix):
                modules.setdefault(path[: -len(suffix)], {})[part] = tensors[key]
    per_module = {}
    for path, parts in modules.items():
        a, b = parts["A"].float(), parts["B"].float()
        s = cfg.scaling_for(path)
        per_module[path] = {"rank": a.shape[0], "scaling": s, "delta_norm": float(s * (b @ a).norm())}
    return {
        "config": cfg.to_dict(),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "tensors": len(tensors),
        "modules": per_module,
    }
