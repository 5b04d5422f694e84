"""The rank benchmark: can the LoRA rank a task needs be predicted before training? Measured, not assumed.

1. **Needed rank, measured** on every unit (`rank_units`): a rank ladder r ∈ `RUNGS` (r = 0: the head alone)
   with the 1/r scaling s = α/r (under Adam with B = 0 the first steps then move ΔW the same at every rank, so
   one learning rate serves the ladder — amendment 4), the head's learning rate and each unit's LoRA learning
   rate (at r = 8) chosen on grids that bracket an interior optimum (`learning_rates`), runs stopped on
   validation loss (at least `Plan.min_steps` optimizer steps), two seeds and a third where r90's interval is wide.
   The response is the held-out (test) loss L_r of the best checkpoint; the normalised gain
   g(r) = (L_0 − L_r)/(L_0 − L_best) and r90 = the smallest r with g ≥ 0.9, log₂-interpolated between rungs (the
   head-only rung sits at log₂ r = −1), with a seed-bootstrap interval (`needed_rank`). A unit whose best rank gains
   less than `MIN_GAIN` of the head's loss is dropped, and listed.
2. **Predictors** at the pretrained weights (`analysis.rank_predictors`, on ≤ 256 examples), the primary one
   (`rank_predictors.PRIMARY`) fixed before the ladders ran.
3. **The test**: Spearman ρ between predictor and r90 over units, a one-sided permutation p (10⁵ permutations),
   the test's power for a population ρ = 0.8 at this n, and partial ρ with log C held fixed.
4. **Allocation**: per-layer ranks from the primary predictor, from EVA-style activation ranks, uniform, and
   random, at equal rank units (at least 2 per layer), the learning rate re-chosen for each (lr × {1/3, 1, 3} on the
   first seed, extended past an edge; the chosen value on the others), paired over three seeds.

`loralab study --full --claims 9` runs it (cached, resumable units); `run_rank_benchmark` is the entry point.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from loralab.adapters.config import exact_pattern
from loralab.experiments import rank_units, stats
from loralab.experiments.launcher import (
    Archive,
    Unit,
    code_version,
    compute_used,
    finished_result,
    make_executor,
    run_units,
    unit_dir,
)
from loralab.train.config import LoraSettings, TrainConfig

RUNGS = (0, 1, 2, 4, 8, 16, 32, 64)
LEVEL = 0.9  # r90: the rank reaching 90% of the best rank's loss gain over the head alone
SPREAD_TARGET = 16.0  # the needed ranks of the kept units should span at least this factor
MIN_GAIN = 0.05  # a unit whose best rank lowers the head-only test loss by less than 5% has no rank to predict
ALPHA = 8.0 * math.sqrt(8)  # s = α/r: 2.83 at r = 8, the scale amendments 1–3 (rsLoRA, α = 8) gave r = 8
HEAD_LORA = LoraSettings(r=1, alpha=8.0, rslora=True)  # the head rung reads no lora section; these values (amendment
# 3's) keep its run keys, so the head's finished learning-rate grid stays valid
LR_GRIDS = {"lora": (3e-4, 1e-3, 3e-3), "head": (1e-3, 3e-3, 1e-2, 3e-2)}  # lora: per unit (amendment 4)
LR_UNITS = ("trec-c50", "movie")


@dataclass
class Plan:
    """How big the benchmark is (the defaults: MiniLM, every unit; tests shrink it)."""

    model: str = "minilm"
    units: list = field(default_factory=rank_units.units)
    rungs: tuple = RUNGS
    seeds: tuple = (0, 1)
    third_seed: Optional[int] = 2  # trained on a unit whose two-seed r90 is too uncertain (`needs_third_seed`)
    decisive_ratio: float = 4.0  # an r90 interval wider than this factor (two rungs) is too uncertain
    batch_size: int = 16
    max_steps: int = 2000  # trec-c50 at the chosen lr still improved at 600 and at 1,200 (amendments 1 and 2)
    min_steps: int = 300
    eval_steps: int = 100
    patience: int = 2
    max_eval: int = rank_units.MAX_EVAL
    lr_units: tuple = LR_UNITS
    lr_grids: dict = field(default_factory=lambda: dict(LR_GRIDS))
    allocation_units: int = 4
    allocation_seeds: tuple = (0, 1, 2)  # amendment 8: with two, a paired t-interval has 1 df (t = 12.7)
    allocation_min_rank: int = 2  # amendment 8: rank 1 per layer leaves nothing to reallocate
    predictor_examples: int = 256
    threads: int = 1  # every run on one thread, however many workers: results do not depend on the scheduling


# ----- runs --------------------------------------------------------------------------------------
def config(plan: Plan, unit: rank_units.RankUnit, data: str, rung: int, seed: int, lr: float,
           rank_pattern: Optional[dict] = None) -> TrainConfig:
    """One rung's run: the head alone for r = 0, else LoRA r (s = α/r; under a rank pattern each layer's own r) on
    the attention query/value projections. Batches grouped by length (amendment 3: 1.5× fewer padded tokens, the
    same examples per step)."""
    lora = HEAD_LORA if rung == 0 else LoraSettings(r=rung, alpha=ALPHA, rank_pattern=rank_pattern or {},
                                                     alpha_pattern={k: ALPHA for k in (rank_pattern or {})})
    return TrainConfig(model=plan.model, data=data, method="head" if rung == 0 else "lora", lora=lora, lr=lr,
                       epochs=100, max_steps=plan.max_steps, min_steps=plan.min_steps, eval_steps=plan.eval_steps,
                       patience=plan.patience, metric_for_best="loss", batch_size=plan.batch_size,
                       group_by_length=True, max_train=unit.max_train, max_eval=plan.max_eval,
                       max_length=unit.max_length, seed=seed)


def unit_name(unit: rank_units.RankUnit, rung: int, seed: int, lr: float, tag: str = "") -> str:
    return f"{unit.name}-r{rung}{tag}-lr{lr:g}-s{seed}"


@dataclass
class Bench:
    """The benchmark's state: plan, where runs and data live, the executor, what is known so far."""

    plan: Plan
    root: Path
    executor: object
    lrs: dict = field(default_factory=dict)
    used: dict = field(default_factory=dict)  # every run's result, trained or read back: the report's compute
    archive: Optional[Path] = None  # a JSONL of finished runs (`launcher.Archive`), read before training
    records: Archive = field(init=False, repr=False)  # the archive, read once; runs this process adds go into it

    def __post_init__(self):
        self.records = Archive(self.archive)

    def data(self, unit: rank_units.RankUnit) -> str:
        return rank_units.build(unit, self.root / "data", self.plan.model)

    def run(self, jobs: list[tuple[str, TrainConfig]], desc: str) -> dict:
        results = run_units([Unit(name, cfg) for name, cfg in jobs], self.root / "runs", self.executor, desc=desc,
                            archive=self.records)
        self.used.update(results)
        return results

    def lr(self, unit: rank_units.RankUnit, rung: int) -> float:
        """The head's learning rate for r = 0; the unit's own LoRA learning rate for every other rung."""
        return self.lrs["head"]["chosen"] if rung == 0 else self.lrs["lora"][unit.name]["chosen"]


