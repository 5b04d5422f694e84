"""Evaluation: accuracy and macro-F1 for classification; loss and perplexity for causal LM.

Examples are sorted by length and cut into batches of at most ``max_tokens`` padded tokens (and
``batch_size`` examples), so a batch of long texts is small and a batch of short ones large; a causal
LM's loss comes from `objective.Objective` (chunked: no batch × length × vocabulary logits). Under
torchrun each process evaluates every world-th batch and the totals are gathered, so the metrics are
those of one process on the whole split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from loralab.adapters.cache import frozen
from loralab.progress import progress as progress_bar
from loralab.tasks.batching import collate
from loralab.tasks.objective import Objective
from loralab.train.devices import autocast, to_device
from loralab.train.distributed import gather


@dataclass
class Totals:
    """What the batches of one split add up to (summed over processes before `metrics`)."""

    loss_sum: float = 0.0
    weight: int = 0
    examples: int = 0
    predictions: list = field(default_factory=list)
    labels: list = field(default_factory=list)

    def add(self, other: "Totals") -> "Totals":
        return Totals(self.loss_sum + other.loss_sum, self.weight + other.weight, self.examples + other.examples,
                      self.predictions + other.predictions, self.labels + other.labels)


def macro_f1(predictions: list[int], labels: list[int], num_classes: int) -> float:
    """Mean over classes of F1 = 2·TP / (2·TP + FP + FN); a class absent from both counts as 0."""
    scores = []
    for c in range(num_classes):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / num_classes


def token_batches(rows: list[dict], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices of ``rows`` sorted by length, cut into batches of ≤ ``batch_size`` examples whose padded size
    (examples × longest) is ≤ ``max_tokens`` (a single longer example is a batch of its own)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    batches, current = [], []
    for i in order:
        longest = len(rows[i]["input_ids"])  # sorted: the newest is the longest
        if current and (len(current) == batch_size or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def metrics(totals: Totals, task: str, num_classes: int) -> dict[str, float]:
    loss = totals.loss_sum / max(totals.weight, 1)
    if task == "classification":
        accuracy = sum(p == y for p, y in zip(totals.predictions, totals.labels)) / max(len(totals.labels), 1)
        return {"loss": loss, "accuracy": accuracy, "macro_f1": macro_f1(totals.predictions, totals.labels, num_classes),
                "n": totals.examples}
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "n": totals.examples, "tokens": totals.weight}


@torch.no_grad()
def evaluate(model: nn.Module, rows: list[dict], task: str, num_classes: int, pad_id: int, batch_size: int,
             desc: str = "eval", progress: bool = True, max_tokens: int = 16384, precision: str = "fp32",
             device: torch.device | str = "cpu", objective: Optional[nn.Module] = None,
             rank: int = 0, world: int = 1) -> dict[str, float]:
    """Metrics of ``model`` on encoded ``rows`` (see `batching.encode`); ``objective`` (default: an `Objective`
    of ``model``) is what is called — the trainer passes its DDP/FSDP-wrapped one."""
    was_training = model.training
    model.eval()
    objective = objective or Objective(model, task)
    every = token_batches(rows, batch_size, max_tokens)
    batches = every[rank::world]
    spare = -(-len(every) // world) - len(batches)  # FSDP's forward is a collective: every process runs as many
    totals = Totals()
    bar = progress_bar(len(batches), desc, enabled=progress, plain_when_piped=False)
    with frozen(model), autocast(precision, device):  # weights constant: DoRA norms, SAID's θ computed once
        for index, batch_ids in enumerate(batches + every[:1] * spare):
            batch = to_device(collate([rows[i] for i in batch_ids], pad_id), torch.device(device))
            out = objective(batch["input_ids"], batch["attention_mask"], batch["labels"])
            if index >= len(batches):
                continue  # a spare forward, to keep step with the other processes
            totals.loss_sum += out.loss.item() * out.count
            totals.weight += out.count
            totals.examples += len(batch_ids)
            if out.logits is not None:
                totals.predictions += out.logits.argmax(-1).tolist()
                totals.labels += batch["labels"].tolist()
            bar.update(1)
    bar.close()
    model.train(was_training)
    combined = Totals()
    for part in gather(totals, world):
        combined = combined.add(part)
    return metrics(combined, task, num_classes)
