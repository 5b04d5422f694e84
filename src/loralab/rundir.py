"""The run directory — what `loralab train --out` writes — and the one module that names its files.

A run directory holds::

    config.json       the run's TrainConfig (local paths absolute)          `RunDir.config`
    metrics.jsonl     one JSON record per line: train, eval, analysis        `RunDir.metrics`
    checkpoint/       the last checkpoint (safetensors + checkpoint.json)    `RunDir.checkpoint`
    result.json       written once, when the run ends: a `RunResult`         `RunDir.result`
    adapter/ | model/ | intrinsic/ | head/   what the method saved (`ARTEFACTS`)   `RunDir.saved`
    .lock             while a process writes the run (train/run_dir.py)

Everything else reads and writes these through `RunDir`; a new artefact is a name here and a method
that saves it. The rules that keep runs apart (empty --out, --resume, the lock) are train/run_dir.py's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from loralab.io.atomic import atomic_write_json, readable_json

CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
LOCK_FILE = ".lock"
ADAPTER, MODEL, INTRINSIC, HEAD = "adapter", "model", "intrinsic", "head"
ARTEFACTS = (ADAPTER, MODEL, INTRINSIC, HEAD)  # what a method's `saved_as` may name
COMPOSE_FILE = "compose.json"  # beside a composed adapter: how it was made, and its head's class names


@dataclass
class RunResult:
    """result.json: what a finished run trained, how well, and what it cost."""

    method: str
    model: str
    data: str
    task: str
    labels: list
    config: dict
    trainable_params: int
    total_params: int
    validation: dict
    test: dict
    lora: Optional[dict] = None  # the adapter's LoraConfig (lora, dora)
    subspace: Optional[dict] = None  # {"d", "projection", "full_dim"} (did, said)
    train_examples: int = 0
    steps: int = 0
    epochs_trained: int = 0
    best_epoch: Optional[int] = None
    best_step: Optional[int] = None
    history: list = field(default_factory=list)  # validation records
    wall_time_s: float = 0.0
    peak_memory_mb: Optional[float] = None
    peak_device_memory_mb: Optional[float] = None
    device: str = "cpu"
    world_size: int = 1
    resumed_from_step: Optional[int] = None
    attention: Optional[str] = None
    torch: Optional[str] = None
    extra: dict = field(default_factory=dict)  # anything a newer or older loralab wrote that this one does not know

    @classmethod
    def from_dict(cls, data: dict) -> "RunResult":
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in known and k != "extra"}
        return cls(**kept, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        data = asdict(self)
        return {**{k: v for k, v in data.items() if k != "extra"}, **data["extra"]}


@dataclass(frozen=True)
class RunDir:
    """A run directory at ``path`` (which need not exist yet)."""

    path: Path

    def __init__(self, path):
        object.__setattr__(self, "path", Path(path))

    # ----- names ----------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def result_file(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    def artefact(self, name: str) -> Path:
        if name not in ARTEFACTS:
            raise ValueError(f"unknown run artefact {name!r}; a run holds {ARTEFACTS}")
        return self.path / name

    # ----- reading ----------------------------------------------------------------------------------
    def config(self) -> Optional[dict]:
        """config.json as a dict, or None when missing or not readable."""
        data = readable_json(self.config_file)
        return data if isinstance(data, dict) else None

    def is_run(self) -> bool:
        """A `loralab train --out` directory: its config.json names a training method (a model's does not)."""
        config = self.config()
        return config is not None and isinstance(config.get("method"), str) and "data" in config

    def result(self) -> Optional[RunResult]:
        """result.json of a run that ran to its end, or None (none yet, or not readable)."""
        data = readable_json(self.result_file)
        return RunResult.from_dict(data) if isinstance(data, dict) and "method" in data else None

    def finished(self) -> bool:
        return self.result_file.exists()

    def saved(self) -> Optional[Path]:
        """The artefact directory the method wrote (adapter/, model/ or intrinsic/), or None."""
        return next((self.path / n for n in ARTEFACTS if (self.path / n).is_dir()), None)

    def adapter(self) -> Optional[Path]:
        adapter = self.path / ADAPTER
        return adapter if adapter.is_dir() else None

    def metrics(self) -> list[dict]:
        """metrics.jsonl's records; a line that is not JSON (cut short by a kill) is skipped."""
        records = []
        try:
            lines = self.metrics_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    # ----- writing ----------------------------------------------------------------------------------
    def write_config(self, config: dict) -> Path:
        return atomic_write_json(self.config_file, config)

    def write_result(self, result: RunResult) -> Path:
        return atomic_write_json(self.result_file, result.to_dict())

    @classmethod
    def owning(cls, adapter_dir) -> Optional["RunDir"]:
        """The run whose ``adapter/`` this directory is, or None."""
        adapter_dir = Path(adapter_dir)
        run = cls(adapter_dir.parent)
        return run if adapter_dir.name == ADAPTER and run.is_run() else None


def find_run_or_adapter(source) -> tuple[Optional[RunDir], Path]:
    """(the run, its adapter/ or saved artefact) for a run directory; (the owning run or None, the directory)
    for anything else."""
    run = RunDir(source)
    if run.is_run():
        return run, run.saved() or run.path
    return RunDir.owning(source), Path(source)


def adapter_labels(directory) -> Optional[list[str]]:
    """The class names an adapter's head was trained (or composed) for: a composed adapter's compose.json,
    or the result of the run whose ``adapter/`` this is. PEFT's format has no place for them; None when
    unknown."""
    root = Path(directory)
    kept: Any = None
    if (root / COMPOSE_FILE).exists():
        kept = readable_json(root / COMPOSE_FILE)
        kept = kept.get("labels") if isinstance(kept, dict) else None
    else:
        run = RunDir.owning(root)
        result = run.result() if run else None
        kept = result.labels if result else None
    return kept or None
