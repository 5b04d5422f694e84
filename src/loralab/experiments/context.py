"""What every claim of the full study shares: the run cache, the chosen learning rates, the claim registry."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from loralab.experiments import study_plan as plan
from loralab.experiments.launcher import Unit, run_units

CLAIMS: dict[int, tuple[str, Callable]] = {}


def claim(number: int, title: str):
    """Register a claim: ``fn(ctx) -> dict`` with at least ``verdict`` and ``summary``."""
    def register(fn):
        CLAIMS[number] = (title, fn)
        return fn
    return register


@dataclass
class Context:
    """The study's state: which tasks and seeds, where runs live, and every result seen so far."""

    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    root: Path
    out: Path
    executor: object
    sizes: plan.Sizes = field(default_factory=plan.Sizes)
    results: dict[str, dict] = field(default_factory=dict)
    run_dirs: dict[str, Path] = field(default_factory=dict)
    lr_table: dict[str, dict] = field(default_factory=dict)
    outcomes: dict[int, dict] = field(default_factory=dict)
    archive: Optional[Path] = None  # a JSONL of finished runs (`launcher.Archive`): results survive a lost run root
    trained: set[str] = field(default_factory=set)  # units this invocation trained (the rest were read back)
    _moving: Optional[int] = None

    def only(self, tasks: tuple[str, ...]) -> "Context":
        """The same study restricted to ``tasks`` (all of its tasks if none of them is chosen)."""
        return replace(self, tasks=tuple(t for t in self.tasks if t in tasks) or self.tasks)

    def run(self, units: list[Unit], archive: bool = True) -> dict[str, dict]:
        """Train what is not cached (in parallel); {unit name: its `RunResult`}. A result recorded in the archive
        counts as cached unless ``archive`` is False (a claim that reads the run's weights needs its directory)."""
        from loralab.experiments.launcher import code_version, unit_dir

        version = code_version()
        unique = dict((u.name, u) for u in units).values()
        missing = [u for u in unique if u.name not in self.results
                   or not archive and not (unit_dir(self.root, u, version) / "result.json").exists()]
        if missing:
            self.results.update(run_units(missing, self.root, self.executor, desc=f"{len(missing)} runs",
                                          archive=self.archive if archive else None, trained=self.trained))
            self.run_dirs.update({u.name: unit_dir(self.root, u, version) for u in missing})
        return {u.name: self.results[u.name] for u in units}

    def outcome(self, number: int) -> dict:
        """Claim ``number``'s result, evaluated once (claims may build on each other)."""
        if number not in self.outcomes:
            title, evaluate = CLAIMS[number]
            self.outcomes[number] = {"claim": number, "title": title, **evaluate(self)}
        return self.outcomes[number]

    def run_dir(self, unit: Unit) -> Path:
        return self.dirs([unit])[0]

    def dirs(self, units: list[Unit]) -> list[Path]:
        """The run directories of ``units``, training the missing ones together (in parallel); a unit known only
        from the archive is trained again (its weights are gone)."""
        self.run(units, archive=False)
        return [self.run_dirs[u.name] for u in units]

    def params(self, unit: Unit) -> int:
        return self.run([unit])[unit.name].trainable_params

    def validation(self, unit: Unit) -> float:
        return self.run([unit])[unit.name].validation["accuracy"]

    @property
    def moving_tensors(self) -> int:
        if self._moving is None:
            from loralab.experiments.d90_sweep import moving_tensors

            self._moving = moving_tensors(self.sizes.model, plan.TASKS[0])
        return self._moving

    def lr(self, family: str) -> float:
        """The family's learning rate: the grid value with the best mean validation accuracy on `plan.lr_tasks`,
        the grid extended (×2 above, ÷2 below) while the best value sits at its edge, at most
        `plan.LR_EXTENSIONS` times; an optimum still at an edge is flagged (``at_edge``), a defect of the run.
        A grid of one value is taken as given (``at_edge`` None)."""
        if family not in self.lr_table:
            grid, tasks = sorted(plan.LR_GRID[family]), plan.lr_tasks(family)
            for extension in range(plan.LR_EXTENSIONS + 1):
                units = {(t, lr): plan.lr_unit(family, t, self.sizes, lr, self.moving_tensors) for t in tasks for lr in grid}
                results = self.run(list(units.values()))
                per_lr = {lr: statistics.fmean(results[units[(t, lr)].name].validation["accuracy"] for t in tasks)
                          for lr in grid}
                best = max(grid, key=lambda lr: (per_lr[lr], -lr))
                at_edge = best in (grid[0], grid[-1]) if len(grid) > 1 else None  # one value: given, not searched
                if not at_edge or extension == plan.LR_EXTENSIONS:
                    break
                grid = sorted({*grid, float(f"{best / 2:.3g}") if best == grid[0] else float(f"{best * 2:.3g}")})
            self.lr_table[family] = {"grid": {f"{lr:g}": v for lr, v in per_lr.items()}, "chosen": best,
                                     "at_edge": at_edge, "tasks": list(tasks), "seed": 0}
        return self.lr_table[family]["chosen"]
