"""Benchmark v2's dense-target planted units (docs/study/rank/README.md, "Benchmark v2: dense units"): the design
pilot 3 (`dense_pilot3`) found rank-sensitive, run as benchmark units — four planted ranks, two seeds, a bracketed
learning rate per unit.

Unit dense-k (k ∈ {4, 16, 32, 64}): the teacher is MiniLM-L6 with a rank-k update ΔW = σ·U·Vᵀ (flat spectrum,
σ = ‖W‖₂, generator 3000 + k) in its last layer's value projection; a text's target t(x) is the teacher's pooled
output (384 numbers) over the pooled short texts, 10,000 train / 500 validation / 500 test (`dense_pilot.targets`,
`dense_pilot.splits`). The student f is MiniLM plus a trained output bias b (384 numbers, starting at the r = 0
rung's exact solution below) plus
LoRA r on every query and value projection (s = α/r, α = `rank_benchmark.ALPHA`), trained on the mean squared error
‖f(x) + b − t(x)‖²/384 with AdamW (weight decay 0, batch 16, fp32, one thread), dropout off (the model stays in eval
mode), the lr warmed up over 30 steps and decayed linearly to 0 at 1,500 steps, validated every 100 steps and
stopped after 3 validations without a better loss (at least 300 steps); the response is the best checkpoint's test
MSE. r = 0 is the bias alone, solved exactly: b = the mean of t − f₀ over the training texts. Rungs r ∈ {0, 1, 4,
16, 64}, seeds 0 and 1 (and 2 where the two-seed r90 interval spans more than ×4); the lr per unit at r = 4, seed 0,
from {3e-4, 1e-3, 3e-3} extended ×3 past an edge (up to twice).

    python -c "from loralab.experiments.dense_units import run; run()"

Runs are kept in ``docs/study/rank/dense_runs.jsonl`` (one line per run, named with `version`) and read back from
it, so the benchmark resumes from git.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import torch

from loralab.errors import ConfigError
from loralab.experiments import dense_pilot as dp
from loralab.experiments import rank_benchmark as rb
from loralab.experiments.launcher import LocalExecutor, code_version, machine_kind, without_docstrings
from loralab.io.atomic import atomic_write_json
from loralab.progress import progress

KS, RANKS, SEEDS, THIRD_SEED = (64, 32, 16, 4), (1, 4, 16, 64), (0, 1), 2
GRID, GRID_RANK, EXTENSIONS, WIDE = (3e-4, 1e-3, 3e-3), 4, 2, 4.0
MIN_STEPS, MAX_STEPS, EVAL_STEPS, PATIENCE, WARMUP = 300, 1500, 100, 3, 30


class BiasedEncoder(torch.nn.Module):
    """The encoder's pooled output plus a trained bias b (hidden,), starting at ``start``: f(x) + b, (batch, hidden)."""

    def __init__(self, encoder: torch.nn.Module, start: torch.Tensor):
        super().__init__()
        self.encoder, self.bias = encoder, torch.nn.Parameter(start.detach().clone())

    def forward(self, **inputs) -> torch.Tensor:
        return self.encoder(**inputs).pooler_output + self.bias


def lr_factor(step: int) -> float:
    """Linear warm-up over `WARMUP` steps, then linear decay to 0 at `MAX_STEPS`."""
    return min((step + 1) / WARMUP, max(0.0, (MAX_STEPS - step) / (MAX_STEPS - WARMUP)))


def mse(model: torch.nn.Module, tokenizer, texts: list[str], wanted: torch.Tensor) -> float:
    """Mean over texts and features of (model(x) − t(x))², no gradients."""
    outputs = []
    with torch.no_grad():
        for i in range(0, len(texts), dp.EVAL_BATCH):
            outputs.append(model(**tokenizer(texts[i:i + dp.EVAL_BATCH], padding=True, truncation=True,
                                             max_length=dp.MAX_LENGTH, return_tensors="pt")))
    return float(((torch.cat(outputs) - wanted) ** 2).mean())


def student(r: int, shift: torch.Tensor) -> tuple[BiasedEncoder, object]:
    """MiniLM's encoder with LoRA r on query/value (frozen when r = 0) under an output bias starting at ``shift``
    (hidden,); in eval mode (dropout off) for training too."""
    import loralab as ll
    from loralab import models

    model, tokenizer = models.load(dp.MODEL, "classification", num_labels=2)
    encoder = getattr(model, model.base_model_prefix)
    if r:
        ll.inject(encoder, ll.LoraConfig(r=r, alpha=rb.ALPHA, targets=["query", "value"]))
    else:
        encoder.requires_grad_(False)
    return BiasedEncoder(encoder, shift).eval(), tokenizer