def learning_rates(bench: Bench) -> dict:
    """The head's lr (one for every unit, chosen over `Plan.lr_units`) and each unit's LoRA lr at r = 8 (amendment
    4: units differ — trec-c2 at r = 8 overfit at the lr trec-c50 needs), both at seed 0 on validation loss."""
    plan = bench.plan
    lr_units = [u for u in plan.units if u.name in plan.lr_units] or plan.units[:1]
    head = choose(bench, {"head": lr_units}, 0, plan.lr_grids["head"], "-lrgrid")["head"]
    bench.lrs = {"head": head, "lora": choose(bench, {u.name: [u] for u in plan.units}, 8, plan.lr_grids["lora"], "")}
    return bench.lrs


def choose(bench: Bench, groups: dict[str, list], rung: int, grid: tuple, tag: str) -> dict[str, dict]:
    """Per group of units: the grid value with the lowest mean over its units of validation loss / the unit's best
    (seed 0, at ``rung``), the grid extended by ×3 while the best value is at an edge (at most twice). Every group's
    round is one batch, so the workers stay busy."""
    plan, grids, chosen, pending = bench.plan, {g: sorted(grid) for g in groups}, {}, list(groups)
    for _ in range(3):
        jobs = {(g, u.name, lr): (unit_name(u, rung, 0, lr, tag), config(plan, u, bench.data(u), rung, 0, lr))
                for g in pending for u in groups[g] for lr in grids[g]}
        results = bench.run(list(dict(jobs.values()).items()), f"{'head' if rung == 0 else 'lora'} learning rates")
        loss = {key: results[name].validation["loss"] for key, (name, _) in jobs.items()}
        for g in pending:
            score = {lr: statistics.fmean(loss[(g, u.name, lr)] / min(loss[(g, u.name, x)] for x in grids[g])
                                          for u in groups[g]) for lr in grids[g]}
            best = min(grids[g], key=score.get)
            edge = best in (grids[g][0], grids[g][-1])
            chosen[g] = {"grid": {f"{lr:g}": score[lr] for lr in grids[g]}, "chosen": best, "at_edge": edge,
                         "metric": "mean over units of validation loss / the unit's best",
                         "units": [u.name for u in groups[g]]}
            if edge:
                grids[g] = sorted({*grids[g], best / 3 if best == grids[g][0] else best * 3})
        pending = [g for g in pending if chosen[g]["at_edge"]]
        if not pending:
            break
    return chosen


