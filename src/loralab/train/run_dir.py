"""The run directory rules: a run is never overwritten, mixed with another or resumed under a different config.

* a new run needs ``--out`` to be new or empty; ``--overwrite`` clears it once the new run's data, model
  and config have loaded without error (a refused run leaves the old one untouched);
* ``--resume`` needs a checkpoint in ``--out`` and a config that matches the one the run started
  with in everything that changes the result (`TrainConfig.differences`);
* a run that fails before writing any checkpoint leaves no directory behind (`discard_if_empty`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from loralab.errors import ConfigError
from loralab.train.checkpoint import has_checkpoint
from loralab.train.config import TrainConfig

CONFIG_FILE = "config.json"


def check_out(cfg: TrainConfig) -> Path:
    """Check ``cfg.out`` against the rules above without changing anything; return it as a Path."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {cfg.out} is a file; give a directory for the run (it is created if missing).")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"--out {cfg.out}: {parent} is a file, so the run directory cannot be made there.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {cfg.out}: cannot write in {parent}; choose a directory you can write to.")
    if cfg.resume:
        check_resume(cfg, out)
    elif out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        held = sorted(p.name for p in out.iterdir())[:6]
        raise ConfigError(f"--out {cfg.out} is not empty (it holds {held}); give a new --out, add --resume to "
                          "continue the run there, or --overwrite to delete it and start again.")
    return out


def check_resume(cfg: TrainConfig, out: Path) -> None:
    if not has_checkpoint(out / "checkpoint"):
        raise ConfigError(f"--resume: {out} has no checkpoint to resume from (is --out spelled right?). "
                          "To start a new run there, drop --resume.")
    saved_path = out / CONFIG_FILE
    if not saved_path.exists():
        raise ConfigError(f"--resume: {out} has a checkpoint but no {CONFIG_FILE}; it was not written by "
                          "`loralab train`. Start a new run with a new --out.")
    saved = TrainConfig.from_dict(json.loads(saved_path.read_text()))
    differences = saved.differences(cfg)
    if differences:
        listed = "; ".join(f"--{k.replace('_', '-')} was {a!r}, now {b!r}" for k, a, b in
                           ((k, v[0], v[1]) for k, v in differences.items()))
        raise ConfigError(f"--resume: the run in {out} was started with a different config ({listed}). Resume with "
                          "the original values, or start a new run with a new --out.")


def create_out(cfg: TrainConfig, out: Path) -> bool:
    """Make ``out`` ready (clearing it for --overwrite); True when this call created the directory."""
    created = not out.exists()
    if cfg.overwrite and out.is_dir():
        shutil.rmtree(out)
        created = True
    out.mkdir(parents=True, exist_ok=True)
    return created


def discard_if_empty(out: Path, created: bool) -> None:
    """Remove a run directory this process created when no checkpoint or result made it in."""
    if created and out.is_dir() and not has_checkpoint(out / "checkpoint") and not (out / "result.json").exists():
        shutil.rmtree(out, ignore_errors=True)
