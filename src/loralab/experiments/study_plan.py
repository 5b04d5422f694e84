"""The full study's runs: every claim's trainings as named, cached units (see `full_study`).

All MiniLM runs share one recipe (`Sizes`), differ only in method, targets, rank, learning rate
and seed, and are named from those fields, so a run two claims need is trained once. Learning
rates come from the ``lr`` stage: a sweep on the *validation* split of two tasks at seed 0
(`LR_GRID`); the test split never chooses anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from loralab.experiments.launcher import Unit
from loralab.train.config import LoraSettings, SubspaceSettings, TrainConfig

TASKS = ("movie", "tweets", "trec", "sms")
SEEDS = (0, 1, 2)
LR_TASKS = ("movie", "trec")
# Budget: the costlier claims run on fewer tasks or seeds (DoRA on two tasks, d90 with one seed).
PLACEMENT_TASKS = TASKS  # claim 4: placement vs rank on every task
DORA_RANKS = (1, 2, 4, 8)
DORA_TASKS = ("movie", "trec")  # claim 3: a DoRA run costs ~1.4× a LoRA run
D90_TASKS = ("movie", "trec", "sms")
D90_DIMS = (250, 1000, 4000, 16000)
D90_SEEDS = (0,)
INTERFERENCE_TASKS = ("movie", "tweets", "sms")
MAX_SEEDS = 6  # claim 1's second stage: a task whose interval straddles 98% gets seeds up to this when that decides it
# Claim 11's second stage (fixed in session 21, before its runs, after stage 1 gave DoRA n ≈ 21): an arm the verdict
# rests on (LoRA, DoRA) whose 3-seed interval straddles 0 gets seeds up to this when that decides it.
TRAJECTORY_SEEDS = 24
# Claim 10's second stage (fixed in session 22, before its runs, after stage 1 gave n ≈ 34): when the 3-replicate
# verdict is inconclusive and the replicates that would decide it are at most this many, it is run at this many.
COMPOSITION_REPLICATES = 36

# Learning-rate grids per family (the lr stage picks, per family, the best mean validation accuracy).
LR_GRID = {"full": (5e-5, 1e-4, 2e-4), "lora": (1e-3, 2e-3, 4e-3), "dora": (1e-3, 2e-3, 4e-3),
           "lora-all": (5e-4, 1e-3, 2e-3),  # claim 1's second arm: r = 8 on every linear layer
           "lora-r64": (1e-3, 2e-3, 4e-3),  # claim 7's larger rank, tuned on its own (it must train as well as r = 8)
           "said": (0.05, 0.1, 0.2)}  # said: the lr at d = 1000, scaled by √(1000/d) elsewhere

BLOCK = r".*\.layer\.\d+\."
PLACEMENTS = {  # name → (targets, r, rank_pattern): about 12k rank parameters per MiniLM block each
    "qv": ("query,value", 8, {}),  # 2 × 8 × (384 + 384) = 12,288
    "attention": (BLOCK + r"attention\.(self\.(query|key|value)|output\.dense)", 4, {}),  # 4 × 4 × 768 = 12,288
    "mlp": (BLOCK + r"(intermediate\.dense|output\.dense)", 3, {}),  # 2 × 3 × (384 + 1536) = 11,520
    "all": (BLOCK + r"(attention\.(self\.(query|key|value)|output\.dense)|intermediate\.dense|output\.dense)", 2,
            {r"layer\.\d+\.output\.dense": 1}),  # 4·2·768 + 2·1920 + 1·1920 = 11,904
}


@dataclass(frozen=True)
class Sizes:
    """The recipe of every classification run (MiniLM unless a test swaps in a tiny model). Runs stop on validation
    loss (every ``eval_steps``, after ``patience`` evaluations without a better one, never before ``min_steps``) and
    keep the best validation's weights; ``max_steps`` is only a cap (and the span of the linear lr schedule)."""

    model: str = "minilm"
    max_train: int = 800
    max_eval: Optional[int] = None  # None: the whole validation and test splits (movie 1,057 / 1,056 examples)
    max_length: int = 64
    batch_size: int = 16
    max_steps: int = 1000
    min_steps: int = 150
    eval_steps: int = 50
    patience: int = 3
    said_max_steps: int = 400  # a SAID step costs several LoRA steps (Fastfood over every weight): its own cap