def ladder_jobs(bench: Bench, units: list, seeds: tuple) -> dict[str, tuple]:
    """{run name: (unit, rung, seed, TrainConfig)} of the units' ladders at these seeds, seed-major."""
    jobs = {}
    for seed in seeds:
        for u in units:
            for rung in bench.plan.rungs:
                lr = bench.lr(u, rung)
                jobs[unit_name(u, rung, seed, lr)] = (u.name, rung, seed, config(bench.plan, u, bench.data(u), rung, seed, lr))
    return jobs


def ladder(bench: Bench) -> dict[str, dict[int, dict[int, object]]]:
    """{unit: {rung: {seed: RunResult}}} — every unit's ladder trained (what is cached is read back). Seed 0's
    ladders are submitted first, so a benchmark stopped half-way holds whole ladders of one seed. Then a unit
    whose r90 is still too uncertain after the plan's seeds (`needs_third_seed`) gets its ladder at a third seed."""
    plan, out = bench.plan, {}

    def train(units: list, seeds: tuple) -> None:
        jobs = ladder_jobs(bench, units, seeds)
        results = bench.run([(name, job[3]) for name, job in jobs.items()], "rank ladders")
        for name, (u, rung, seed, _) in jobs.items():
            out.setdefault(u, {}).setdefault(rung, {})[seed] = results[name]

    train(plan.units, plan.seeds)
    if plan.third_seed is not None:
        unsure = [u for u in plan.units if needs_third_seed(unit_summary(out[u.name]), plan.decisive_ratio)]
        if unsure:
            train(unsure, (plan.third_seed,))
    return out


def needs_third_seed(summary: dict, ratio: float) -> bool:
    """Whether seeds could still decide a unit's r90: its 95% interval spans more than ``ratio`` (upper/lower), or
    there is no interval (no resample beat the head). Amendment 6: "≥ 2 seeds, 3 where the intervals are wide"."""
    low, high = summary["interval"]
    return low is None or high is None or high / low > ratio


# ----- the needed rank ---------------------------------------------------------------------------
def position(rung: float) -> float:
    """Where a rung sits on the log₂ axis; the head alone (r = 0) at −1, one step below r = 1."""
    return math.log2(rung) if rung > 0 else -1.0


def needed_rank(losses: dict[int, float], level: float = LEVEL) -> Optional[float]:
    """r at which the normalised gain g(r) = (L_0 − L_r)/(L_0 − L_best) first reaches ``level``, log₂-interpolated
    between the rungs around it; None when no rank beats the head."""
    rungs = sorted(losses)
    head, best = losses[rungs[0]], min(losses.values())
    if head - best <= 0:
        return None
    gain = {r: (head - losses[r]) / (head - best) for r in rungs}
    for low, high in zip(rungs, rungs[1:]):
        if gain[high] >= level:
            t = (level - gain[low]) / (gain[high] - gain[low]) if gain[high] > gain[low] else 1.0
            t = min(max(t, 0.0), 1.0)
            return 2 ** (position(low) + t * (position(high) - position(low)))
    return float(rungs[-1])


def seed_means(per_seed: dict[int, dict[int, float]]) -> dict[int, float]:
    return {rung: statistics.fmean(values.values()) for rung, values in per_seed.items()}


