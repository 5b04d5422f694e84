"""Pilot 3 of the dense-target planted units: pilot 1 (`dense_pilot`) with the two changes its result called for.
Not part of the registered rank benchmark; `dense_pilot`'s module stays as it ran, since its code keys its archived
runs.

Pilot 1's units (dense-k4, dense-k32: the same teachers, texts and targets, `dense_pilot.targets`) and student (LoRA
r on every query and value projection, s = α/r, MSE to the teacher's pooled output, AdamW, batch 16, fp32), changed in
two ways: (1) a trained output bias b (384 numbers, zero at the start) is added to the student's pooled output at every
rung, and r = 0 is that bias alone — the rung that absorbs the shared shift, as the benchmark's head-only rung would;
(2) the lr warms up over 30 steps and then decays linearly to 0 at the 1,500-step cap (pilot 1 kept it constant and
stalled on a noise floor); validation every 100 steps, stopped after 3 validations without a better loss (at least
300 steps), the best checkpoint's test MSE the response. lr 1e-3 for every rung — pilot 1's bracketed optimum at r = 8
(not re-bracketed under the new schedule: a stated limit). Rungs r ∈ {0, 1, 4, 16, 64}; seed 0. Prediction, fixed
before the runs (docs/study/rank/README.md): rank-sensitive when dense-k32's r90 ≥ 16 and dense-k4's ≤ 4, each unit's
best rung lowering the bias-alone loss by ≥ 5%.

    python -c "from loralab.experiments.dense_pilot3 import run; run()"
"""

from __future__ import annotations

import ast
import concurrent.futures
import hashlib
import json
import math
import random
import time
from pathlib import Path

import torch

from loralab.experiments import dense_pilot as dp
from loralab.experiments import lm_pilot
from loralab.experiments import rank_benchmark as rb
from loralab.experiments.launcher import machine_kind, without_docstrings
from loralab.io.atomic import atomic_write_json
from loralab.progress import progress

KS, RANKS, LR = (32, 4), (0, 1, 4, 16, 64), 1e-3  # dense-k32 first: the unit the prediction turns on
MIN_STEPS, MAX_STEPS, EVAL_STEPS, PATIENCE, WARMUP = 300, 1500, 100, 3, 30


class BiasedEncoder(torch.nn.Module):
    """The encoder's pooled output plus a trained bias b (hidden,): f(x) + b."""

    def __init__(self, encoder: torch.nn.Module, hidden: int):
        super().__init__()
        self.encoder, self.bias = encoder, torch.nn.Parameter(torch.zeros(hidden))

    def forward(self, **inputs) -> torch.Tensor:
        return self.encoder(**inputs).pooler_output + self.bias


def predict(student: BiasedEncoder, tokenizer, texts: list[str]) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for i in range(0, len(texts), dp.EVAL_BATCH):
            rows.append(student(**tokenizer(texts[i:i + dp.EVAL_BATCH], padding=True, truncation=True,
                                            max_length=dp.MAX_LENGTH, return_tensors="pt")))
    return torch.cat(rows)


def lr_factor(step: int) -> float:
    """Linear warm-up over `WARMUP` steps, then linear decay to 0 at `MAX_STEPS`."""
    return min((step + 1) / WARMUP, max(0.0, (MAX_STEPS - step) / (MAX_STEPS - WARMUP)))


