"""Training checkpoints as safetensors + JSON, written atomically, loaded without pickle.

A checkpoint is ``checkpoint.json`` (step, data position, scheduler and optimizer
hyper-parameters, best-so-far bookkeeping, the config) naming a tensor file
``checkpoint-<step>.safetensors`` with:

* ``param.<name>`` — every trainable parameter;
* ``best.<name>`` — the trainable parameters of the best validation epoch so far;
* ``opt.<i>.<key>`` — AdamW state of the i-th trainable parameter (``step``, ``exp_avg``, ``exp_avg_sq``);
* ``rng.torch`` (and ``rng.cuda`` on a GPU) — the global torch RNG state (dropout).

The tensor file is written first, then the JSON is renamed into place, then older
tensor files are removed: a kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from loralab.errors import TrainingError
from loralab.io.atomic import atomic_save_tensors, atomic_write_text
from loralab.train.devices import set_rng_state
from loralab.train.distributed import full_state, full_tensor, like

STATE_FILE = "checkpoint.json"


def save_checkpoint(
    directory: Path,
    named_params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scheduler,
    best: Optional[dict[str, torch.Tensor]],
    state: dict,
    rng: dict[str, torch.Tensor],
    write: bool = True,
) -> Path:
    """Write the checkpoint for ``state['step']`` and drop older tensor files.

    Under FSDP every process calls this (the sharded tensors are gathered whole, a collective) and only
    the one with ``write`` writes.
    """
    tensors = {f"param.{n}": full_tensor(p.detach()).clone() for n, p in named_params}
    for n, value in (best or {}).items():
        tensors[f"best.{n}"] = full_tensor(value)
    opt_state = full_state(optimizer.state_dict())
    for index, param_state in opt_state["state"].items():
        for key, value in param_state.items():
            tensors[f"opt.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors.update(rng)
    name = f"checkpoint-{state['step']}.safetensors"
    if not write:
        return directory / STATE_FILE
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(directory / name, {k: v.cpu() for k, v in tensors.items()})
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
    device: Optional[torch.device] = None,
) -> tuple[dict, Optional[dict[str, torch.Tensor]]]:
    """Restore parameters, optimizer, scheduler and RNG; return (state, best parameters or None).
    Tensors go to each parameter's device and layout (FSDP shards)."""
    record = json.loads((directory / STATE_FILE).read_text())
    names = [n for n, _ in named_params]
    if record["param_names"] != names:
        raise TrainingError(
            f"checkpoint in {directory} was written for other trainable parameters "
            f"({len(record['param_names'])} vs {len(names)}); resume with the same method and targets, or use a new --out."
        )
    name = record.get("tensor_file")
    if not isinstance(name, str) or not re.fullmatch(r"checkpoint-\d+\.safetensors", name):
        raise TrainingError(f"{directory / STATE_FILE} names {name!r} as its tensor file; a checkpoint's tensors are "
                            "checkpoint-<step>.safetensors in the same directory. The checkpoint is damaged: start "
                            "a new run (--overwrite).")
    tensors = load_file(str(directory / name))
    params = dict(named_params)
    with torch.no_grad():
        for n, param in named_params:
            param.copy_(like(param, tensors[f"param.{n}"]))
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, field = key.split(".", 2)
            param = params[names[int(index)]]
            opt_state.setdefault(int(index), {})[field] = like(param, value) if value.shape == param.shape else value
    groups = record["optimizer_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    scheduler.load_state_dict({**scheduler.state_dict(), **record["scheduler"]})
    set_rng_state(tensors, device or torch.device("cpu"))
    best = {k[len("best."):]: like(params[k[len("best."):]], v) for k, v in tensors.items() if k.startswith("best.")}
    return record, best or None


def prune_checkpoint(directory: Path) -> None:
    """Remove a finished run's checkpoint (--save-total-limit 0): the run keeps its trained model or adapter and
    result, and can no longer be resumed."""
    if directory.is_dir():
        shutil.rmtree(directory)


def has_checkpoint(directory: Path) -> bool:
    return (directory / STATE_FILE).exists()