def base_config(task: str, sizes: Sizes, seed: int) -> TrainConfig:
    """Batches grouped by length (fewer padded tokens, the same examples per step); early stopping on validation
    loss (see `Sizes`)."""
    return TrainConfig(model=sizes.model, data=task, seed=seed, max_train=sizes.max_train, max_eval=sizes.max_eval,
                       max_length=sizes.max_length, epochs=1000, max_steps=sizes.max_steps, min_steps=sizes.min_steps,
                       eval_steps=sizes.eval_steps, patience=sizes.patience, metric_for_best="loss",
                       batch_size=sizes.batch_size, group_by_length=True,
                       analysis_every=10)  # ΔM/ΔD telemetry (claim 11, every seed); not in the cache key


LORA_ALPHA = 16.0  # s = α/r: 2 at r = 8 (the scale the learning-rate grids were set for), 0.25 at r = 64


def lora_unit(task: str, sizes: Sizes, seed: int, lr: float, method: str = "lora", r: int = 8,
              placement: str = "qv", rank_pattern: Optional[dict] = None, tag: str = "") -> Unit:
    """LoRA/DoRA with the 1/r scaling s = α/r in every layer (each layer's own r under a rank pattern), α =
    `LORA_ALPHA`. Under Adam with B = 0 the first steps move ΔW = s·B·A by about s·r·lr, so 1/r makes one learning
    rate serve every rank ("LoRA Without Regret", 2025); rsLoRA's α/√r makes the step grow as √r — measured on the
    rank benchmark, ranks ≥ 8 overfit or diverged at the lr ranks 1–4 trained well at (its amendment 4)."""
    targets, base_r, pattern = PLACEMENTS[placement]
    r = r if placement == "qv" and rank_pattern is None else base_r
    pattern = dict(rank_pattern if rank_pattern is not None else pattern)
    lora = LoraSettings(r=r, alpha=LORA_ALPHA, rank_pattern=pattern)
    cfg = replace(base_config(task, sizes, seed), method=method, targets=targets, lora=lora, lr=lr)
    return Unit(f"{task}-{method}-{placement}{tag}-r{r}-lr{lr:g}-s{seed}", cfg)


def all_linear_unit(task: str, sizes: Sizes, seed: int, lr: float, r: int = 8) -> Unit:
    """LoRA r (s = α/r, α = `LORA_ALPHA`) on every linear layer of every block — query, key, value, attention output and both MLP
    layers: claim 1's second arm ("LoRA Without Regret", 2025: all-layer LoRA closes more of the gap to full FT)."""
    cfg = replace(base_config(task, sizes, seed), method="lora", targets=PLACEMENTS["all"][0],
                  lora=LoraSettings(r=r, alpha=LORA_ALPHA), lr=lr)
    return Unit(f"{task}-lora-all-linear-r{r}-lr{lr:g}-s{seed}", cfg)


def full_unit(task: str, sizes: Sizes, seed: int, lr: float) -> Unit:
    return Unit(f"{task}-full-lr{lr:g}-s{seed}", replace(base_config(task, sizes, seed), method="full", lr=lr))


def shuffled_labels(task: str, root: Path, seed: int = 0) -> str:
    """A CSV copy of ``task`` with its labels permuted across rows (seeded), written once under ``root``: the
    null run for claim 6 — the same texts, label frequencies and optimizer, no relation between text and label."""
    import random

    from loralab import data as datasets
    from loralab.experiments.rank_units import write_labels

    path = root / f"{task}-shuffled-s{seed}.csv"
    if not path.exists():
        _, names, rows = datasets.read_all(task)
        labels = [r["label"] for r in rows]
        random.Random(seed).shuffle(labels)
        write_labels(path, ({"text": r["text"], "label": names[label]} for r, label in zip(rows, labels)))
    return str(path)