def bootstrap_needed_rank(per_seed: dict[int, dict[int, float]], resamples: int = 10_000, seed: int = 0) -> tuple:
    """95% interval of r90: each rung's seeds resampled with replacement (independently), r90 of the means."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rungs = sorted(per_seed)
    values = {r: np.asarray(list(per_seed[r].values()), float) for r in rungs}
    draws = []
    for _ in range(resamples):
        means = {r: float(values[r][rng.integers(0, len(values[r]), len(values[r]))].mean()) for r in rungs}
        found = needed_rank(means)
        if found is not None:
            draws.append(math.log2(found))
    if not draws:
        return None, None
    return float(2 ** np.quantile(draws, 0.025)), float(2 ** np.quantile(draws, 0.975))


def per_seed_needed_rank(per_seed: dict[int, dict[int, float]]) -> dict[int, Optional[float]]:
    """{seed: r90 of that seed's ladder alone} for the seeds every rung has ({rung: {seed: test loss}})."""
    seeds = set.intersection(*(set(v) for v in per_seed.values()))
    return {seed: needed_rank({rung: v[seed] for rung, v in per_seed.items()}) for seed in sorted(seeds)}


def monotone_losses(losses: dict[int, float]) -> dict[int, float]:
    """The loss curve forced non-increasing in rank (isotonic regression, pool-adjacent-violators): a rung that
    dips below its larger neighbours by seed noise is pooled with them. Sensitivity only (added after two seed-0
    ladders were seen, amendment 6's note); r90 on the raw curve is the registered response."""
    from scipy.optimize import isotonic_regression

    rungs = sorted(losses)
    fitted = isotonic_regression([losses[r] for r in rungs], increasing=False).x
    return {r: float(v) for r, v in zip(rungs, fitted)}


def at_step_cap(result) -> bool:
    """Whether a run's best validation loss came at its last allowed step (``max_steps``): it was still improving
    when the cap stopped it, so it is not shown to have converged."""
    return result.best_step is not None and result.best_step >= result.config["max_steps"]


def unit_summary(results: dict[int, dict[int, object]]) -> dict:
    """Test losses per rung and seed, their means, the gain curve, r90 and its interval; whether the unit counts;
    how many of its runs were still improving at the step cap (`at_step_cap`)."""
    per_seed = {rung: {seed: r.test["loss"] for seed, r in by_seed.items()} for rung, by_seed in results.items()}
    means = seed_means(per_seed)
    head, best = means[min(means)], min(means.values())
    gain = (head - best) / head if head > 0 else 0.0
    low, high = bootstrap_needed_rank(per_seed)
    return {"test_loss": {str(k): v for k, v in per_seed.items()}, "mean_test_loss": {str(k): v for k, v in means.items()},
            "best_rung": min(means, key=means.get), "relative_gain": gain, "needed_rank": needed_rank(means),
            "sensitivity": {**{f"r{round(100 * level)}": needed_rank(means, level) for level in (0.8, 0.95)},
                            "r90_monotone": needed_rank(monotone_losses(means))},
            "needed_rank_per_seed": per_seed_needed_rank(per_seed),
            "interval": [low, high], "kept": gain >= MIN_GAIN, "seeds": len(next(iter(per_seed.values()))),
            "steps": {str(k): statistics.fmean(r.steps for r in v.values()) for k, v in results.items()},
            "runs": sum(len(v) for v in results.values()),
            "at_step_cap": sorted(f"r{k}-s{seed}" for k, v in results.items() for seed, r in v.items() if at_step_cap(r))}


# ----- predictors, the test, allocation ----------------------------------------------------------
def predictors(bench: Bench) -> dict[str, dict]:
    """{unit: `commands.probe.task_probe`} — computed once per unit, kept as ``predictors/<unit>.json`` beside the
    archive (committed with it: the predictors are fixed before the ladders), else under the benchmark's directory."""
    from loralab.commands.probe import task_probe

    out, home = {}, (bench.archive.parent if bench.archive else bench.root) / "predictors"
    for u in bench.plan.units:
        cache = home / f"{u.name}.json"
        if not cache.exists():
            found = task_probe(bench.plan.model, bench.data(u), u.max_length, bench.plan.predictor_examples,
                               max_train=u.max_train)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(found, indent=1))
        out[u.name] = json.loads(cache.read_text())
    return out


def needed_rank_spread(summaries: dict[str, dict], target: float = SPREAD_TARGET) -> dict:
    """How far the kept units' r90 spread: the lowest and highest unit and their ratio (the benchmark asks ≥ 16×,
    else a predictor has little to order)."""
    kept = {u: s["needed_rank"] for u, s in summaries.items() if s["kept"] and s["needed_rank"] is not None}
    if not kept:
        return {"lowest": None, "highest": None, "ratio": None, "target": target, "meets_target": False}
    low, high = min(kept, key=kept.get), max(kept, key=kept.get)
    ratio = kept[high] / kept[low]
    return {"lowest": [low, kept[low]], "highest": [high, kept[high]], "ratio": ratio, "target": target,
            "meets_target": ratio >= target}


