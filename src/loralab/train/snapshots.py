"""Snapshots: the trainable parameters at chosen optimizer steps, kept after the run (``loralab train
--snapshot-steps 13,26``), to measure how a quantity moves along training — e.g. learning–forgetting curves with
checkpoints along each run (Biderman et al. 2024, §4), not only its end.

    OUT/snapshots/step-13.safetensors    # {parameter name: tensor} of every trainable parameter after step 13

A run's own checkpoint is overwritten as it goes (it exists to resume); a snapshot is never touched again. A run
resumed past a step keeps the snapshot it wrote before. `runs.load_snapshot` puts one back onto the run's model.

This module is a callback the command line adds; the training loop does not import it, so asking for snapshots
does not change what a run computes (nor the study's cache key, `experiments.launcher.code_version`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from loralab.errors import ConfigError
from loralab.train.callbacks import Callback

FOLDER = "snapshots"


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / FOLDER / f"step-{step}.safetensors"


def kept_steps(run_dir: str | Path) -> list[int]:
    """The steps a run kept snapshots of, in order."""
    return sorted(int(p.stem.split("-")[1]) for p in (Path(run_dir) / FOLDER).glob("step-*.safetensors"))


def parse_steps(text: str) -> tuple[int, ...]:
    """``"13,26"`` → (13, 26): positive optimizer steps, sorted, without repeats."""
    try:
        steps = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--snapshot-steps takes optimizer steps separated by commas, e.g. 13,26; got {text!r}.") from None
    if not steps or steps[0] < 1:
        raise ConfigError(f"--snapshot-steps takes optimizer steps ≥ 1, e.g. 13,26; got {text!r}.")
    return tuple(steps)


class Snapshots(Callback):
    """After optimizer step k ∈ ``steps``, write every trainable parameter to `snapshot_path` (atomically; under
    FSDP every process gathers its shards and the main one writes)."""

    def __init__(self, steps: Sequence[int]):
        self.steps = set(steps)

    def on_step(self, trainer, loss: float) -> None:
        from loralab.io.atomic import atomic_save_tensors
        from loralab.train.distributed import full_tensor

        step = trainer.state.step
        if step not in self.steps:
            return
        tensors = {name: full_tensor(p.detach()) for name, p in trainer.named}
        if trainer.main:
            path = snapshot_path(trainer.out, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_tensors(path, tensors)
