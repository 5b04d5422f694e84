"""The rank benchmark's predictors on the dense pilot's units (`dense_pilot`), before any training, against the
planted truth: rank k in the last layer's value projection, 0 in every other query/value projection.

The predictors are `analysis.rank_predictors`' (the benchmark's primary, ``gradient_effective_rank``, among them),
computed as `commands.probe.task_probe` computes them for a classification task — at the pretrained weights, on the
first 256 training texts in batches of 8 — but with the pilot's loss: the mean squared error between the model's
pooled output and the teacher's (no head to fit). The null keeps each text's base output and gives it another text's
planted change, t'(x) = f₀(x) + (t − f₀)(x′), 3 shuffles (`shuffled_changes`): targets as far from the model as the
real ones, unrelated to the input. (Shuffling the targets themselves would put every null target as far away as two
texts' features, a far larger gradient than the real one's: no signal would ever clear it.)

    python -c "from loralab.experiments.dense_probe import run; run()"
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from loralab.experiments import dense_pilot as dp
from loralab.io.atomic import atomic_write_json

EXAMPLES, BATCH, SHUFFLES = 256, 8, 3


class PooledMSE(nn.Module):
    """``forward(**batch)`` → an object whose ``loss`` is mean((pooled output − labels)²): the dense pilot's loss in
    the form `rank_predictors.gradient_moment` calls (``labels``: the teacher's pooled outputs, batch × hidden)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, labels: torch.Tensor, **inputs) -> SimpleNamespace:
        return SimpleNamespace(loss=((self.encoder(**inputs).pooler_output - labels) ** 2).mean())


def probe_batches(tokenizer, texts: list[str], wanted: torch.Tensor) -> list[dict]:
    batches = []
    for start in range(0, len(texts), BATCH):
        encoded = tokenizer(texts[start:start + BATCH], padding=True, truncation=True, max_length=dp.MAX_LENGTH,
                            return_tensors="pt")
        batches.append({**encoded, "labels": wanted[start:start + BATCH]})
    return batches


def shuffled_changes(batches: list[dict], base: torch.Tensor, seed: int) -> list[dict]:
    """The batches with each text's target replaced by its base output ``base`` (N × hidden, the batches' texts in
    order) plus the planted change t − f₀ of another text, permuted across all of them."""
    generator = torch.Generator().manual_seed(seed)
    change = torch.cat([b["labels"] for b in batches]) - base
    change = change[torch.randperm(len(change), generator=generator)]
    out, start = [], 0
    for b in batches:
        n = len(b["labels"])
        out.append({**b, "labels": base[start:start + n] + change[start:start + n]})
        start += n
    return out


def probe(k: int, root: Path, seed: int = 0) -> dict:
    """{"layers": every predictor per query/value projection, "task": their task-level values, "planted": the
    planted layer's name, "truth": {layer: planted rank}}."""
    from loralab import models
    from loralab.analysis import rank_predictors as rp

    started = time.time()
    torch.manual_seed(seed)
    found = dp.targets(k, root)
    texts, wanted, base = dp.splits()["train"][:EXAMPLES], found["train"][:EXAMPLES], found["base_train"][:EXAMPLES]
    model, tokenizer = models.load(dp.MODEL, "classification", num_labels=2)
    model.eval()
    planted = dp.planted_layer(model)
    loss = PooledMSE(getattr(model, model.base_model_prefix))
    modules = {n: m for n, m in model.named_modules() if n.endswith(("attention.self.query", "attention.self.value"))}
    model.requires_grad_(False)
    for module in modules.values():
        module.weight.requires_grad_(True)
    batches = probe_batches(tokenizer, texts, wanted)
    recorders = {p: rp.LayerRecorder(m) for p, m in modules.items()}
    moments, sums = rp.gradient_moment(loss, modules, batches, recorders)
    for rec in recorders.values():
        rec.remove()
    nulls = [rp.gradient_moment(loss, modules, shuffled_changes(batches, base, seed + 1 + i))[0] for i in range(SHUFFLES)]
    layers = rp.layer_predictors(recorders, moments, nulls, sums)
    return {"layers": layers, "task": rp.task_predictors(layers), "primary": rp.PRIMARY, "planted": planted,
            "truth": {p: k if p == planted else 0 for p in modules}, "seconds": time.time() - started}


def run(root: str = "runs/dense_pilot", out: str = "docs/study/rank/dense_probe.json") -> dict:
    """Probe every pilot unit, write ``out`` and return it."""
    report = {"design": __doc__.split("\n\n")[1], "units": {f"dense-k{k}": probe(k, Path(root)) for k in dp.KS}}
    atomic_write_json(Path(out), report)
    for name, found in report["units"].items():
        at = found["layers"][found["planted"]]
        print(name, found["task"][found["primary"]], {key: at[key] for key in ("gradient_effective_rank",
                                                                                "gradient_null_rank")})
    return report
