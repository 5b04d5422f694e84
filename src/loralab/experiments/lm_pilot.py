"""A pilot of causal-LM units for the rank question (`lm_units`: SmolLM2 copying or enciphering BBC passages): do
they need ranks the 13 classification units never did (r90 0.99–7.2 on MiniLM), so that a next benchmark could span
≥ 16×? Not part of the registered rank benchmark; it decides whether such units are worth registering.

Each unit at seed 0: r = 0 is the base model untrained; LoRA r ∈ {1, 8, 64} on q_proj and v_proj (s = α/r, the
benchmark's scaling) at one learning rate, chosen at r = 8 on validation loss from {1e-3, 3e-3, 1e-2}; 2,400
training pairs, batch 8, 300 optimizer steps (one epoch), validation every 100 steps and the best checkpoint's test
loss the response; bf16 autocast (the CPU has AMX), 1 thread per run. g(r) = (L_0 − L_r)/(L_0 − L_best), r90 as the
benchmark computes it (`rank_benchmark.needed_rank`). Prediction, fixed before the runs (docs/study/rank/README.md):
the units are rank-sensitive when bbc-cipher's r90 ≥ 16 and bbc-copy's r90 ≤ 4, each unit's best rung lowering
L_0 by ≥ 5%.

    python -c "from loralab.experiments.lm_pilot import run; run()"
"""

from __future__ import annotations

import json
from pathlib import Path

from loralab.experiments import lm_units
from loralab.experiments import rank_benchmark as rb
from loralab.experiments.launcher import Unit, make_executor, run_units
from loralab.io.atomic import atomic_write_json
from loralab.train.config import LoraSettings, TrainConfig

RANKS, LRS, GRID_RANK = (1, 8, 64), (1e-3, 3e-3, 1e-2), 8
STEPS, TRAIN, EVAL, BATCH = 300, 2400, 256, 8


def run_name(unit_name: str, r: int, lr: float) -> str:
    return f"{unit_name}-r{r}-lr{lr:g}"


def pilot_units() -> list[lm_units.LmUnit]:
    return [lm_units.LmUnit(kind, TRAIN) for kind in lm_units.KINDS]


def config(unit: lm_units.LmUnit, files: tuple[str, str, str], r: int, lr: float, seed: int = 0,
           steps: int = STEPS, max_eval: int = EVAL, model: str = "smollm2") -> TrainConfig:
    """LoRA r on SmolLM2's query and value projections, s = α/r (`rank_benchmark.ALPHA`), evaluated every 100 steps,
    the best validation loss kept."""
    return TrainConfig(model=model, data=files[0], val_data=files[1], test_data=files[2], method="lora",
                       targets="q_proj,v_proj", lora=LoraSettings(r=r, alpha=rb.ALPHA), lr=lr, epochs=100,
                       max_steps=steps, eval_steps=100, metric_for_best="loss", batch_size=BATCH,
                       eval_batch_size=16, max_train=unit.max_train, max_eval=max_eval, max_length=unit.max_length,
                       precision="bf16", seed=seed)


def base_loss(files: tuple[str, str, str], unit: lm_units.LmUnit, max_eval: int = EVAL,
              model_name: str = "smollm2") -> float:
    """L_0: the untrained model's test loss on the rows a run is tested on."""
    from loralab import data as datasets
    from loralab import models
    from loralab.tasks.batching import encode
    from loralab.train.evaluate import evaluate

    model, tokenizer = models.load(model_name, "causal_lm")
    test = datasets.load_splits(files[0], 0, unit.max_train, max_eval, files[1], files[2])["test"]
    rows = encode(test, tokenizer, unit.max_length)
    return evaluate(model, rows, "causal_lm", 0, tokenizer.pad_token_id, 16, progress=False, precision="bf16")["loss"]


def summary(losses: dict[int, float]) -> dict:
    """g(r) per rung, r90 and the best rung's gain as a share of L_0 (``losses``: rung → test loss, 0 = base)."""
    head, best = losses[0], min(losses.values())
    gains = {r: (head - loss) / (head - best) if head > best else None for r, loss in losses.items()}
    return {"g": gains, "r90": rb.needed_rank(losses), "gain_share": (head - best) / head}


def needs_high_rank(found: dict) -> bool:
    """A unit's `summary` shows a rank to need (best rung ≥ 5% below L_0) and that rank is high (r90 ≥ 16)."""
    return found["gain_share"] >= rb.MIN_GAIN and (found["r90"] or 0) >= 16


def verdict(found: dict[str, dict]) -> str:
    cipher, copy = found["bbc-cipher"], found["bbc-copy"]
    low_copy = copy["gain_share"] >= rb.MIN_GAIN and copy["r90"] is not None and copy["r90"] <= 4
    return "rank-sensitive" if needs_high_rank(cipher) and low_copy else "not rank-sensitive"


def run(root: str = "runs/lm_pilot", out: str = "docs/study/rank/lm_pilot.json", workers: int = 2) -> dict:
    """Train the pilot (cached under ``root``), write ``out`` and return it."""
    executor = make_executor("local", workers, 1)
    report = {"design": __doc__.split("\n\n")[1], "units": {}}
    grid, files = {}, {}
    for unit in pilot_units():
        files[unit.name] = lm_units.build(unit, Path(root) / "data")
        grid.update({(unit.name, GRID_RANK, lr): config(unit, files[unit.name], GRID_RANK, lr) for lr in LRS})
    done = run_units([Unit(run_name(n, r, lr), c) for (n, r, lr), c in grid.items()], Path(root) / "runs", executor,
                     desc="lm pilot: lr grid")
    chosen = {unit.name: min(LRS, key=lambda lr: done[run_name(unit.name, GRID_RANK, lr)].validation["loss"])
              for unit in pilot_units()}
    ladder = {(unit.name, r): config(unit, files[unit.name], r, chosen[unit.name]) for unit in pilot_units()
              for r in RANKS if r != GRID_RANK}
    done.update(run_units([Unit(run_name(n, r, chosen[n]), c) for (n, r), c in ladder.items()],
                          Path(root) / "runs", executor, desc="lm pilot: ladder"))
    for unit in pilot_units():
        lr = chosen[unit.name]
        runs = {r: done[run_name(unit.name, r, lr)] for r in RANKS}
        losses = {0: base_loss(files[unit.name], unit), **{r: runs[r].test["loss"] for r in RANKS}}
        report["units"][unit.name] = {
            "lr": lr, "lr_at_edge": lr in (LRS[0], LRS[-1]),
            "grid": {f"{x:g}": done[run_name(unit.name, GRID_RANK, x)].validation["loss"] for x in LRS},
            "test_loss": losses, "best_step": {r: runs[r].best_step for r in RANKS},
            "seconds": sum(run.wall_time_s for run in runs.values()), **summary(losses)}
    report["verdict"] = verdict(report["units"])
    atomic_write_json(Path(out), report)
    print(json.dumps({n: {k: u[k] for k in ("lr", "test_loss", "r90", "gain_share")} for n, u in report["units"].items()}),
          report["verdict"])
    return report
