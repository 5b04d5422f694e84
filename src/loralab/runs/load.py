"""Finished runs (and any PEFT adapter on a model) loaded, evaluated and merged into plain Hugging Face models."""


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
from loralab.io.peft_format import CONFIG_FILE, read_adapter_dir, split_adapter_tensors
from loralab.methods import get_method
from loralab.rundir import RunDir, adapter_labels
from loralab.tasks.batching import encode
from loralab.train.config import TrainConfig
from loralab.train.devices import resolve_device
from loralab.train.evaluate import evaluate
from loralab.train.run_dir import lock_holder


def read_run(run: str | Path) -> TrainConfig:
    path = RunDir(run).config_file
    holder = lock_holder(Path(run)) if Path(run).is_dir() else None
    if not path.exists() and holder:
        raise DataError(f"{run} is still training ({holder}): it has just started.")
    if not path.exists():
        if (Path(run) / CONFIG_FILE).exists():
            raise DataError(f"{run} is an adapter directory, not a run: give its run directory (the --out of "
                            f"`loralab train`). `loralab eval --model MODEL --adapter {run} --data DATA` evaluates "
                            "an adapter on its own.")
        raise DataError(f"{run} is not a run directory (no config.json); give the --out of a `loralab train` run.")
    cfg = TrainConfig.from_dict(json.loads(path.read_text()))
    method = get_method(cfg.method)
    if not RunDir(run).artefact(method.saved_as).exists():
        if holder:
            raise DataError(f"{run} is still training ({holder}): its {method.saved_as}/ is written when it finishes.")
        raise DataError(f"{run} has no {method.saved_as}/: the run did not finish (resume it with "
                        f"`loralab train ... --out {run} --resume`).")
    return cfg


def load_run(run: str | Path):
    """(config, trained model ready to evaluate, tokenizer, labels, task) of a finished run."""
    cfg = read_run(run)
    task, labels, _ = datasets.read_all(cfg.data)
    net, tokenizer = get_method(cfg.method).load(cfg, Path(run), task, len(labels) or None)
    return cfg, net, tokenizer, labels, task


def load_snapshot(run: str | Path, step: int):
    """`load_run` with the trainable parameters as they were after optimizer ``step`` (kept by ``loralab train
    --snapshot-steps``, `train.snapshots`): (config, model, tokenizer, labels, task)."""
    from safetensors.torch import load_file

    from loralab.train.snapshots import kept_steps, snapshot_path

    path = snapshot_path(run, step)
    if not path.is_file():
        raise ConfigError(f"{run} has no snapshot of step {step} (kept: {kept_steps(run) or 'none'}); train with "
                          f"--snapshot-steps {step} to keep one.")
    cfg, model, tokenizer, labels, task = load_run(run)
    found = model.load_state_dict(load_file(str(path)), strict=False)
    if found.unexpected_keys:
        raise ConfigError(f"{path}: parameters the run's model does not have: {found.unexpected_keys[:3]}.")
    return cfg, model, tokenizer, labels, task


def evaluate_adapter(model: str, data: str, adapter: Optional[str | Path], seed: int = 0,
                     max_eval: Optional[int] = None, max_length: int = 128, batch_size: int = 64) -> dict:
    """Validation and test metrics of a model (plus a PEFT-format adapter) on a dataset's seeded splits."""
    task, labels, _ = datasets.read_all(data)
    if task == "classification" and not models.has_classification_head(model) and \
            (adapter is None or not read_adapter_dir(adapter)[0].modules_to_save):
        raise DataError(f"model {model!r} has no trained classification head (its checkpoint is "
                        f"{models.architectures(model) or 'a bare encoder'}), so the head would be random and the metrics "
                        "chance. Evaluate a run (`loralab eval RUN`), a merged model, or --adapter DIR with a trained head.")
    net, tokenizer = models.load(model, task, num_labels=len(labels) or None)
    if adapter is not None:
        ll.load_adapter(net, adapter)
    return evaluate_splits(net, tokenizer, labels, task, datasets.load_splits(data, seed, 0, max_eval), max_length,
                           batch_size)


def evaluate_run(run: str | Path, data: Optional[str] = None, seed: Optional[int] = None,
                 max_eval: Optional[int] = None) -> dict:
    """Re-evaluate a finished run: on its own splits, or on ``data`` / ``seed`` / ``max_eval`` when given.

    Another dataset must have the run's task and, for classification, the run's label names.
    """
    cfg, net, tokenizer, labels, task = load_run(run)
    if data is not None and data != cfg.data:
        other_task, other_labels, _ = datasets.read_all(data)
        if other_task != task:
            raise DataError(f"--data {data} is {describe_task(other_task, other_labels)}; run {run} was trained on "
                            f"{describe_task(task, labels)}. Evaluate on data of the run's kind.")
        if task == "classification" and other_labels != labels:
            raise DataError(f"--data {data} has labels {other_labels}; run {run} was trained for labels {labels}. "
                            "Evaluate on a dataset with the same labels.")
    own_splits = data is None or data == cfg.data
    splits = datasets.load_splits(data or cfg.data, cfg.seed if seed is None else seed, 0,
                                  cfg.max_eval if max_eval is None else max_eval,
                                  cfg.val_data if own_splits else None, cfg.test_data if own_splits else None)
    # evaluated as it was trained (precision, batches), so a run's own test metrics reproduce
    return evaluate_splits(net, tokenizer, labels, task, splits, cfg.max_length, cfg.eval_batch_size, cfg.eval_tokens,
                           cfg.precision)


