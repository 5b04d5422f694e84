"""A pilot of planted units with a dense target: does a planted rank-k update set the needed rank when the student
sees the teacher's features, not labels? Not part of the registered rank benchmark — it decides whether benchmark v2
should add a regression (distillation) objective to the training path, which would re-key every archived run.

Units dense-k4 and dense-k32: the teacher is MiniLM with a rank-k update ΔW = σ·U·Vᵀ (`rank_units.planted_update`,
flat spectrum, σ = ‖W‖₂) in the value projection of its last layer; the target of a text is the teacher's pooled
output t(x) (384 numbers, `rank_units.pooled_outputs`), over the pooled short texts (`rank_units.pooled_texts`: the
first 10,000 train, the next 500 validate, the next 500 test). The student is MiniLM plus LoRA r on every query and
value projection (s = α/r, `rank_benchmark.ALPHA`), trained on the mean squared error ‖f(x) − t(x)‖²/384 with AdamW
(batch 16, 30 warm-up steps, then a constant lr), fp32, validated every 100 steps, stopped after 3 validations
without a better loss (300 to 1,200 steps); the response is the best checkpoint's test MSE. r = 0 is the base model
untrained. The lr is chosen per unit at r = 8 from {3e-4, 1e-3, 3e-3}, extended by ×3 past an edge (up to twice),
then used for every rung r ∈ {1, 2, 4, 8, 16, 32, 64}; seed 0. Prediction, fixed before the runs
(docs/study/rank/README.md): the design is rank-sensitive when dense-k32's r90 ≥ 16 and dense-k4's r90 ≤ 4, each
unit's best rung lowering L_0 by ≥ 5%.

    python -c "from loralab.experiments.dense_pilot import run; run()"
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

from loralab.experiments import lm_pilot, rank_units
from loralab.experiments import rank_benchmark as rb
from loralab.experiments.launcher import code_version, machine_kind, without_docstrings
from loralab.io.atomic import atomic_write_json
from loralab.progress import progress

KS, RANKS, GRID, GRID_RANK = (4, 32), (1, 2, 4, 8, 16, 32, 64), (3e-4, 1e-3, 3e-3), 8
TRAIN, EVAL, BATCH, MAX_LENGTH, EVAL_BATCH = 10_000, 500, 16, 48, 100
MIN_STEPS, MAX_STEPS, EVAL_STEPS, PATIENCE, WARMUP, EXTENSIONS = 300, 1200, 100, 3, 30, 2
MODEL = "minilm"


def splits() -> dict[str, list[str]]:
    texts = rank_units.pooled_texts()
    return {"train": texts[:TRAIN], "validation": texts[TRAIN:TRAIN + EVAL], "test": texts[TRAIN + EVAL:TRAIN + 2 * EVAL]}


def planted_layer(model) -> str:
    names = [n for n, _ in model.named_modules() if n.endswith("attention.self.value")]
    if not names:
        raise rank_units.no_value_layers(MODEL, 0)
    return names[-1]


def features(model, tokenizer, texts: list[str]) -> torch.Tensor:
    return rank_units.pooled_outputs(model, tokenizer, texts, MAX_LENGTH, EVAL_BATCH)


def targets(k: int, root: Path) -> dict[str, torch.Tensor]:
    """{split: the rank-k teacher's pooled outputs (N × 384)} and {"base_<split>": the untrained model's}; computed
    once, kept as ``<root>/dense-k<k>.safetensors`` (the base model's, shared, as ``<root>/dense-base.safetensors``)."""
    from safetensors.torch import load_file, save_file

    from loralab import models

    path, base_path = root / f"dense-k{k}.safetensors", root / "dense-base.safetensors"
    if path.exists():
        return {**load_file(str(base_path)), **load_file(str(path))}
    torch.manual_seed(0)
    model, tokenizer = models.load(MODEL, "classification", num_labels=2)
    model.eval()
    texts = splits()
    root.mkdir(parents=True, exist_ok=True)
    if not base_path.exists():
        save_file({f"base_{s}": features(model, tokenizer, t).contiguous() for s, t in texts.items()}, str(base_path))
    module = model.get_submodule(planted_layer(model))  # the freshly loaded teacher is this function's own
    with torch.no_grad():
        module.weight.add_(rank_units.planted_update(module.weight, k, rank_units.PLANTED_STRENGTH,
                                                     torch.Generator().manual_seed(3000 + k)))
    save_file({s: features(model, tokenizer, t).contiguous() for s, t in texts.items()}, str(path))
    return targets(k, root)


def length_batches(lengths: list[int], rng: random.Random) -> list[list[int]]:
    """One epoch's batches: the indices shuffled, sorted by length within windows of 50 batches (less padding, the
    same examples per step), the batches shuffled."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 50 * BATCH
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lengths.__getitem__)
        batches += [chunk[i:i + BATCH] for i in range(0, len(chunk), BATCH)]
    rng.shuffle(batches)
    return batches


def mse(encoder, tokenizer, texts: list[str], wanted: torch.Tensor) -> float:
    """Mean over texts and the 384 features of (f(x) − t(x))²."""
    with torch.no_grad():
        return float(((features_of(encoder, tokenizer, texts) - wanted) ** 2).mean())


def features_of(encoder, tokenizer, texts: list[str]) -> torch.Tensor:
    rows = []
    for i in range(0, len(texts), EVAL_BATCH):
        batch = tokenizer(texts[i:i + EVAL_BATCH], padding=True, truncation=True, max_length=MAX_LENGTH,
                          return_tensors="pt")
        rows.append(encoder(**batch).pooler_output.float())
    return torch.cat(rows)


def train_rung(k: int, r: int, lr: float, root: str, seed: int = 0) -> dict:
    """One run: LoRA r at ``lr`` distilling the rank-k teacher; its curve, best validation and test MSE."""
    import loralab as ll
    from loralab import models

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    wanted, texts = targets(k, Path(root)), splits()
    model, tokenizer = models.load(MODEL, "classification", num_labels=2)
    encoder = getattr(model, model.base_model_prefix)
    ll.inject(encoder, ll.LoraConfig(r=r, alpha=rb.ALPHA, targets=["query", "value"]))
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / WARMUP))
    lengths = [len(ids) for ids in tokenizer(texts["train"], truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    rng, started, step, curve = random.Random(seed), time.time(), 0, []
    best, best_state, waited = math.inf, None, 0
    while step < MAX_STEPS and waited < PATIENCE:
        for batch in length_batches(lengths, rng):
            encoder.train()
            encoded = tokenizer([texts["train"][i] for i in batch], padding=True, truncation=True,
                                max_length=MAX_LENGTH, return_tensors="pt")
            loss = ((encoder(**encoded).pooler_output - wanted["train"][batch]) ** 2).mean()
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % EVAL_STEPS == 0:
                encoder.eval()
                value = mse(encoder, tokenizer, texts["validation"], wanted["validation"])
                curve.append([step, value])
                if value < best:
                    best, waited = value, 0
                    best_state = [p.detach().clone() for p in trainable]
                elif step >= MIN_STEPS:
                    waited += 1
            if step >= MAX_STEPS or waited >= PATIENCE:
                break
    with torch.no_grad():
        for p, kept in zip(trainable, best_state):
            p.copy_(kept)  # the run's own parameters, restored to its best checkpoint
    encoder.eval()
    return {"k": k, "r": r, "lr": lr, "seed": seed, "validation_loss": best,
            "test_loss": mse(encoder, tokenizer, texts["test"], wanted["test"]), "best_step": min(curve, key=lambda c: c[1])[0],
            "steps": step, "stopped": "patience" if waited >= PATIENCE else "step cap", "curve": curve,
            "seconds": time.time() - started}


def run_name(k: int, r: int, lr: float, seed: int = 0) -> str:
    return f"dense-k{k}-r{r}-lr{lr:g}-s{seed}"


def pilot_version() -> str:
    """12 hex digits of the training path's `code_version` and this module's code: a run's key."""
    tree = without_docstrings(ast.parse(Path(__file__).read_text()))
    return hashlib.sha256((code_version() + ast.dump(tree)).encode()).hexdigest()[:12]


class Runs:
    """Finished runs, read from and appended to a JSONL archive (one ``{"run", "machine", "result"}`` per line, the
    run named with `pilot_version`), trained two at a time otherwise."""

    def __init__(self, archive: Path, root: Path, workers: int):
        self.archive, self.root, self.workers, self.version = archive, root, workers, pilot_version()
        lines = archive.read_text().splitlines() if archive.exists() else []
        self.done = {record["run"]: record["result"] for record in map(json.loads, lines)}

    def get(self, jobs: list[tuple[int, int, float]], desc: str) -> dict[tuple, dict]:
        key = {job: f"{run_name(*job)}-{self.version}" for job in jobs}
        todo = [job for job in jobs if key[job] not in self.done]
        for k in sorted({job[0] for job in todo}):
            targets(k, self.root)  # once, before the workers read it
        bar = progress(total=len(todo), desc=desc)
        with concurrent.futures.ProcessPoolExecutor(self.workers) as pool:
            futures = {pool.submit(train_rung, *job, str(self.root)): job for job in todo}
            for future in concurrent.futures.as_completed(futures):
                job, result = futures[future], future.result()
                self.done[key[job]] = result
                self.archive.parent.mkdir(parents=True, exist_ok=True)
                with open(self.archive, "a") as handle:
                    handle.write(json.dumps({"run": key[job], "machine": machine_kind(), "result": result}) + "\n")
                bar.update(1)
        bar.close()
        return {job: self.done[key[job]] for job in jobs}


def choose_lrs(runs: Runs) -> dict[int, tuple[float, dict[float, float]]]:
    """{k: (the r = 8 lr of lowest validation MSE, lr → validation MSE)}, each unit's grid extended by ×3 past an
    edge (up to `EXTENSIONS` times)."""
    grids, chosen = {k: list(GRID) for k in KS}, {}
    for _ in range(EXTENSIONS + 1):
        open_grids = {k: g for k, g in grids.items() if k not in chosen}
        found = runs.get([(k, GRID_RANK, lr) for k, g in open_grids.items() for lr in g], "dense pilot: lr grid")
        for k, grid in open_grids.items():
            losses = {lr: found[(k, GRID_RANK, lr)]["validation_loss"] for lr in grid}
            best = min(losses, key=losses.get)
            chosen[k] = (best, losses)
            if best in (grid[0], grid[-1]) and len(grid) < len(GRID) + EXTENSIONS:
                del chosen[k]
                if best == grid[0]:
                    grid.insert(0, float(f"{grid[0] / 3:.3g}"))
                else:
                    grid.append(float(f"{grid[-1] * 3:.3g}"))
        if len(chosen) == len(KS):
            break
    return chosen


def base_losses(k: int, root: Path) -> dict[str, float]:
    """L_0 per split: the untrained model's MSE to the teacher."""
    found = targets(k, root)
    return {s: float(((found[f"base_{s}"] - found[s]) ** 2).mean()) for s in ("validation", "test")}


def verdict(found: dict[int, dict]) -> str:
    """The prediction: rank-sensitive when dense-k32 needs r90 ≥ 16 and dense-k4 r90 ≤ 4, each with ≥ 5% gain."""
    low = found[KS[0]]
    low_ok = low["gain_share"] >= rb.MIN_GAIN and low["r90"] is not None and low["r90"] <= 4
    return "rank-sensitive" if lm_pilot.needs_high_rank(found[KS[-1]]) and low_ok else "not rank-sensitive"


def run(root: str = "runs/dense_pilot", out: str = "docs/study/rank/dense_pilot.json",
        archive: str = "docs/study/rank/dense_pilot_runs.jsonl", workers: int = 2) -> dict:
    """Train the pilot (runs read back from ``archive`` when there), write ``out`` and return it."""
    runs = Runs(Path(archive), Path(root), workers)
    chosen = choose_lrs(runs)
    ladder = runs.get([(k, r, chosen[k][0]) for k in KS for r in RANKS], "dense pilot: ladder")
    report = {"design": __doc__.split("\n\n")[1], "version": runs.version, "units": {}}
    for k in KS:
        lr, grid = chosen[k]
        rungs = {r: ladder[(k, r, lr)] for r in RANKS}
        losses = {0: base_losses(k, Path(root))["test"], **{r: rungs[r]["test_loss"] for r in RANKS}}
        report["units"][f"dense-k{k}"] = {
            "k": k, "lr": lr, "lr_at_edge": lr in (min(grid), max(grid)), "grid": {f"{x:g}": v for x, v in grid.items()},
            "test_loss": losses, "best_step": {r: v["best_step"] for r, v in rungs.items()},
            "stopped": {r: v["stopped"] for r, v in rungs.items()},
            "seconds": sum(v["seconds"] for v in rungs.values()), **lm_pilot.summary(losses)}
    report["verdict"] = verdict({u["k"]: u for u in report["units"].values()})
    atomic_write_json(Path(out), report)
    print(json.dumps({n: {key: u[key] for key in ("lr", "r90", "gain_share", "stopped")}
                      for n, u in report["units"].items()}), report["verdict"])
    return report
