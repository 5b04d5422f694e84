"""Evaluation: accuracy and macro-F1 for classification; loss and perplexity for causal LM."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from loralab.adapters.cache import frozen
from loralab.progress import progress as progress_bar
from loralab.train.batching import IGNORE, collate


def autocast(precision: str):
    """bf16 autocast for --precision bf16 (weights, adapters and optimizer state stay fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def macro_f1(predictions: list[int], labels: list[int], num_classes: int) -> float:
    """Mean over classes of F1 = 2·TP / (2·TP + FP + FN); a class absent from both counts as 0."""
    scores = []
    for c in range(num_classes):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / num_classes


@torch.no_grad()
def evaluate(
    model: nn.Module, rows: list[dict], task: str, num_classes: int, pad_id: int, batch_size: int, desc: str = "eval",
    progress: bool = True,
) -> dict[str, float]:
    """Metrics of ``model`` on encoded ``rows`` (see `batching.encode`)."""
    was_training = model.training
    model.eval()
    with frozen(model):  # the weights are constant here: DoRA norms, SAID's θ computed once
        result = _evaluate(model, rows, task, num_classes, pad_id, batch_size, desc, progress)
    model.train(was_training)
    return result


def _evaluate(model, rows, task, num_classes, pad_id, batch_size, desc, progress) -> dict[str, float]:
    total_loss, total_weight = 0.0, 0
    predictions, labels = [], []
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # less padding
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = progress_bar(len(batches), desc, enabled=progress, plain_when_piped=False)
    for batch_ids in batches:
        batch = collate([rows[i] for i in batch_ids], pad_id)
        out = model(**batch)
        if task == "classification":
            total_loss += out.loss.item() * len(batch_ids)
            total_weight += len(batch_ids)
            predictions += out.logits.argmax(-1).tolist()
            labels += batch["labels"].tolist()
        else:
            tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
            total_loss += out.loss.item() * tokens
            total_weight += tokens
        bar.update(1)
    bar.close()
    loss = total_loss / max(total_weight, 1)
    if task == "classification":
        accuracy = sum(p == y for p, y in zip(predictions, labels)) / max(len(labels), 1)
        return {"loss": loss, "accuracy": accuracy, "macro_f1": macro_f1(predictions, labels, num_classes), "n": len(rows)}
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "n": len(rows), "tokens": total_weight}