def describe_task(task: str, labels: list[str]) -> str:
    return f"classification data with labels {labels}" if task == "classification" else "prompt/response data"


def evaluate_splits(net, tokenizer, labels, task, splits: dict, max_length: int, batch_size: int = 64,
                    max_tokens: int = 16384, precision: str = "fp32") -> dict:
    """Validation and test metrics of ``net`` on ``splits`` (`data.load_splits`), on this machine's device."""
    device = resolve_device("auto")
    net.to(device)
    results = {}
    for split in ("validation", "test"):
        rows = encode(splits[split], tokenizer, max_length)
        results[split] = evaluate(net, rows, task, len(labels), tokenizer.pad_token_id, batch_size, desc=split,
                                  max_tokens=max_tokens, precision=precision, device=device)
    return results


def check_merge_out(run: Path, out: Path, kind: str = "run") -> None:
    """The merged model goes to a new (or empty) directory outside the run (or adapter directory)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a new directory for the merged model.")
    resolved_run, resolved_out = run.resolve(), out.resolve()
    if resolved_out == resolved_run or resolved_run in resolved_out.parents or resolved_out in resolved_run.parents:
        raise ConfigError(f"--out {out} is the {kind} directory {run}, inside it or above it; merging there would mix "
                          f"the merged model with the {kind}'s files. Give a directory outside the {kind}.")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; give a new directory for the merged model (nothing was written).")


def merge_run(run: str | Path, out: str | Path) -> Path:
    """Write a run's model with its update merged in as a plain HF model directory (safetensors).

    The model is written to a temporary directory next to ``out`` and renamed into place.
    """
    run, out = Path(run), Path(out)
    check_merge_out(run, out)
    cfg, net, tokenizer, labels, task = load_run(run)
    return save_merged(get_method(cfg.method).merge(net), tokenizer, labels, out)


def merge_adapter(model: str, adapter: str | Path, out: str | Path, labels: Optional[list[str]] = None) -> Path:
    """``model`` with a PEFT-format ``adapter`` merged in, as a plain HF model directory (see `adapter_task`
    for the task and label names); written like `merge_run`."""
    adapter, out = Path(adapter), Path(out)
    check_merge_out(adapter, out, kind="adapter")
    net, tokenizer, labels, _ = model_with_adapter(model, adapter, labels)
    return save_merged(net, tokenizer, labels, out)


def save_merged(net, tokenizer, labels: list[str], out: Path) -> Path:
    """Write a merged model (label names in its config) through a temporary directory renamed to ``out``."""
    if labels:
        net.config.id2label = dict(enumerate(labels))
        net.config.label2id = {name: i for i, name in enumerate(labels)}
    with atomic_directory(out) as staging, torch.no_grad():
        net.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return out


def model_task(model: str) -> tuple[Optional[str], list[str]]:
    """("classification", label names), ("causal_lm", []) or (None, []) from a model directory's architectures."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models.resolve(model))
    architectures = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classification", [config.id2label[i] for i in range(config.num_labels)]
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal_lm", []
    return None, []


def adapter_task(model: str, adapter: str | Path, labels: Optional[list[str]]) -> tuple[str, list[str]]:
    """(task, label names) for ``model`` plus a PEFT-format ``adapter``: a causal LM when the adapter says
    so (task_type CAUSAL_LM) or carries no head on a causal LM; else a classifier whose label count is
    the adapter's head's (the smallest output size among its saved head weights: the output layer), named
    by ``labels``, the names the adapter keeps (`rundir.adapter_labels`: a run's adapter, a composed one), the model's
    own label names, or LABEL_0, LABEL_1, … as Hugging Face names them."""
    cfg, tensors = read_adapter_dir(adapter)
    heads = {name.split(".")[-1] for name in cfg.modules_to_save}
    head_sizes = [t.shape[0] for key, t in split_adapter_tensors(tensors)[1].items()
                  if t.dim() == 2 and heads & set(key.split(".")[:-1])]
    task_type = json.loads((Path(adapter) / CONFIG_FILE).read_text()).get("task_type")
    own_task, own_labels = model_task(model)
    if task_type == "CAUSAL_LM" or (not head_sizes and own_task == "causal_lm"):
        return "causal_lm", []
    if not head_sizes and own_task != "classification":
        raise DataError(f"adapter {adapter} carries no classification head (modules_to_save) and model {model!r} has "
                        "none of its own: there is nothing to predict labels with. Give the model the adapter was "
                        "trained on with its head, or a run directory.")
    count = min(head_sizes) if head_sizes else len(own_labels)
    if labels is not None and len(labels) != count:
        raise ConfigError(f"--labels names {len(labels)} labels; the classification head has {count}.")
    saved = adapter_labels(adapter)
    if labels is None and saved is not None and len(saved) == count:
        return "classification", saved
    return "classification", labels or (own_labels if len(own_labels) == count else [f"LABEL_{i}" for i in range(count)])


def model_with_adapter(model: str, adapter: str | Path, labels: Optional[list[str]] = None):
    """(``model`` with ``adapter`` merged in, tokenizer, label names, task)."""
    task, names = adapter_task(model, adapter, labels)
    net, tokenizer = models.load(model, task, num_labels=len(names) or None)
    ll.load_adapter(net, adapter)
    return ll.merge_and_unload(net), tokenizer, names, task