def sensitivity_tests(summaries: dict[str, dict], found: dict[str, dict], primary: str) -> dict:
    """The primary predictor against each sensitivity response (r80, r95, r90 on the monotone curve) over the kept
    units: ρ and one-sided permutation p, reported beside the registered test and never instead of it."""
    out = {}
    for key in ("r80", "r95", "r90_monotone"):
        units = [u for u, s in summaries.items() if s["kept"] and s["sensitivity"].get(key) is not None]
        values = [found[u]["task"].get(primary) for u in units]
        needed = [math.log2(summaries[u]["sensitivity"][key]) for u in units]
        if len(units) < 3 or any(v is None for v in values) or len(set(values)) < 2 or len(set(needed)) < 2:
            out[key] = {"n": len(units), "rho": None, "p_value": None}
        else:
            out[key] = {"n": len(units), **stats.spearman_test(values, needed)}
    return out


def seed_agreement(summaries: dict[str, dict], first: int = 0, second: int = 1) -> dict:
    """Does a unit's needed rank repeat across seeds? Spearman ρ, over the kept units, of r90 from seed ``first``'s
    ladder alone against seed ``second``'s (one-sided permutation p). Its test–retest reliability R bounds what any
    predictor can reach: the mean of k seeds has reliability R_k = kR/(1 + (k − 1)R) (Spearman–Brown), and a predictor
    of the true needed rank correlates with the measured one by at most √R_k (0 when R ≤ 0). A diagnostic added after
    the ladders finished (docs/study/rank/README.md, Status), beside the registered test, never instead of it."""
    units = [u for u, s in summaries.items() if s["kept"]
             and all(s["needed_rank_per_seed"].get(k) is not None for k in (first, second))]
    if len(units) < 3:
        return {"n": len(units), "rho": None, "p_value": None, "ceiling": None}
    found = stats.spearman_test([summaries[u]["needed_rank_per_seed"][first] for u in units],
                                [summaries[u]["needed_rank_per_seed"][second] for u in units])
    seeds = statistics.median(summaries[u]["seeds"] for u in units)
    rho = found["rho"]
    reliability = seeds * rho / (1 + (seeds - 1) * rho) if rho > 0 else 0.0
    return {**found, "seeds": [first, second], "median_seeds": seeds, "reliability_of_mean": reliability,
            "ceiling": math.sqrt(reliability)}


def test_predictors(summaries: dict[str, dict], found: dict[str, dict]) -> dict:
    """Spearman ρ of each predictor against r90 over the kept units, one-sided permutation p (10⁵), power at ρ = 0.8
    (α = 0.01 and 0.05), partial ρ with log₂ C held fixed."""
    kept = [u for u, s in summaries.items() if s["kept"] and s["needed_rank"] is not None]
    needed = [math.log2(summaries[u]["needed_rank"]) for u in kept]
    names = sorted({k for u in kept for k, v in found[u]["task"].items() if isinstance(v, (int, float))})
    table = {}
    for name in names:
        values = [found[u]["task"].get(name) for u in kept]
        if any(v is None for v in values) or len(set(values)) < 2:
            continue
        tested = stats.spearman_test(values, needed)
        classes = [found[u]["task"].get("log2_classes", 0.0) for u in kept]
        table[name] = {**tested, "partial_rho_given_log2_classes": stats.partial_spearman(values, needed, classes)}
    n = len(kept)
    power = {f"alpha_{a}": stats.spearman_power(n, 0.8, a) if n >= 4 else None for a in (0.01, 0.05)}
    return {"units": kept, "n": n, "predictors": table, "power_rho_0.8": power}


def planted_truth(bench: Bench, found: dict[str, dict]) -> dict:
    """Per planted-rank unit: each target layer's true planted rank (k on the value projections, 0 on the queries)
    beside every per-layer predictor, and for each predictor its Spearman ρ with the truth over the layers and its
    mean on planted minus unplanted layers."""
    out = {}
    for u in bench.plan.units:
        if u.planted is None:
            continue
        bench.data(u)
        truth = json.loads((bench.root / "data" / f"{u.name}.planted.json").read_text())["per_layer_rank"]
        layers = found[u.name]["layers"]
        paths = [p for p in layers if p in truth]
        row: dict = {"k": u.planted, "per_layer": {p: {"truth": truth[p], **layers[p]} for p in paths}, "predictors": {}}
        for name in layers[paths[0]]:
            values = [layers[p][name] for p in paths]
            if any(v is None for v in values) or len(set(values)) < 2:
                continue
            planted = [v for p, v in zip(paths, values) if truth[p] > 0]
            unplanted = [v for p, v in zip(paths, values) if truth[p] == 0]
            row["predictors"][name] = {"rho": stats.spearman_test(values, [truth[p] for p in paths],
                                                                  permutations=10_000)["rho"],
                                       "planted_minus_unplanted": statistics.fmean(planted) - statistics.fmean(unplanted)}
        out[u.name] = row
    return out