def shuffled_full_unit(task: str, sizes: Sizes, seed: int, lr: float, root: Path, steps: int) -> Unit:
    """Full fine-tuning on `shuffled_labels` of ``task`` at `full_unit`'s lr for ``steps`` steps (the true-label
    run's best step), validated once at the end: no early stop, so the null keeps every step's noise."""
    cfg = replace(base_config(task, sizes, seed), data=shuffled_labels(task, root), method="full", lr=lr,
                  max_steps=steps, min_steps=0, patience=0, eval_steps=steps, analysis_every=0)
    return Unit(f"{task}-shuffled-full-lr{lr:g}-steps{steps}-s{seed}", cfg)


def said_unit(task: str, sizes: Sizes, seed: int, d: int, lr_at_1000: float, m: int) -> Unit:
    """SAID at d (DID when d ≤ m, the number of moving tensors), lr·√(1000/d) (see docs/intrinsic.md)."""
    method = "did" if d <= m else "said"
    lr = float(f"{lr_at_1000 * (1000 / d) ** 0.5:.4g}")
    cfg = replace(base_config(task, sizes, seed), method=method, subspace=SubspaceSettings(d=d), lr=lr, warmup=0.1,
                  max_steps=sizes.said_max_steps, min_steps=min(sizes.min_steps, sizes.said_max_steps))
    return Unit(f"{task}-{method}-d{d}-lr{lr:g}-s{seed}", cfg)


LR_EXTENSIONS = 3  # how many times a family's grid is extended (×2 or ÷2) while its best value sits at an edge


def lr_tasks(family: str) -> tuple[str, ...]:
    """The tasks a family's learning rate is chosen on (SAID's on one task: its runs cost the most)."""
    return LR_TASKS[:1] if family == "said" else LR_TASKS


def lr_unit(family: str, task: str, sizes: Sizes, lr: float, m: int) -> Unit:
    """One point of a family's learning-rate sweep (seed 0)."""
    if family == "full":
        return full_unit(task, sizes, 0, lr)
    if family == "said":
        return said_unit(task, sizes, 0, 1000, lr, m)
    if family == "lora-all":
        return all_linear_unit(task, sizes, 0, lr)
    if family == "lora-r64":
        return lora_unit(task, sizes, 0, lr, r=64)
    return lora_unit(task, sizes, 0, lr, family)


# Claim 8: each arm's learning-forgetting curve over its lr grid, per seed (Biderman et al. 2024)
SMOLLM2_ARMS = {"lora-r8": ("lora", 8), "lora-r64": ("lora", 64), "full": ("full", None)}
SMOLLM2_LR_GRID = {"lora": (3e-4, 1e-3, 3e-3), "full": (1e-5, 3e-5, 1e-4)}
FORGETTING_SEEDS = (0, 1)
SMOLLM2_MAX_LENGTH = 96
SMOLLM2_ALPHA = 16.0 * math.sqrt(8)  # s = α/r: at r = 8 the scale (5.66) of the rsLoRA α = 16 the cipher check ran at


SNAPSHOT_STEPS = (19,)  # claim 8's checkpoints along each run: half of its 38 optimizer steps (and its end)


def smollm2_unit(arm: str, lr: float, seed: int, files: tuple[str, str, str], snapshots: tuple[int, ...] = ()) -> Unit:
    """SmolLM2 on the enciphered chat-qa (`forgetting_runs.cipher_files`: train, validation, test; 300 training
    pairs, 1 epoch, batch 8): LoRA r on q/v with s = α/r (α = `SMOLLM2_ALPHA`, s = 5.66 at r = 8: r = 8 and r = 64
    learn at one lr scale, see `lora_unit`) or full fine-tuning. ``snapshots``: the same run, keeping its
    parameters after these steps (`train.snapshots`) — a unit of its own, so the end-only run stays cached."""
    method, r = SMOLLM2_ARMS[arm]
    base = TrainConfig(model="smollm2", data=files[0], val_data=files[1], test_data=files[2], max_train=300,
                       max_length=SMOLLM2_MAX_LENGTH, epochs=1, batch_size=8, eval_batch_size=16, seed=seed, lr=lr,
                       method=method)
    if method == "lora":
        base = replace(base, targets="q_proj,v_proj", lora=LoraSettings(r=r, alpha=SMOLLM2_ALPHA))
    tag = "-snapshots" + "_".join(map(str, snapshots)) if snapshots else ""
    return Unit(f"cipherqa-{arm}-lr{lr:g}-s{seed}{tag}", base, tuple(snapshots))
