"""Pilot 2 of the causal-LM units: bbc-cipher (`lm_units`) trained to convergence with its learning rate bracketed —
the two defects of pilot 1 (`lm_pilot`: lr at the grid's upper edge, no run converged in 300 steps), whose r90 of
2.4 said "not rank-sensitive". Not part of the registered rank benchmark.

(1) lr grid at r = 8 extended above pilot 1's edge with 3e-2 and 1e-1 in pilot 1's configuration (2,400 pairs, 300
steps); the validation losses at 1e-3 / 3e-3 / 1e-2 are read from pilot 1's report; the chosen lr is the best of the
five. (2) LoRA r ∈ {1, 8, 64} on q_proj and v_proj at that lr on all 6,704 training pairs, validation every 100
steps on 256 pairs, stopped after 2 validations without a better loss (300 to 900 steps), the best checkpoint's test
loss on 256 pairs the response; r = 0 the untrained model; seed 0. Prediction, fixed before the runs
(docs/study/rank/README.md): rank-sensitive when r90 ≥ 16 and the best rung lowers the untrained loss by ≥ 5%.

    python -c "from loralab.experiments.lm_converge import run; run()"
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from loralab.experiments import lm_pilot, lm_units
from loralab.experiments.launcher import Unit, make_executor, run_units
from loralab.io.atomic import atomic_write_json

EXTRA_LRS, RANKS, GRID_RANK = (3e-2, 1e-1), (1, 8, 64), 8
MAX_STEPS, MIN_STEPS, PATIENCE, ALL_PAIRS = 900, 300, 2, 100_000


def grid_unit() -> lm_units.LmUnit:
    return lm_units.LmUnit("cipher", lm_pilot.TRAIN)


def ladder_unit() -> lm_units.LmUnit:
    """The cipher on every training pair (6,704: fewer than ``ALL_PAIRS``)."""
    return lm_units.LmUnit("cipher", ALL_PAIRS)


def ladder_config(files: tuple[str, str, str], r: int, lr: float):
    """Pilot 1's run (`lm_pilot.config`) on all pairs, stopped on validation loss: 300–900 steps, patience 2."""
    config = lm_pilot.config(ladder_unit(), files, r, lr, steps=MAX_STEPS)
    return replace(config, min_steps=MIN_STEPS, patience=PATIENCE)


def chosen_lr(grid: dict[float, float]) -> tuple[float, bool]:
    """The lr of lowest validation loss in ``grid`` (lr → loss) and whether it sits at the grid's edge."""
    best = min(grid, key=grid.get)
    return best, best in (min(grid), max(grid))


def verdict(found: dict) -> str:
    """The prediction: rank-sensitive when r90 ≥ 16 and the best rung lowers the untrained loss by ≥ 5%."""
    return "rank-sensitive" if lm_pilot.needs_high_rank(found) else "not rank-sensitive"


def pilot1_grid(path: str = "docs/study/rank/lm_pilot.json") -> dict[float, float]:
    """Pilot 1's r = 8 validation losses of bbc-cipher, lr → loss."""
    grid = json.loads(Path(path).read_text())["units"]["bbc-cipher"]["grid"]
    return {float(lr): loss for lr, loss in grid.items()}


def run(root: str = "runs/lm_converge", out: str = "docs/study/rank/lm_converge.json",
        archive: str = "docs/study/rank/lm_converge_runs.jsonl", workers: int = 3) -> dict:
    """Train (cached under ``root``, recorded in ``archive``), write ``out`` and return it."""
    executor = make_executor("local", workers, 1)
    files = lm_units.build(grid_unit(), Path(root) / "data")
    name = grid_unit().name
    grid_runs = {lr: Unit(lm_pilot.run_name(name, GRID_RANK, lr), lm_pilot.config(grid_unit(), files, GRID_RANK, lr))
                 for lr in EXTRA_LRS}
    done = run_units(grid_runs.values(), Path(root) / "runs", executor, "cipher: lr grid", archive)
    grid = {**pilot1_grid(), **{lr: done[unit.name].validation["loss"] for lr, unit in grid_runs.items()}}
    lr, at_edge = chosen_lr(grid)
    ladder = {r: Unit(f"{name}-all-r{r}-lr{lr:g}-converge", ladder_config(files, r, lr)) for r in RANKS}
    done = run_units(ladder.values(), Path(root) / "runs", executor, "cipher: rank ladder", archive)
    runs = {r: done[unit.name] for r, unit in ladder.items()}
    losses = {0: lm_pilot.base_loss(files, ladder_unit()), **{r: runs[r].test["loss"] for r in RANKS}}
    found = lm_pilot.summary(losses)
    report = {
        "design": __doc__.split("\n\n")[1], "lr": lr, "lr_at_edge": at_edge,
        "grid": {f"{x:g}": grid[x] for x in sorted(grid)}, "test_loss": losses,
        "best_step": {r: runs[r].best_step for r in RANKS}, "steps": {r: runs[r].steps for r in RANKS},
        "converged": {r: runs[r].steps < MAX_STEPS for r in RANKS},
        "seconds": sum(run.wall_time_s for run in runs.values()), **found, "verdict": verdict(found)}
    atomic_write_json(Path(out), report)
    print(json.dumps({k: report[k] for k in ("lr", "test_loss", "r90", "steps", "verdict")}))
    return report