def allocation_units(summaries: dict[str, dict], count: int) -> list[str]:
    """``count`` kept units spread over the range of needed ranks (the lowest, the highest and between)."""
    kept = sorted((s["needed_rank"], u) for u, s in summaries.items() if s["kept"] and s["needed_rank"])
    if len(kept) <= count:
        return [u for _, u in kept]
    picks = {round(i * (len(kept) - 1) / (count - 1)) for i in range(count)}
    return [kept[i][1] for i in sorted(picks)]


def allocations(layers: dict[str, dict], budget: int, seed: int = 0) -> dict[str, dict[str, int]]:
    """Per-layer ranks summing to ``budget``: uniform, ∝ the primary predictor's per-layer signal rank, ∝ the
    EVA-style activation rank, and ∝ random scores (seeded)."""
    import random

    from loralab.analysis.probe import allocate_ranks
    from loralab.analysis.rank_predictors import PRIMARY

    paths = list(layers)
    rng = random.Random(seed)
    scores = {"uniform": {p: 1.0 for p in paths}, "predicted": {p: layers[p][PRIMARY] + 0.5 for p in paths},
              "eva": {p: float(layers[p]["activation_rank"]) for p in paths}, "random": {p: rng.random() for p in paths}}
    return {name: allocate_ranks(s, budget) for name, s in scores.items()}


ALLOCATIONS = ("uniform", "predicted", "eva", "random")
ALLOCATION_FACTORS = (1 / 3, 1.0, 3.0)  # × the unit's LoRA lr, extended by ×3 past an edge (amendment 8)


def allocation_rank(needed_rank: float, minimum: int) -> int:
    """The uniform rank every allocation matches in total: the rung at or below r90 (rank scarce, so where it goes
    matters), at least ``minimum`` — each layer keeps rank ≥ 1, so one rank per layer leaves nothing to move and
    every allocation would be uniform (amendment 8)."""
    return max(minimum, 2 ** math.floor(math.log2(max(needed_rank, 1))))


def allocation_job(bench: Bench, unit: rank_units.RankUnit, name: str, ranks: dict[str, int], rank: int, seed: int,
                   lr: float) -> tuple[str, TrainConfig]:
    """One allocation's run: LoRA with per-layer ``ranks`` (each layer s = α/its r)."""
    return (unit_name(unit, rank, seed, lr, f"-alloc-{name}"),
            config(bench.plan, unit, bench.data(unit), rank, seed, lr, exact_pattern(ranks)))


def allocation_lr(lr: float, factor: float) -> float:
    """lr × factor to 3 significant digits (so 1e-3 / 3 is 3.33e-4 in run names and configs)."""
    return float(f"{lr * factor:.3g}")


def tune_allocations(bench: Bench, unit: rank_units.RankUnit, ranks: dict[str, dict[str, int]], rank: int, seed: int,
                     extensions: int = 2) -> dict[str, dict]:
    """{allocation: {"lr", "at_edge", "validation_loss", "test_loss": {seed: loss}}} — each allocation's learning rate
    chosen on ``seed``'s validation loss among the unit's LoRA lr × `ALLOCATION_FACTORS`, the grid extended by ×3
    while the best value is at an edge (at most ``extensions`` times, as `choose` does for the ladders)."""
    base = bench.lr(unit, rank)
    grids = {a: sorted(allocation_lr(base, f) for f in ALLOCATION_FACTORS) for a in ranks}
    pending, table = list(ranks), {}
    for _ in range(extensions + 1):
        jobs = {(a, lr): allocation_job(bench, unit, a, ranks[a], rank, seed, lr) for a in pending for lr in grids[a]}
        results = bench.run(list(jobs.values()), f"{unit.name}: allocation learning rates")
        for a in pending:
            val = {lr: results[jobs[(a, lr)][0]].validation["loss"] for lr in grids[a]}
            best = min(grids[a], key=val.get)
            table[a] = {"lr": best, "at_edge": best in (grids[a][0], grids[a][-1]),
                        "validation_loss": {f"{k:g}": v for k, v in val.items()},
                        "test_loss": {seed: results[jobs[(a, best)][0]].test["loss"]}}
            if table[a]["at_edge"]:
                grids[a] = sorted({*grids[a], allocation_lr(best, 1 / 3 if best == grids[a][0] else 3.0)})
        pending = [a for a in pending if table[a]["at_edge"]]
        if not pending:
            break
    return table


