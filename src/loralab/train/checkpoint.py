"""Training checkpoints as safetensors + JSON, written atomically, loaded without pickle.

A checkpoint is ``checkpoint.json`` (step, data position, scheduler and optimizer
hyper-parameters, best-so-far bookkeeping, the config) naming a tensor file
``checkpoint-<step>.safetensors`` with:

* ``param.<name>`` — every trainable parameter;
* ``best.<name>`` — the trainable parameters of the best validation epoch so far;
* ``opt.<i>.<key>`` — AdamW state of the i-th trainable parameter (``step``, ``exp_avg``, ``exp_avg_sq``);
* ``rng.torch`` — the global torch RNG state (dropout).

The tensor file is written first, then the JSON is renamed into place, then older
tensor files are removed: a kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from loralab.errors import TrainingError
from loralab.io.atomic import atomic_save_tensors, atomic_write_text

STATE_FILE = "checkpoint.json"


def save_checkpoint(
    directory: Path,
    named_params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scheduler,
    best: Optional[dict[str, torch.Tensor]],
    state: dict,
) -> Path:
    """Write the checkpoint for ``state['step']`` and drop older tensor files."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{n}": p.detach().clone() for n, p in named_params}
    for n, value in (best or {}).items():
        tensors[f"best.{n}"] = value
    opt_state = optimizer.state_dict()
    for index, param_state in opt_state["state"].items():
        for key, value in param_state.items():
            tensors[f"opt.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    name = f"checkpoint-{state['step']}.safetensors"
    atomic_save_tensors(directory / name, tensors)
    record = dict(state)
    record["tensor_file"] = name
    record["param_names"] = [n for n, _ in named_params]
    record["optimizer_groups"] = opt_state["param_groups"]
    record["scheduler"] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    atomic_write_text(directory / STATE_FILE, json.dumps(record, indent=1))
    for old in directory.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return directory / STATE_FILE


def load_checkpoint(
    directory: Path,
    named_params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scheduler,
) -> tuple[dict, Optional[dict[str, torch.Tensor]]]:
    """Restore parameters, optimizer, scheduler and RNG; return (state, best parameters or None)."""
    record = json.loads((directory / STATE_FILE).read_text())
    names = [n for n, _ in named_params]
    if record["param_names"] != names:
        raise TrainingError(
            f"checkpoint in {directory} was written for other trainable parameters "
            f"({len(record['param_names'])} vs {len(names)}); resume with the same method and targets, or use a new --out."
        )
    tensors = load_file(str(directory / record["tensor_file"]))
    with torch.no_grad():
        for name, param in named_params:
            param.copy_(tensors[f"param.{name}"])
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, field = key.split(".", 2)
            opt_state.setdefault(int(index), {})[field] = value
    groups = record["optimizer_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    scheduler.load_state_dict({**scheduler.state_dict(), **record["scheduler"]})
    torch.set_rng_state(tensors["rng.torch"])
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return record, best


def has_checkpoint(directory: Path) -> bool:
    return (directory / STATE_FILE).exists()