def train_rung(k: int, r: int, seed: int, lr: float, root: str) -> dict:
    """One run (r ≥ 1): bias and LoRA r at ``lr`` distilling the rank-k teacher; curve, best validation, test MSE."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    wanted, texts = dp.targets(k, Path(root)), dp.splits()
    model, tokenizer = student(r, exact_shift(wanted))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    lengths = [len(ids) for ids in tokenizer(texts["train"], truncation=True, max_length=dp.MAX_LENGTH)["input_ids"]]
    rng, started, step, curve, best, kept, waited = random.Random(seed), time.time(), 0, [], math.inf, None, 0
    while step < MAX_STEPS and waited < PATIENCE:
        for batch in dp.length_batches(lengths, rng):
            encoded = tokenizer([texts["train"][i] for i in batch], padding=True, truncation=True,
                                max_length=dp.MAX_LENGTH, return_tensors="pt")
            ((model(**encoded) - wanted["train"][batch]) ** 2).mean().backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % EVAL_STEPS == 0:
                curve.append([step, mse(model, tokenizer, texts["validation"], wanted["validation"])])
                if curve[-1][1] < best:
                    best, waited, kept = curve[-1][1], 0, [p.detach().clone() for p in trainable]
                elif step >= MIN_STEPS:
                    waited += 1
            if step >= MAX_STEPS or waited >= PATIENCE:
                break
    with torch.no_grad():
        for p, value in zip(trainable, kept):
            p.copy_(value)  # the run's own parameters, back to its best checkpoint
    return {"k": k, "r": r, "seed": seed, "lr": lr, "validation_loss": best,
            "test_loss": mse(model, tokenizer, texts["test"], wanted["test"]),
            "best_step": min(curve, key=lambda c: c[1])[0], "steps": step,
            "stopped": "patience" if waited >= PATIENCE else "step cap", "curve": curve, "seconds": time.time() - started}


def exact_shift(found: dict[str, torch.Tensor]) -> torch.Tensor:
    """The bias b minimising the training MSE of f₀ + b: the mean of t − f₀ over the training texts, (hidden,)."""
    return (found["train"] - found["base_train"]).mean(0)


def bias_alone(k: int, root: Path) -> dict[str, float]:
    """The r = 0 rung, exact: MSE of f₀ + `exact_shift` per held-out split."""
    found = dp.targets(k, root)
    shift = exact_shift(found)
    return {f"{s}_loss": float(((found[f"base_{s}"] + shift - found[s]) ** 2).mean()) for s in ("validation", "test")}


def version() -> str:
    """12 hex digits of the training path's `code_version` and the code of `dense_pilot` (targets, texts, batches)
    and of this module: a run's key."""
    trees = (ast.dump(without_docstrings(ast.parse(Path(f).read_text()))) for f in (dp.__file__, __file__))
    return hashlib.sha256((code_version() + "".join(trees)).encode()).hexdigest()[:12]


Job = tuple[int, int, int, float]  # (k, r, seed, lr)


def run_name(job: Job) -> str:
    k, r, seed, lr = job
    return f"dense-k{k}-r{r}-s{seed}-lr{lr:g}"


class Runs:
    """Finished runs, read from and appended to a JSONL archive (``{"run", "machine", "result"}`` a line, the run
    named with `version`); the rest trained by ``train`` (a `train_rung`) on ``executor`` (a `launcher` executor:
    worker processes here, or Ray tasks)."""

    def __init__(self, archive: Path, root: Path, executor, train: Callable[..., dict] = train_rung):
        self.archive, self.root, self.executor, self.train, self.version = archive, root, executor, train, version()
        self.done = {}
        lines = archive.read_text().splitlines() if archive.exists() else []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                self.done[record["run"]] = record["result"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{archive}, line {number}: not a run record ({line[:80]!r}); remove the line "
                                  "(its run will be trained again).") from None

    def key(self, job: Job) -> str:
        return f"{run_name(job)}-{self.version}"

    def get(self, jobs: list[Job], desc: str) -> dict[Job, dict]:
        todo = [job for job in dict.fromkeys(jobs) if self.key(job) not in self.done]
        for k in sorted({job[0] for job in todo}):
            dp.targets(k, self.root)  # once, before the workers read it
        bar = progress(total=len(todo), desc=desc)
        futures, as_completed = self.executor.submit_calls(self.train, [(*job, str(self.root)) for job in todo])
        job_of = {id(future): job for future, job in zip(futures, todo)}
        for future in as_completed(futures):
            job = job_of[id(future)]
            self.done[self.key(job)] = future.result()
            self.archive.parent.mkdir(parents=True, exist_ok=True)
            with open(self.archive, "a") as handle:
                handle.write(json.dumps({"run": self.key(job), "machine": machine_kind(),
                                         "result": self.done[self.key(job)]}) + "\n")
            bar.update(1)
        bar.close()
        return {job: self.done[self.key(job)] for job in jobs}