def allocation(bench: Bench, summaries: dict[str, dict], found: dict[str, dict]) -> dict:
    """Per unit: each allocation's learning rate tuned on the first allocation seed (`tune_allocations`), then rerun
    at that lr on the other seeds; test loss per seed, and the paired difference to uniform (t-interval, with what
    it can detect at that n and the n that would decide it, `stats.what_decides`)."""
    out = {}
    first, others = bench.plan.allocation_seeds[0], bench.plan.allocation_seeds[1:]
    for name in allocation_units(summaries, bench.plan.allocation_units):
        unit = next(u for u in bench.plan.units if u.name == name)
        rank = allocation_rank(summaries[name]["needed_rank"], bench.plan.allocation_min_rank)
        ranks = allocations(found[name]["layers"], rank * len(found[name]["layers"]))
        table = tune_allocations(bench, unit, ranks, rank, first)
        for seed in others:
            jobs = {a: allocation_job(bench, unit, a, ranks[a], rank, seed, table[a]["lr"]) for a in ALLOCATIONS}
            done = bench.run(list(jobs.values()), f"{name}: allocations, seed {seed}")
            for a, (job_name, _) in jobs.items():
                table[a]["test_loss"][seed] = done[job_name].test["loss"]
        for a in ALLOCATIONS[1:]:
            diff = stats.paired(table[a]["test_loss"], table["uniform"]["test_loss"])
            table[a]["minus_uniform"] = {**diff, "power": {**stats.what_decides(diff, 0.0), "unit": "seeds"}}
        out[name] = {"rank": rank, "budget": rank * len(found[name]["layers"]), "ranks": ranks, "allocations": table}
    return out


def finished(bench: Bench, jobs: list[tuple[str, TrainConfig]]) -> dict:
    """{name: RunResult} of the jobs already finished under the benchmark's runs directory (nothing is trained)."""
    version = code_version()
    found = {name: finished_result(unit_dir(bench.root / "runs", Unit(name, cfg), version), bench.records)
             for name, cfg in jobs}
    return {name: result for name, result in found.items() if result is not None}


def machines_used(bench: Bench) -> dict[str, int]:
    """{machine: how many of the archive's runs trained on it} — runs from different CPUs round differently
    (docs/study/rank/README.md, Status), so the report states the mix. Empty without an archive."""
    from collections import Counter

    return dict(Counter(bench.records.machines.values()))


class Pending(Exception):
    """Raised by `ReadOnly` when a stage still has runs to train."""


class ReadOnly:
    """An executor that trains nothing: a stage whose runs are all finished reads them back; any other raises."""

    threads = 1

    def submit_all(self, jobs):
        raise Pending(f"{len(jobs)} runs not finished")


def interim(runs: str | Path = "runs/rank", plan: Optional[Plan] = None,
            archive: Optional[str | Path] = None) -> dict:
    """Where a running (or stopped) benchmark stands, from finished runs only: the learning rates once their grid
    is done (the same choice `learning_rates` makes), then per unit `ladder_status`. Not the pre-registered test
    (that needs every unit): a progress view. ``archive``: also read the runs recorded there (`launcher.Archive`),
    e.g. ``docs/study/rank/runs.jsonl``."""
    bench = Bench(plan or Plan(), Path(runs), ReadOnly(), archive=Path(archive) if archive else None)
    status: dict = {"interim": True, "learning_rates": None, "units": {}}
    try:
        status["learning_rates"] = learning_rates(bench)
    except Pending as err:
        status["learning_rates"] = f"grid not finished: {err}"
        return status
    for u in bench.plan.units:
        status["units"][u.name] = ladder_status(bench, u)
    return status