def train_rung(k: int, r: int, root: str, seed: int = 0) -> dict:
    """One run: the output bias (and for r ≥ 1 LoRA r) distilling the rank-k teacher; curve, best validation and test
    MSE."""
    import loralab as ll
    from loralab import models

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    wanted, texts = dp.targets(k, Path(root)), dp.splits()
    model, tokenizer = models.load(dp.MODEL, "classification", num_labels=2)
    encoder = getattr(model, model.base_model_prefix)
    if r:
        ll.inject(encoder, ll.LoraConfig(r=r, alpha=rb.ALPHA, targets=["query", "value"]))
    else:
        encoder.requires_grad_(False)
    student = BiasedEncoder(encoder, wanted["train"].shape[1])
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    lengths = [len(ids) for ids in tokenizer(texts["train"], truncation=True, max_length=dp.MAX_LENGTH)["input_ids"]]
    rng, started, step, curve = random.Random(seed), time.time(), 0, []
    best, best_state, waited = math.inf, None, 0
    while step < MAX_STEPS and waited < PATIENCE:
        for batch in dp.length_batches(lengths, rng):
            student.train()
            encoded = tokenizer([texts["train"][i] for i in batch], padding=True, truncation=True,
                                max_length=dp.MAX_LENGTH, return_tensors="pt")
            ((student(**encoded) - wanted["train"][batch]) ** 2).mean().backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % EVAL_STEPS == 0:
                student.eval()
                value = float(((predict(student, tokenizer, texts["validation"]) - wanted["validation"]) ** 2).mean())
                curve.append([step, value])
                if value < best:
                    best, waited, best_state = value, 0, [p.detach().clone() for p in trainable]
                elif step >= MIN_STEPS:
                    waited += 1
            if step >= MAX_STEPS or waited >= PATIENCE:
                break
    with torch.no_grad():
        for p, kept in zip(trainable, best_state):
            p.copy_(kept)  # the run's own parameters, restored to its best checkpoint
    student.eval()
    test = float(((predict(student, tokenizer, texts["test"]) - wanted["test"]) ** 2).mean())
    return {"k": k, "r": r, "lr": LR, "seed": seed, "validation_loss": best, "test_loss": test,
            "best_step": min(curve, key=lambda c: c[1])[0], "steps": step,
            "stopped": "patience" if waited >= PATIENCE else "step cap", "curve": curve, "seconds": time.time() - started}


def version() -> str:
    """12 hex digits of `dense_pilot.pilot_version` (the training path and pilot 1's code) and this module's code."""
    tree = without_docstrings(ast.parse(Path(__file__).read_text()))
    return hashlib.sha256((dp.pilot_version() + ast.dump(tree)).encode()).hexdigest()[:12]


def train_all(jobs: list[tuple[int, int]], archive: Path, root: Path, workers: int) -> dict[tuple, dict]:
    """{(k, r): result}, read from ``archive`` (JSONL, one run a line, keyed by name and `version`) or trained
    ``workers`` at a time and appended to it."""
    key = {job: f"dense3-k{job[0]}-r{job[1]}-s0-{version()}" for job in jobs}
    done = {}
    if archive.exists():
        done = {rec["run"]: rec["result"] for rec in map(json.loads, archive.read_text().splitlines())}
    todo = [job for job in jobs if key[job] not in done]
    for k in sorted({job[0] for job in todo}):
        dp.targets(k, root)  # once, before the workers read it
    bar = progress(total=len(todo), desc="dense pilot 3")
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(train_rung, *job, str(root)): job for job in todo}
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            done[key[job]] = future.result()
            archive.parent.mkdir(parents=True, exist_ok=True)
            with open(archive, "a") as handle:
                handle.write(json.dumps({"run": key[job], "machine": machine_kind(), "result": done[key[job]]}) + "\n")
            bar.update(1)
    bar.close()
    return {job: done[key[job]] for job in jobs}


def run(root: str = "runs/dense_pilot", out: str = "docs/study/rank/dense_pilot3.json",
        archive: str = "docs/study/rank/dense_pilot3_runs.jsonl", workers: int = 2) -> dict:
    """Train pilot 3 (runs read back from ``archive`` when there), write ``out`` and return it."""
    found = train_all([(k, r) for k in KS for r in RANKS], Path(archive), Path(root), workers)
    report = {"design": __doc__.split("\n\n")[1], "version": version(), "units": {}}
    for k in KS:
        rungs = {r: found[(k, r)] for r in RANKS}
        losses = {r: v["test_loss"] for r, v in rungs.items()}
        report["units"][f"dense-k{k}"] = {
            "k": k, "lr": LR, "test_loss": losses, "best_step": {r: v["best_step"] for r, v in rungs.items()},
            "stopped": {r: v["stopped"] for r, v in rungs.items()},
            "seconds": sum(v["seconds"] for v in rungs.values()), **lm_pilot.summary(losses)}
    report["verdict"] = dp.verdict({u["k"]: u for u in report["units"].values()})
    atomic_write_json(Path(out), report)
    print(json.dumps({n: {key: u[key] for key in ("r90", "gain_share", "stopped")} for n, u in report["units"].items()}),
          report["verdict"])
    return report
