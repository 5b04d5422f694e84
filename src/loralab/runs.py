"""Using finished runs: evaluate a run or an adapter, merge an adapter into a plain HF model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

import loralab as ll
from loralab import data as datasets
from loralab import models
from loralab.errors import DataError
from loralab.train.batching import encode
from loralab.train.config import TrainConfig
from loralab.train.evaluate import evaluate


def read_run(run: str | Path) -> TrainConfig:
    path = Path(run) / "config.json"
    if not path.exists():
        raise DataError(f"{run} is not a run directory (no config.json); give the --out of a `loralab train` run.")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def load_trained(model: str, data: str, adapter: Optional[str | Path], full_model: Optional[str | Path] = None):
    """(model with the adapter loaded, tokenizer, dataset labels, task)."""
    task, labels, _ = datasets.read_all(data)
    source = str(full_model) if full_model else model
    net, tokenizer = models.load(source, task, num_labels=len(labels) or None)
    if adapter is not None:
        ll.load_adapter(net, adapter)
    return net, tokenizer, labels, task


def load_run(run: str | Path):
    """(config, model ready to evaluate, tokenizer, labels, task) of a finished run."""
    cfg = read_run(run)
    run = Path(run)
    if cfg.method == "full":
        return cfg, *load_trained(cfg.model, cfg.data, None, full_model=run / "model")
    if cfg.method in ("did", "said"):
        from loralab.subspace.intrinsic import IntrinsicModel

        net, tokenizer, labels, task = load_trained(cfg.model, cfg.data, None)
        return cfg, IntrinsicModel.load(net, run / "intrinsic"), tokenizer, labels, task
    return cfg, *load_trained(cfg.model, cfg.data, run / "adapter")


def evaluate_adapter(
    model: str, data: str, adapter: Optional[str | Path], seed: int = 0, max_eval: Optional[int] = None,
    max_length: int = 128, batch_size: int = 64, full_model: Optional[str | Path] = None,
) -> dict:
    """Validation and test metrics of a model (plus adapter) on a dataset's seeded splits."""
    net, tokenizer, labels, task = load_trained(model, data, adapter, full_model)
    return _evaluate(net, tokenizer, labels, task, data, seed, max_eval, max_length, batch_size)


def evaluate_run(run: str | Path) -> dict:
    """Re-evaluate a finished run on its own validation and test splits."""
    cfg, net, tokenizer, labels, task = load_run(run)
    return _evaluate(net, tokenizer, labels, task, cfg.data, cfg.seed, cfg.max_eval, cfg.max_length, cfg.eval_batch_size)


def _evaluate(net, tokenizer, labels, task, data, seed, max_eval, max_length, batch_size) -> dict:
    results = {}
    for split in ("validation", "test"):
        rows = encode(datasets.load(data, split, seed, max_eval), tokenizer, max_length)
        results[split] = evaluate(net, rows, task, len(labels), tokenizer.pad_token_id, batch_size, desc=split)
    return results


def merge_run(run: str | Path, out: str | Path) -> Path:
    """Write a run's model with its adapter merged in as a plain HF model directory (safetensors)."""
    cfg, net, tokenizer, labels, task = load_run(run)
    if cfg.method in ("did", "said"):
        net = net.merge_into_model()
    elif cfg.method != "full":
        net = ll.merge_and_unload(net)
    if labels:
        net.config.id2label = dict(enumerate(labels))
        net.config.label2id = {name: i for i, name in enumerate(labels)}
    out = Path(out)
    with torch.no_grad():
        net.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
