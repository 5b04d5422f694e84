"""A pilot of the planted-rank design "last-value" (`rank_units.build_planted_subspace`): is the needed rank of such a
task set by the planted k? Not part of the rank benchmark's registered test — it decides whether planted units are
worth registering in a next benchmark.

Two units, k = 1 and k = 16 (C = 16 classes, the 33,538 pooled short texts, 10,000 training examples), each trained
at seed 0 with the benchmark's recipe (`rank_benchmark.config`: early stopping on validation loss, 300–2,000 steps,
s = α/r): the head alone at the benchmark's head learning rate, and LoRA r ∈ {1, 16} at lr ∈ {1e-3, 3e-3} (the
better on validation loss is kept). Prediction, fixed before the runs (docs/study/rank/README.md): the design is
rank-sensitive when on k = 16, r = 16 lowers the head's test loss by ≥ 5% and r = 1 reaches < 90% of that gain, while
on k = 1, r = 1 reaches ≥ 90% of r = 16's gain.

    python -c "from loralab.experiments.planted_pilot import run; run()"
"""

from __future__ import annotations

import json
from pathlib import Path

from loralab.experiments import rank_benchmark as rb
from loralab.experiments import rank_units
from loralab.io.atomic import atomic_write_json

KS, CLASSES, TRAIN = (1, 16), 16, 10_000
RANKS, LORA_LRS, HEAD_LR = (1, 16), (1e-3, 3e-3), 3e-2  # HEAD_LR: the benchmark's chosen head lr (rank.json)


def pilot_units() -> list[rank_units.RankUnit]:
    return [rank_units.RankUnit(f"planted2-k{k}", f"planted2-k{k}.csv", TRAIN, f"planted rank {k} in the last value "
                                f"projection, {CLASSES}-class subspace readout", CLASSES, 64, planted=k,
                                design="last-value") for k in KS]


def gain_share(losses: dict[int, float]) -> dict:
    """g(r) = (L_0 − L_r)/(L_0 − L_16) for r = 1, and r = 16's gain over the head as a share of L_0."""
    head, low, high = losses[0], losses[RANKS[0]], losses[RANKS[-1]]
    return {"g_r1": (head - low) / (head - high) if head != high else None, "gain_r16": (head - high) / head}


def verdict(found: dict[int, dict]) -> str:
    """The prediction above, read from `gain_share` per k."""
    high, low = found[KS[-1]], found[KS[0]]
    sensitive = (high["gain_r16"] >= rb.MIN_GAIN and high["g_r1"] is not None and high["g_r1"] < rb.LEVEL
                 and low["g_r1"] is not None and low["g_r1"] >= rb.LEVEL)
    return "rank-sensitive" if sensitive else "not rank-sensitive"


def run(root: str = "runs/planted_pilot", out: str = "docs/study/rank/planted_pilot.json", workers: int = 2) -> dict:
    """Train the pilot (cached under ``root``), write ``out`` and return it."""
    plan = rb.Plan(units=pilot_units())
    bench = rb.Bench(plan, Path(root), rb.make_executor("local", workers, plan.threads))
    jobs = {}
    for unit in plan.units:
        data = bench.data(unit)
        jobs[(unit.planted, 0, HEAD_LR)] = (rb.unit_name(unit, 0, 0, HEAD_LR), rb.config(plan, unit, data, 0, 0, HEAD_LR))
        for r in RANKS:
            for lr in LORA_LRS:
                jobs[(unit.planted, r, lr)] = (rb.unit_name(unit, r, 0, lr), rb.config(plan, unit, data, r, 0, lr))
    results = bench.run(list(jobs.values()), "planted pilot")
    report = {"design": __doc__.split("\n\n")[1], "units": {}}
    for k in KS:
        best = {}
        for r in (0, *RANKS):
            runs = {lr: results[name] for (kk, rr, lr), (name, _) in jobs.items() if kk == k and rr == r}
            lr = min(runs, key=lambda x: runs[x].validation["loss"])
            best[r] = {"lr": lr, "validation_loss": runs[lr].validation["loss"], "test_loss": runs[lr].test["loss"],
                       "test_accuracy": runs[lr].test["accuracy"], "steps": runs[lr].steps,
                       "grid": {f"{x:g}": runs[x].validation["loss"] for x in runs}}
        report["units"][k] = {"rungs": best, **gain_share({r: v["test_loss"] for r, v in best.items()})}
    report["verdict"] = verdict(report["units"])
    atomic_write_json(Path(out), report)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "rungs"} for k, v in report["units"].items()}),
          report["verdict"])
    return report
