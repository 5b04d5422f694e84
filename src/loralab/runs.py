"""Using finished runs: evaluate a run or an adapter, merge a run into a plain HF model directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

import loralab as ll
from loralab import data as datasets
from loralab import models
from loralab.errors import ConfigError, DataError
from loralab.io.atomic import atomic_directory
from loralab.io.peft_format import CONFIG_FILE
from loralab.methods import get_method
from loralab.train.batching import encode
from loralab.train.config import TrainConfig
from loralab.train.evaluate import evaluate


def read_run(run: str | Path) -> TrainConfig:
    path = Path(run) / "config.json"
    if not path.exists():
        if (Path(run) / CONFIG_FILE).exists():
            raise DataError(f"{run} is an adapter directory, not a run: give its run directory (the --out of "
                            f"`loralab train`). `loralab eval --model MODEL --adapter {run} --data DATA` evaluates "
                            "an adapter on its own.")
        raise DataError(f"{run} is not a run directory (no config.json); give the --out of a `loralab train` run.")
    cfg = TrainConfig.from_dict(json.loads(path.read_text()))
    method = get_method(cfg.method)
    if not (Path(run) / method.saved_as).exists():
        raise DataError(f"{run} has no {method.saved_as}/: the run did not finish (resume it with "
                        f"`loralab train ... --out {run} --resume`).")
    return cfg


def load_run(run: str | Path):
    """(config, trained model ready to evaluate, tokenizer, labels, task) of a finished run."""
    cfg = read_run(run)
    task, labels, _ = datasets.read_all(cfg.data)
    net, tokenizer = get_method(cfg.method).load(cfg, Path(run), task, len(labels) or None)
    return cfg, net, tokenizer, labels, task


def evaluate_adapter(model: str, data: str, adapter: Optional[str | Path], seed: int = 0,
                     max_eval: Optional[int] = None, max_length: int = 128, batch_size: int = 64) -> dict:
    """Validation and test metrics of a model (plus a PEFT-format adapter) on a dataset's seeded splits."""
    task, labels, _ = datasets.read_all(data)
    net, tokenizer = models.load(model, task, num_labels=len(labels) or None)
    if adapter is not None:
        ll.load_adapter(net, adapter)
    return evaluate_splits(net, tokenizer, labels, task, data, seed, max_eval, max_length, batch_size)


def evaluate_run(run: str | Path, data: Optional[str] = None, seed: Optional[int] = None,
                 max_eval: Optional[int] = None) -> dict:
    """Re-evaluate a finished run: on its own splits, or on ``data`` / ``seed`` / ``max_eval`` when given.

    Another dataset must have the run's task and, for classification, the run's label names.
    """
    cfg, net, tokenizer, labels, task = load_run(run)
    if data is not None and data != cfg.data:
        other_task, other_labels, _ = datasets.read_all(data)
        if other_task != task or (task == "classification" and other_labels != labels):
            raise DataError(f"--data {data} has task {other_task} with labels {other_labels}; run {run} was trained "
                            f"for {task} with labels {labels}. Evaluate on a dataset with the same labels.")
    return evaluate_splits(net, tokenizer, labels, task, data or cfg.data, cfg.seed if seed is None else seed,
                           cfg.max_eval if max_eval is None else max_eval, cfg.max_length, cfg.eval_batch_size)


def evaluate_splits(net, tokenizer, labels, task, data, seed, max_eval, max_length, batch_size) -> dict:
    results = {}
    for split in ("validation", "test"):
        rows = encode(datasets.load(data, split, seed, max_eval), tokenizer, max_length)
        results[split] = evaluate(net, rows, task, len(labels), tokenizer.pad_token_id, batch_size, desc=split)
    return results


def check_merge_out(run: Path, out: Path) -> None:
    """The merged model goes to a new (or empty) directory outside the run."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a new directory for the merged model.")
    resolved_run, resolved_out = run.resolve(), out.resolve()
    if resolved_out == resolved_run or resolved_run in resolved_out.parents or resolved_out in resolved_run.parents:
        raise ConfigError(f"--out {out} is the run directory {run}, inside it or above it; merging there would mix the "
                          "merged model with the run's files. Give a directory outside the run.")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; give a new directory for the merged model (nothing was written).")


def merge_run(run: str | Path, out: str | Path) -> Path:
    """Write a run's model with its update merged in as a plain HF model directory (safetensors).

    The model is written to a temporary directory next to ``out`` and renamed into place.
    """
    run, out = Path(run), Path(out)
    check_merge_out(run, out)
    cfg, net, tokenizer, labels, task = load_run(run)
    net = get_method(cfg.method).merge(net)
    if labels:
        net.config.id2label = dict(enumerate(labels))
        net.config.label2id = {name: i for i, name in enumerate(labels)}
    with atomic_directory(out) as staging, torch.no_grad():
        net.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return out