def widened(grid: list[float], best: float) -> list[float] | None:
    """The grid extended ×3 past ``best`` when it sits at an edge and extensions are left; else None."""
    if best not in (grid[0], grid[-1]) or len(grid) >= len(GRID) + EXTENSIONS:
        return None
    return [float(f"{grid[0] / 3:.3g}")] + grid if best == grid[0] else grid + [float(f"{grid[-1] * 3:.3g}")]


def choose_lrs(runs: Runs, ks: tuple = KS) -> dict[int, dict]:
    """{k: {"lr": lowest validation MSE at r = `GRID_RANK`, seed 0, "grid": {lr: validation MSE}, "at_edge"}}."""
    grids, chosen = {k: list(GRID) for k in ks}, {}
    while grids:
        found = runs.get([(k, GRID_RANK, 0, lr) for k, grid in grids.items() for lr in grid], "dense units: lr grid")
        for k, grid in list(grids.items()):
            losses = {lr: found[(k, GRID_RANK, 0, lr)]["validation_loss"] for lr in grid}
            best = min(losses, key=losses.get)
            grids[k] = widened(grid, best)
            if grids[k] is None:
                chosen[k] = {"lr": best, "grid": losses, "at_edge": best in (grid[0], grid[-1])}
                del grids[k]
    return chosen


def per_seed_losses(k: int, root: Path, found: dict[Job, dict], lr: float, seeds: tuple) -> dict[int, dict[int, float]]:
    """{rung: {seed: test MSE}}, r = 0 the exact bias (the same for every seed)."""
    head = bias_alone(k, root)["test_loss"]
    return {0: {s: head for s in seeds}, **{r: {s: found[(k, r, s, lr)]["test_loss"] for s in seeds} for r in RANKS}}


def summary(k: int, root: Path, found: dict[Job, dict], lr: float, seeds: tuple) -> dict:
    """A unit's seed-mean losses, r90 with its seed-bootstrap interval, per-seed r90, gain share, convergence."""
    per_seed = per_seed_losses(k, root, found, lr, seeds)
    means = rb.seed_means(per_seed)
    low, high = rb.bootstrap_needed_rank(per_seed)
    runs = [found[(k, r, s, lr)] for r in RANKS for s in seeds]
    return {"k": k, "lr": lr, "seeds": len(seeds), "test_loss": {str(r): v for r, v in per_seed.items()},
            "mean_test_loss": {str(r): v for r, v in means.items()}, "needed_rank": rb.needed_rank(means),
            "interval": [low, high], "needed_rank_per_seed": rb.per_seed_needed_rank(per_seed),
            "relative_gain": (means[0] - min(means.values())) / means[0],
            "kept": (means[0] - min(means.values())) / means[0] >= rb.MIN_GAIN,
            "at_step_cap": sorted(f"r{v['r']}-s{v['seed']}" for v in runs if v["best_step"] >= MAX_STEPS),
            "seconds": sum(v["seconds"] for v in runs)}


def needs_third_seed(found: dict) -> bool:
    """Amendment 6's rule: the two-seed r90 interval spans more than ×`WIDE` (or has no end)."""
    low, high = found["interval"]
    return low is None or high is None or high / low > WIDE


def run(root: str = "runs/dense_pilot", out: str = "docs/study/rank/dense_units.json",
        archive: str = "docs/study/rank/dense_runs.jsonl", workers: int = 2, executor=None) -> dict:
    """Tune, train the ladders (seeds 0 and 1, then seed 2 where needed), write ``out`` and return it. The runs
    train on ``executor`` (`launcher.make_executor`), else ``workers`` processes here."""
    runs, root_path = Runs(Path(archive), Path(root), executor or LocalExecutor(workers)), Path(root)
    chosen = choose_lrs(runs)
    jobs = [(k, r, s, chosen[k]["lr"]) for s in SEEDS for k in KS for r in RANKS]
    found = runs.get(jobs, "dense units: ladders")
    units = {k: summary(k, root_path, found, chosen[k]["lr"], SEEDS) for k in KS}
    third = [k for k in KS if needs_third_seed(units[k])]
    seeds = SEEDS + (THIRD_SEED,)
    found.update(runs.get([(k, r, THIRD_SEED, chosen[k]["lr"]) for k in third for r in RANKS], "dense units: seed 2"))
    units.update({k: summary(k, root_path, found, chosen[k]["lr"], seeds) for k in third})
    report = {"design": __doc__.split("\n\n")[1], "version": runs.version,
              "units": {f"dense-k{k}": {**units[k], "grid": {f"{x:g}": v for x, v in chosen[k]["grid"].items()},
                                        "lr_at_edge": chosen[k]["at_edge"], "bias_alone": bias_alone(k, root_path)}
                        for k in KS}}
    atomic_write_json(Path(out), report)
    print(json.dumps({n: {key: u[key] for key in ("lr", "needed_rank", "interval", "relative_gain")}
                      for n, u in report["units"].items()}))
    return report