def ladder_status(bench: Bench, unit: rank_units.RankUnit) -> dict:
    """One unit's ladder from its finished runs: how many of how many; r90 of each seed whose ladder is whole; once
    every seed the benchmark wants is whole (the third only if `needs_third_seed`), the unit's summary."""
    seeds, third = bench.plan.seeds, bench.plan.third_seed
    while True:
        jobs = ladder_jobs(bench, [unit], seeds)
        done = finished(bench, [(name, job[3]) for name, job in jobs.items()])
        found: dict = {}
        for name, (_, rung, seed, _) in jobs.items():
            if name in done:
                found.setdefault(seed, {})[rung] = done[name]
        whole = {seed: runs for seed, runs in found.items() if len(runs) == len(bench.plan.rungs)}
        row = {"finished": len(done), "of": len(jobs), "seeds": list(seeds),
               "needed_rank_per_seed": {seed: needed_rank({r: v.test["loss"] for r, v in runs.items()})
                                        for seed, runs in whole.items()}}
        if len(whole) < len(seeds):
            return row
        row.update(unit_summary({rung: {seed: whole[seed][rung] for seed in seeds} for rung in bench.plan.rungs}))
        if third is None or third in seeds or not needs_third_seed(row, bench.plan.decisive_ratio):
            return row
        seeds = (*seeds, third)


def study_plan(sizes) -> Plan:
    """The benchmark inside `loralab study --full`: the whole `Plan` on the study's default model; on any other
    model (the tests' tiny one) three small units and three rungs, sized by the study's ``sizes``."""
    from loralab.experiments.study_plan import Sizes

    if sizes == Sizes():
        return Plan()
    small = [rank_units.RankUnit(f"trec-c{c}", f"trec-c{c}.csv", sizes.max_train, f"{c} groups", c, sizes.max_length, c)
             for c in (2, 8)] + [rank_units.RankUnit("movie", "movie", sizes.max_train, "movie", 2, sizes.max_length)]
    return Plan(model=sizes.model, units=small, rungs=(0, 1, 4), seeds=(0, 1), batch_size=sizes.batch_size, max_steps=6,
                min_steps=3, eval_steps=3, max_eval=sizes.max_eval, lr_units=("trec-c2",),
                lr_grids={"lora": (1e-3, 1e-2), "head": (1e-2,)}, allocation_units=2, predictor_examples=16)


def run_rank_benchmark(out: str | Path = "docs/study/rank", runs: str | Path = "runs/rank", workers: int = 2,
                       executor: object = "local", address: Optional[str] = None, plan: Optional[Plan] = None,
                       learning_rates_only: bool = False, archive: Optional[str | Path] = None) -> dict:
    """Every stage (cached): learning rates, ladders, predictors, the test, allocation; writes rank.json and the report.
    ``executor``: "local", "ray", or an executor `launcher.make_executor` made. ``learning_rates_only``: stop after
    the learning-rate grids and return them (no report written; the runs' records are), e.g. to settle the units
    before any ladder runs.
    ``archive``: the JSONL every finished run is recorded in and read back from (`launcher.Archive`), by default
    ``<out>/runs.jsonl`` (None) — committed beside the report, so its numbers regenerate without the run root."""
    started = time.time()
    plan = plan or Plan()
    kind = executor if isinstance(executor, str) else getattr(executor, "kind", type(executor).__name__)
    if isinstance(executor, str):
        executor = make_executor(executor, workers, threads=plan.threads, address=address)
    bench = Bench(plan, Path(runs), executor, archive=Path(archive or Path(out) / "runs.jsonl"))
    lrs = learning_rates(bench)
    if learning_rates_only:
        return lrs
    results = ladder(bench)
    summaries = {u: unit_summary(by_rung) for u, by_rung in results.items()}
    found = predictors(bench)
    tested = test_predictors(summaries, found)
    allocated = allocation(bench, summaries, found)
    report = {"plan": {**asdict(plan), "units": [asdict(u) for u in plan.units]}, "learning_rates": bench.lrs,
              "units": [{"name": u, **summaries[u], "predicted": found[u]["task"]} for u in summaries],
              "primary": found[plan.units[0].name]["primary"], "test": tested, "spread": needed_rank_spread(summaries),
              "sensitivity": sensitivity_tests(summaries, found, found[plan.units[0].name]["primary"]),
              "seed_agreement": seed_agreement(summaries),
              "allocation": allocated,
              "planted": planted_truth(bench, found),
              "seconds": time.time() - started,
              "compute": {**compute_used(bench.used.values()), "executor": kind,
                          "workers": getattr(executor, "workers", workers), "threads_per_run": plan.threads,
                          "machines": machines_used(bench)}}
    primary = tested["predictors"].get(report["primary"], {})
    report.update(spearman=primary.get("rho"), p_value=primary.get("p_value"), power=tested["power_rho_0.8"], n=tested["n"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rank.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    from loralab.experiments.rank_report import write_report

    write_report(report, out)
    return report
