"""The d90 sweep (``loralab intrinsic``): SAID/DID over a grid of d and seeds against full fine-tuning.

Trains a full-FT baseline (unless given one) and the subspace method at every d of the grid
and seed, refines d90 by bisection (`loralab.subspace.d90.find_d90`), and writes
``intrinsic.json``, ``intrinsic.md`` and ``intrinsic.png`` (metric vs d on a log axis, seed
spread, the threshold line). The decision uses the mean over seeds of the best-epoch
validation accuracy; test accuracy is reported beside it. SAID spends one of the d values on
each of the m moving tensors, so grid points with d ≤ m run DID and are marked as such. Runs
are cached units (`launcher`), so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from loralab.errors import ConfigError, DataError
from loralab.experiments.launcher import Unit, make_executor, run_units
from loralab.rundir import RunDir, RunResult
from loralab.subspace.d90 import find_d90
from loralab.train.config import SubspaceSettings, TrainConfig


@dataclass
class SweepConfig:
    """An intrinsic-dimension sweep.

    Attributes:
        model: Model name or directory.
        data: Classification dataset name or file.
        dims: The grid of d values (comma-separated on the command line).
        seeds: Seeds per d (projection, head init and data order).
        out: Output directory (runs go to out/runs).
        method: said or did.
        projection: fastfood, dense or sparse.
        lr: Learning rate of the subspace runs.
        lr_ref_d: If set, the lr at d is lr·√(lr_ref_d/d): Adam moves every coordinate of θ_d
            by about lr per step, so ‖P·Δθ_d‖ ≈ lr·√d grows with d unless the lr shrinks.
        full_lr: Learning rate of the full fine-tuning baseline.
        baseline: An existing full-FT run directory to use instead of training one.
        epochs: Epochs per run.
        max_train: Training examples per run.
        max_eval: Validation/test examples per run.
        max_length: Token limit.
        batch_size: Batch size.
        refine: Bisection steps between grid points.
        threshold: Fraction of the full-FT metric that defines d90.
        workers: Runs at a time (cores are split between them).
        executor: local (worker processes here), ray (a Ray cluster: --address, RAY_ADDRESS, or a local one),
            or inline (one run after another in this process, for debugging).
        address: With --executor ray, the cluster's address (e.g. auto, or ray://head:10001).
    """

    model: str = "minilm"
    data: str = "movie"
    dims: list[int] = field(default_factory=lambda: [10, 30, 100, 300, 1000, 3000])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: str = "runs/intrinsic"
    method: str = "said"
    projection: str = "fastfood"
    lr: float = 0.3
    lr_ref_d: Optional[int] = None
    full_lr: float = 1e-4
    baseline: Optional[str] = None
    epochs: int = 2
    max_train: int = 1000
    max_eval: Optional[int] = 500
    max_length: int = 64
    batch_size: int = 16
    refine: int = 1
    threshold: float = 0.9
    workers: int = 1
    executor: str = "local"
    address: Optional[str] = None

    def __post_init__(self) -> None:
        if self.method not in ("said", "did"):
            raise ConfigError(f"--method must be said or did, got {self.method!r}.")
        if not self.dims or any(not isinstance(d, int) or d < 1 for d in self.dims):
            raise ConfigError(f"--dims needs positive integers, got {self.dims}.")
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed.")
        if self.lr_ref_d is not None and self.lr_ref_d < 1:
            raise ConfigError(f"--lr-ref-d is the d at which --lr applies, a positive integer; got {self.lr_ref_d}.")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"--threshold is a fraction in (0, 1], got {self.threshold}.")


def moving_tensors(model: str, data: str) -> int:
    """m: how many parameter tensors a subspace run moves (SAID needs d > m)."""
    from loralab import data as datasets
    from loralab import models

    task, labels, _ = datasets.read_all(data)
    if task != "classification":
        raise DataError(f"d90 needs a classification dataset; {data!r} is {task}.")
    net, _ = models.load(model, task, num_labels=len(labels))
    return sum(1 for _ in net.parameters())


def subspace_lr(cfg: SweepConfig, d: Optional[int]) -> float:
    """The lr of a subspace run at d (scaled by √(lr_ref_d/d) when lr_ref_d is set)."""
    if cfg.lr_ref_d is None or d is None:
        return cfg.lr
    return float(f"{cfg.lr * math.sqrt(cfg.lr_ref_d / d):.4g}")


def run_config(cfg: SweepConfig, method: str, seed: int, d: Optional[int] = None) -> TrainConfig:
    """The TrainConfig of one sweep run (full FT when ``d`` is None)."""
    common = dict(model=cfg.model, data=cfg.data, method=method, seed=seed, epochs=cfg.epochs,
                  max_train=cfg.max_train, max_eval=cfg.max_eval, max_length=cfg.max_length,
                  batch_size=cfg.batch_size)
    if d is None:
        return TrainConfig(**common, lr=cfg.full_lr)
    return TrainConfig(**common, lr=subspace_lr(cfg, d), subspace=SubspaceSettings(d=d, projection=cfg.projection),
                       warmup=0.1)


class Sweep:
    """Trains and remembers the (d, seed) results of one sweep."""

    def __init__(self, cfg: SweepConfig, m: int, executor):
        self.cfg, self.m, self.executor = cfg, m, executor
        self.points: dict[int, dict] = {}

    def method_for(self, d: int) -> str:
        return "did" if self.cfg.method == "said" and d <= self.m else self.cfg.method

    def measure(self, d: int) -> float:
        """Mean validation accuracy over seeds at d (trains the missing runs)."""
        if d not in self.points:
            method = self.method_for(d)
            units = [Unit(f"{method}-d{d}-s{seed}", run_config(self.cfg, method, seed, d)) for seed in self.cfg.seeds]
            results = run_units(units, Path(self.cfg.out) / "runs", self.executor, desc=f"d={d}")
            runs = [{"seed": u.config.seed, "validation": results[u.name].validation["accuracy"],
                     "test": results[u.name].test["accuracy"], "wall_time_s": results[u.name].wall_time_s}
                    for u in units]
            self.points[d] = summarise_point(d, method, runs)
        return self.points[d]["validation_mean"]


def summarise_point(d: int, method: str, runs: list[dict]) -> dict:
    vals, tests = [r["validation"] for r in runs], [r["test"] for r in runs]
    return {"d": d, "method": method, "runs": runs,
            "validation_mean": statistics.mean(vals), "validation_min": min(vals), "validation_max": max(vals),
            "test_mean": statistics.mean(tests), "test_min": min(tests), "test_max": max(tests)}


def plot(report: dict, path: Path) -> Optional[Path]:
    from matplotlib.ticker import NullFormatter

    from loralab.plotting import pyplot, save

    plt = pyplot()
    points = sorted(report["points"], key=lambda p: p["d"])
    ds = [p["d"] for p in points]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.fill_between(ds, [p["validation_min"] for p in points], [p["validation_max"] for p in points],
                    alpha=0.2, label="seed range (validation)")
    ax.plot(ds, [p["validation_mean"] for p in points], marker="o", label="validation accuracy (mean over seeds)")
    ax.plot(ds, [p["test_mean"] for p in points], marker="s", linestyle=":", label="test accuracy (mean)")
    for p in points:
        ax.scatter([p["d"]] * len(p["runs"]), [r["validation"] for r in p["runs"]], s=10, color="grey", zorder=3)
    full = report["full"]["validation"]
    ax.axhline(full, color="black", linewidth=1, label=f"full fine-tuning ({full:.3f})")
    ax.axhline(report["threshold_value"], color="red", linestyle="--", linewidth=1,
               label=f"{report['threshold']:.0%} of full FT")
    if report["d90"]:
        ax.axvline(report["d90"], color="red", linewidth=1, alpha=0.6, label=f"d90 = {report['d90']}")
    low, high = ax.get_ylim()
    ax.set_ylim(low, max(high, full + 0.02))  # keep the full-FT line off the frame
    ax.set_xscale("log")
    ax.set_xticks(ds, [f"{d:,}" for d in ds])  # the swept d as plain numbers (not 2×10¹, 3×10¹, … overlapping)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("subspace dimension d (log)")
    ax.set_ylabel("accuracy")
    names = [Path(str(report["config"][k])).name for k in ("model", "data")]  # a name, not a long local path
    ax.set_title(f"{report['config']['method'].upper()} on {names[0]} / {names[1]}")
    ax.legend(fontsize=8, loc="best")
    return save(fig, path)


def markdown(report: dict) -> str:
    cfg, d90 = report["config"], report["d90"]
    lines = [
        f"# Intrinsic dimension: {cfg['model']} on {cfg['data']}",
        "",
        f"{cfg['method'].upper()} with a {cfg['projection']} projection, seeds {cfg['seeds']}, {cfg['max_train']} "
        f"training examples, {cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}, lr {cfg['lr']:g}"
        + (f"·√({cfg['lr_ref_d']}/d)" if cfg.get("lr_ref_d") else "")
        + f" (full FT lr {cfg['full_lr']:g}). "
        f"Full fine-tuning: validation accuracy {report['full']['validation']:.4f}, test {report['full']['test']:.4f}; "
        f"threshold {report['threshold']:.0%} = {report['threshold_value']:.4f}. SAID needs d > m = {report['m']} "
        "(one scale per moving tensor); smaller d run DID.",
        "",
        f"**d90 = {d90}**" if d90 else f"**d90 > {max(cfg['dims'])}: no d of the grid reached the threshold**",
        "" if not d90 else f"(bracket: d = {report['d90_below']} misses, d = {d90} reaches it)",
        "",
        "| d | method | validation mean | min | max | test mean | reaches threshold |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for p in sorted(report["points"], key=lambda q: q["d"]):
        ok = "yes" if p["validation_mean"] >= report["threshold_value"] else "no"
        lines.append(f"| {p['d']} | {p['method']} | {p['validation_mean']:.4f} | {p['validation_min']:.4f} | "
                     f"{p['validation_max']:.4f} | {p['test_mean']:.4f} | {ok} |")
    lines += ["", "![accuracy vs d](intrinsic.png)", "", f"Sweep time {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


BASELINE_MUST_MATCH = ("model", "data", "max_train", "max_eval", "max_length", "epochs", "batch_size")


def baseline_result(cfg: SweepConfig) -> RunResult:
    """The result of the --baseline run, which must be a finished full fine-tuning run of the sweep's model,
    data and sizes (a baseline trained on other settings makes d90 meaningless)."""
    run = RunDir(cfg.baseline)
    result = run.result() if run.is_run() else None
    if result is None:
        raise ConfigError(f"--baseline {cfg.baseline} is not a finished `loralab train` run (no readable result.json).")
    if result.method != "full":
        raise ConfigError(f"--baseline {cfg.baseline} is a {result.method!r} run; d90 is measured against full "
                          "fine-tuning (--method full).")
    wanted = run_config(cfg, "full", cfg.seeds[0]).to_dict()
    given = result.config
    differ = [f"{k}: baseline {given.get(k)!r}, sweep {wanted[k]!r}" for k in BASELINE_MUST_MATCH
              if str(given.get(k)) != str(wanted[k]) and not (k in ("model", "data") and
                                                            Path(str(given.get(k))).name == Path(str(wanted[k])).name)]
    if differ:
        raise ConfigError(f"--baseline {cfg.baseline} was trained on other settings than the sweep ({'; '.join(differ)}); "
                          "train the sweep with the baseline's settings, or drop --baseline to train a matching one.")
    return result


def full_baseline(cfg: SweepConfig, executor) -> RunResult:
    if cfg.baseline:
        return baseline_result(cfg)
    unit = Unit(f"full-s{cfg.seeds[0]}", run_config(cfg, "full", cfg.seeds[0]))
    return run_units([unit], Path(cfg.out) / "runs", executor, desc="full FT baseline")[unit.name]


def run_sweep(cfg: SweepConfig, executor=None) -> dict:
    """Run the sweep and write intrinsic.json / .md / .png under ``cfg.out``; return the report."""
    started = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    executor = executor or make_executor(cfg.executor, cfg.workers, address=cfg.address)
    m = moving_tensors(cfg.model, cfg.data)
    full = full_baseline(cfg, executor)
    threshold_value = cfg.threshold * full.validation["accuracy"]
    sweep = Sweep(cfg, m, executor)
    d90, below = find_d90(sweep.measure, cfg.dims, threshold_value, cfg.refine)
    report = {
        "config": asdict(cfg), "m": m, "threshold": cfg.threshold, "threshold_value": threshold_value,
        "full": {"validation": full.validation["accuracy"], "test": full.test["accuracy"],
                 "trainable_params": full.trainable_params},
        "d90": d90, "d90_below": below, "points": [sweep.points[d] for d in sorted(sweep.points)],
        "seconds": time.time() - started,
    }
    (out / "intrinsic.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "intrinsic.png")
    text = markdown(report)
    (out / "intrinsic.md").write_text(text)
    print(text)
    return report
