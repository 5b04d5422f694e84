"""`compose`: read adapters, combine them (`combine`, `task_arithmetic`), write a normal adapter.

    compose(["runs/movie", "runs/sms"], [1.0, 1.0], method="svd", rank=16, head="keep:0", out="combo/")

The result is a PEFT-format adapter directory (loralab and PEFT load it; it merges like any
other) plus ``compose.json`` with the method, weights, sources, each layer's relative
Frobenius error and the class names of the head it keeps (when the sources name theirs).
Per-layer ranks go to ``rank_pattern`` and every layer's scale is 1 (``alpha_pattern``),
keyed by the escaped full module path, so both tools rebuild exactly the same layers.

``modules_to_save`` heads (e.g. each task's classifier) are never combined silently: ``head``
must say ``sum`` (Σ w_i·head_i, heads of equal shape), ``keep:N`` (adapter N's head) or
``none``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from loralab.adapters.config import exact_pattern
from loralab.adapters.registry import in_model_order
from loralab.analysis.factors import Factors, adapter_meta, factors
from loralab.commands.compose_config import METHODS
from loralab.compose import combine, task_arithmetic
from loralab.errors import AdapterError, ConfigError
from loralab.io.atomic import atomic_directory, check_new_directory
from loralab.io.peft_format import (
    adapter_tensors,
    peft_config_dict,
    read_adapter_dir,
    split_adapter_tensors,
    write_adapter_dir,
)
from loralab.rundir import COMPOSE_FILE, RunDir, adapter_labels


def adapter_dir(source: str | Path) -> Path:
    """An adapter directory, or a run directory's ``adapter/``; a run of a method that keeps no adapter
    (full, did, said) is refused with what to use instead."""
    run = RunDir(source)
    if not run.is_run():
        return Path(source)
    if run.adapter() is not None:
        return run.adapter()
    if not run.finished():
        raise AdapterError(f"{source} is a run that has not finished; its adapter/ is written when it ends (resume it: "
                           f"`loralab train --config {run.config_file} --resume`).")
    raise AdapterError(f"{source} is a {run.config().get('method')!r} run, which keeps no adapter (only lora and dora "
                       f"runs do); its metrics and parameter counts are in {run.result_file}, and `loralab analyze` "
                       "reads its update (a did or said run's once `loralab merge` has made it a model).")


def head_labels(sources: list, head: Optional[str]) -> Optional[list[str]]:
    """The class names of the head that `combine_heads` kept: adapter N's for 'keep:N', the common ones for
    'sum' (None when they differ or are unknown, and for 'none')."""
    if head is None or head == "none":
        return None
    if head.startswith("keep:"):
        return adapter_labels(adapter_dir(sources[int(head.split(":", 1)[1])]))
    names = [adapter_labels(adapter_dir(s)) for s in sources]
    return names[0] if all(n == names[0] for n in names) else None


def read_source(source: str | Path) -> tuple[dict[str, Factors], dict[str, torch.Tensor], dict]:
    """(factors, modules_to_save tensors by key, adapter_config.json) of one adapter."""
    directory = adapter_dir(source)
    cfg, tensors = read_adapter_dir(directory)
    _, others = split_adapter_tensors(tensors)
    resized = [k for k in others if k.endswith(".base_layer.weight")]
    if resized:
        raise AdapterError(f"{directory} also saves base weights {resized[:2]} (a resized vocabulary); composing "
                           "those is not supported. Combine adapters that keep the base embeddings.")
    return factors(directory), others, adapter_meta(directory)


def check_same_base(metas: list[dict], sources: list) -> None:
    names = {m.get("base_model_name_or_path") for m in metas} - {None}
    if len(names) > 1:
        raise AdapterError(f"these adapters were trained on different base models ({sorted(names)}); an update only "
                           "means something on the model it was trained on. Combine adapters of one base model.")


def combine_heads(heads: list[dict[str, torch.Tensor]], weights: list[float], head: Optional[str]) -> dict:
    """The modules_to_save tensors of the result, as ``head`` says (see the module docstring)."""
    if not any(heads):
        return {}
    if head is None:
        keys = sorted({k.split(".")[0] for h in heads for k in h})
        raise AdapterError(f"the adapters carry modules_to_save modules {keys} (e.g. task heads); say what the result "
                           "keeps with head= (CLI: --head): 'sum' (Σ w_i·head_i), 'keep:N' (adapter N's) or 'none'.")
    if head == "none":
        return {}
    if head.startswith("keep:"):
        index = int(head.split(":", 1)[1])
        if not 0 <= index < len(heads):
            raise AdapterError(f"head='{head}': there are adapters 0..{len(heads) - 1}.")
        return dict(heads[index])
    if head != "sum":
        raise AdapterError(f"head must be 'sum', 'keep:N' or 'none', got {head!r}.")
    shapes = [{k: tuple(v.shape) for k, v in h.items()} for h in heads if h]
    if any(s != shapes[0] for s in shapes):
        raise AdapterError("head='sum' needs heads of the same keys and shapes (same label set); these differ. "
                           "Use 'keep:N' to keep one adapter's head.")
    return {k: sum(w * h[k].double() for h, w in zip(heads, weights) if k in h).float() for k in shapes[0]}


def combined(adapters: list[dict[str, Factors]], weights: list[float], method: str, rank: Optional[int],
             energy: Optional[float], density: float, drop: float, seed: int):
    if method == "cat":
        return combine.cat(adapters, weights), None
    if method == "svd":
        return combine.svd(adapters, weights, rank, energy)
    if method == "ties":
        return task_arithmetic.ties(adapters, weights, density, rank, energy)
    if method == "dare":
        return task_arithmetic.dare(adapters, weights, drop, seed, rank, energy)
    raise ConfigError(f"method must be one of {METHODS}, got {method!r}.")


def adapter_config(result: dict[str, Factors], heads: dict, metas: list[dict]) -> dict:
    """adapter_config.json for composed factors: every layer's rank exact and its scale 1."""
    from loralab.adapters.config import LoraConfig

    ranks = {p: f.rank for p, f in result.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    odd = exact_pattern({p: k for p, k in ranks.items() if k != r})
    modules = sorted({k.rsplit(".", 1)[0] for k in heads})
    cfg = LoraConfig(r=r, alpha=float(r), targets=in_model_order(result), rank_pattern=odd,
                     alpha_pattern={key: float(k) for key, k in odd.items()}, modules_to_save=modules)
    conv1d = any(m.get("fan_in_fan_out") for m in metas)
    tasks = {m.get("task_type") for m in metas}  # kept when every source agrees
    return peft_config_dict(cfg, in_model_order(result), conv1d, metas[0].get("base_model_name_or_path"),
                            tasks.pop() if len(tasks) == 1 else None)


def composed(read: list[tuple], weights: list[float], method: str = "svd", rank: Optional[int] = None,
             energy: Optional[float] = None, head: Optional[str] = None, density: float = 0.2, drop: float = 0.5,
             seed: int = 0) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """The combination of adapters already read (`read_source`), in memory: (adapter_config.json dict, PEFT-keyed
    tensors, {"ranks", "relative_error"})."""
    check_same_base([m for _, _, m in read], [m.get("base_model_name_or_path") for _, _, m in read])
    result, errors = combined([f for f, _, _ in read], list(weights), method, rank, energy, density, drop, seed)
    combine.check_finite(result)
    heads = combine_heads([h for _, h, _ in read], list(weights), head)
    config = adapter_config(result, heads, [m for _, _, m in read])
    modules = {p: {"A": f.A.float().contiguous(), "B": f.B.float().contiguous(), "embedding": f.kind == "embedding"}
               for p, f in result.items()}
    return config, adapter_tensors(modules, heads), {"ranks": {p: f.rank for p, f in result.items()},
                                                      "relative_error": errors or {p: 0.0 for p in result}}


def compose(sources: list, weights: list[float], out: str | Path, method: str = "svd", rank: Optional[int] = None,
            energy: Optional[float] = None, head: Optional[str] = None, density: float = 0.2, drop: float = 0.5,
            seed: int = 0) -> dict:
    """Combine ``sources`` (adapter or run directories) and write the result to ``out`` (new or empty)."""
    out = Path(out)
    check_new_directory(out)
    config, tensors, made = composed([read_source(s) for s in sources], weights, method, rank, energy, head, density,
                                     drop, seed)
    report = {"method": method, "weights": list(weights), "sources": [str(s) for s in sources], "rank": rank,
              "energy": energy, "head": head, **made, "max_relative_error": max(made["relative_error"].values() or [0]),
              "labels": head_labels(sources, head)}
    with atomic_directory(out) as staging:
        write_adapter_dir(staging, config, tensors)
        (staging / COMPOSE_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return report
