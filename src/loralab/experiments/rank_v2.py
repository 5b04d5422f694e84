"""Rank benchmark v2 (pre-registered in docs/study/rank/README.md, "Benchmark v2: dense units"): the 13 registered
units (`rank.json`, `predictors/<unit>.json`) and the four dense units (`dense_units.json`, `predictors/dense-k<k>.json`)
read together. H1-v2: the registered primary predictor against log₂ r90 over every kept unit, one-sided Spearman
permutation test at α = 0.01 with its power at ρ = 0.8. Secondary: the spread of r90 against 16×; within the dense
units, r90 and the primary against the planted k (n = 4, descriptive); where the planted layer ranks among the 12
query/value layers on each per-layer predictor. Nothing is trained here: it reads the files the two benchmarks wrote.

    python -c "from loralab.experiments.rank_v2 import run; run()"
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from loralab.analysis.rank_predictors import PRIMARY
from loralab.experiments import rank_benchmark as rb
from loralab.experiments import stats
from loralab.io.atomic import atomic_write_json, atomic_write_text

# Comparable across a cross-entropy and a mean-squared-error unit: counts of directions, not sizes of a gradient.
SCALE_FREE = ("gradient_effective_rank", "gradient_null_rank", "activation_rank", "twonn_dimension")


def combined(rank: dict, dense: dict) -> dict[str, dict]:
    """{unit: {"kind", "needed_rank", "interval", "kept", "seeds", "k"}} over both benchmarks (k: dense units only)."""
    out = {u["name"]: {"kind": "registered", **{key: u[key] for key in ("needed_rank", "interval", "kept", "seeds")}}
           for u in rank["units"]}
    for name, u in dense["units"].items():
        out[name] = {"kind": "dense", "k": u["k"], **{key: u[key] for key in ("needed_rank", "interval", "kept", "seeds")}}
    return out


def read_predictors(names, home: Path) -> dict[str, dict]:
    return {name: json.loads((home / f"{name}.json").read_text()) for name in names}


def primary_test(units: dict[str, dict], found: dict[str, dict]) -> dict:
    """`rank_benchmark.test_predictors` over every kept unit, the scale-free predictors only (the partial ρ given
    log₂ C is left out: a dense unit has no classes)."""
    scale_free = {u: {**f, "task": {k: v for k, v in f["task"].items() if k in SCALE_FREE}} for u, f in found.items()}
    tested = rb.test_predictors(units, scale_free)
    for row in tested["predictors"].values():
        row.pop("partial_rho_given_log2_classes", None)
    primary = tested["predictors"].get(PRIMARY, {})
    return {**tested, "primary": PRIMARY, "spearman": primary.get("rho"), "p_value": primary.get("p_value"),
            "supported": primary.get("rho") is not None and primary["rho"] > 0 and primary["p_value"] < 0.01}


def within_dense(units: dict[str, dict], found: dict[str, dict]) -> dict:
    """Over the kept dense units: Spearman ρ of log₂ r90 with k and of the primary (task level, and at the planted
    layer) with k, with exact one-sided permutation p (n! pairings); n = 4 gives p ≥ 1/24."""
    dense = [u for u, s in units.items() if s["kind"] == "dense" and s["kept"] and s["needed_rank"] is not None]
    ks = [units[u]["k"] for u in dense]
    series = {"needed_rank": [math.log2(units[u]["needed_rank"]) for u in dense],
              f"{PRIMARY} (task)": [found[u]["task"][PRIMARY] for u in dense],
              f"{PRIMARY} (planted layer)": [found[u]["layers"][found[u]["planted"]][PRIMARY] for u in dense]}
    out = {"units": dense, "n": len(dense)}
    for name, values in series.items():
        out[name] = stats.spearman_test(ks, values, permutations=20_000) if len(dense) >= 3 and len(set(values)) >= 2 else None
    return out


def planted_position(found: dict[str, dict], dense: list[str]) -> dict[str, dict[str, int]]:
    """{unit: {predictor: the planted layer's place among the query/value layers, 1 = the highest value}}."""
    out = {}
    for unit in dense:
        layers, planted = found[unit]["layers"], found[unit]["planted"]
        out[unit] = {name: 1 + sum(row[name] > layers[planted][name] for row in layers.values())
                     for name in layers[planted] if isinstance(layers[planted][name], (int, float))}
    return out


def run(rank: str = "docs/study/rank/rank.json", dense: str = "docs/study/rank/dense_units.json",
        home: str = "docs/study/rank/predictors", out: str = "docs/study/rank/v2.json",
        figure: str = "docs/study/rank/figures/v2.png") -> dict:
    """Read both benchmarks, write ``out``, its Markdown beside it (``v2.md``) and ``figure``; return the report."""
    units = combined(json.loads(Path(rank).read_text()), json.loads(Path(dense).read_text()))
    found = read_predictors(units, Path(home))
    report = {"design": __doc__.split("\n\n")[0], "units": {u: {**s, "predicted": {k: found[u]["task"].get(k)
                                                                                   for k in SCALE_FREE}}
                                                             for u, s in units.items()},
              "test": primary_test(units, found), "spread": rb.needed_rank_spread(units),
              "within_dense": within_dense(units, found)}
    report["planted_position"] = planted_position(found, report["within_dense"]["units"])
    report["layers_probed"] = max((len(found[u]["layers"]) for u in report["within_dense"]["units"]), default=None)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out), report)
    draw(report, found, Path(figure))
    atomic_write_text(Path(out).with_suffix(".md"), markdown(report))
    print(markdown(report))
    return report


def fmt(value, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def verdict(test: dict) -> str:
    rho, p, n = test["spearman"], test["p_value"], test["n"]
    if rho is None:
        return "Not decided: fewer than two kept units carry the primary predictor."
    power = test["power_rho_0.8"]["alpha_0.01"]
    word = "supported" if test["supported"] else "not supported"
    return (f"H1-v2 is **{word}**: {test['primary']} against log₂ r90 over n = {n} kept units, Spearman ρ = {rho:.2f}, "
            f"one-sided permutation p = {p:.2g} (α = 0.01); the test's power at ρ = 0.8 is {fmt(power, '.2f')}.")


def markdown(report: dict) -> str:
    """The v2 reading as Markdown: verdict, spread, the dense units against k, the units table."""
    spread, dense = report["spread"], report["within_dense"]
    lines = ["# Rank benchmark v2: the registered units and the dense planted units", "", verdict(report["test"]), ""]
    if spread["ratio"] is not None:
        (low, low_r), (high, high_r) = spread["lowest"], spread["highest"]
        lines += [f"Spread of r90 over the kept units: {high} {high_r:.3g} / {low} {low_r:.3g} = **{spread['ratio']:.1f}×** "
                  f"(target {spread['target']:.0f}×: {'met' if spread['meets_target'] else 'not met'}; intervals: "
                  f"{high} {interval(report['units'][high])}, {low} {interval(report['units'][low])}).", ""]
    for name in ("needed_rank", f"{PRIMARY} (task)", f"{PRIMARY} (planted layer)"):
        if dense.get(name):
            lines.append(f"- Dense units, {name} against k: Spearman ρ = {dense[name]['rho']:.2f}, exact one-sided "
                         f"p = {dense[name]['p_value']:.2g} (n = {dense['n']}; descriptive).")
    layers = report.get("layers_probed")
    for unit, places in report["planted_position"].items():
        lines.append(f"- {unit}: the planted layer's place among the {layers} query/value layers (1 = highest) — "
                     + ", ".join(f"{k} {v}" for k, v in places.items()) + ".")
    lines += ["", "| unit | kind | seeds | r90 [95% seed bootstrap] | kept | " + " | ".join(SCALE_FREE) + " |",
              "|---|---|---:|---|---|" + "---:|" * len(SCALE_FREE)]
    for name, u in sorted(report["units"].items(), key=lambda item: item[1]["needed_rank"] or 0):
        lines.append(f"| {name} | {u['kind']} | {u['seeds']} | {fmt(u['needed_rank'])} {interval(u)} | "
                     f"{'yes' if u['kept'] else 'no'} | " + " | ".join(fmt(u["predicted"][k]) for k in SCALE_FREE) + " |")
    return "\n".join(lines) + "\n"


def interval(unit: dict) -> str:
    low, high = unit["interval"]
    return f"[{fmt(low)}, {fmt(high)}]"


def draw(report: dict, found: dict[str, dict], path: Path) -> Path:
    """Left: log r90 (95% interval) against the primary, registered units grey, dense units coloured. Right: the
    dense units' r90 against the planted k, the line r90 = k dotted."""
    from loralab.plotting import label_points, pyplot, save

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.2))
    labels = []
    for name, u in report["units"].items():
        if u["needed_rank"] is None:
            continue
        low, high = (v if v is not None else u["needed_rank"] for v in u["interval"])
        dense = u["kind"] == "dense"
        x = u["predicted"][PRIMARY]
        left.errorbar([x], [u["needed_rank"]], yerr=[[u["needed_rank"] - low], [high - u["needed_rank"]]],
                      fmt="s" if dense else "o", color="tab:red" if dense else "0.55", capsize=2, markersize=5)
        labels.append((x, u["needed_rank"], name))
        if dense:
            right.errorbar([u["k"]], [u["needed_rank"]], yerr=[[u["needed_rank"] - low], [high - u["needed_rank"]]],
                           fmt="s", color="tab:red", capsize=3)
    label_points(left, labels)
    test = report["test"]
    left.minorticks_off()
    left.set(yscale="log", xlabel=f"{PRIMARY} (task level, before training)", ylabel="needed rank r90 (test loss)",
             title=f"H1-v2: ρ = {fmt(test['spearman'], '.2f')}, p = {fmt(test['p_value'], '.2g')}, n = {test['n']}")
    ks = [4, 16, 32, 64]
    right.plot(ks, ks, linestyle=":", color="grey", label="r90 = k")
    right.set(xscale="log", yscale="log", ylim=(0.7, 90), xlabel="planted rank k", ylabel="needed rank r90",
              title="Dense units: needed rank against the planted rank")
    right.minorticks_off()
    right.set_xticks(ks, [str(k) for k in ks])
    right.set_yticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
    left.set_yticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
    left.plot([], [], "o", color="0.55", label="registered units (v1)")
    left.plot([], [], "s", color="tab:red", label="dense planted units")
    left.legend(fontsize=7, loc="upper left")
    right.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path)


def dense_status(archive: str = "docs/study/rank/dense_runs.jsonl", root: str = "runs/dense_pilot") -> dict:
    """Where the dense units stand from their archive (nothing trained): per unit the lr grid at r = 4, seed 0
    (validation MSE; the chosen lr once no edge is left to extend), and per seed the rungs finished and, for a
    whole ladder, that seed's r90 against the exact bias-alone rung."""
    from loralab.experiments import dense_units as du

    version = du.version()
    records = [json.loads(line) for line in Path(archive).read_text().splitlines()] if Path(archive).exists() else []
    results = [r["result"] for r in records if r["run"].endswith(version)]
    out = {}
    for k in du.KS:
        mine = [r for r in results if r["k"] == k]
        grid = {r["lr"]: r["validation_loss"] for r in mine if r["r"] == du.GRID_RANK and r["seed"] == 0}
        best = min(grid, key=grid.get) if grid else None
        settled = best is not None and du.widened(sorted(grid), best) is None
        row = {"grid": {f"{lr:g}": v for lr, v in sorted(grid.items())}, "lr": best if settled else None, "seeds": {}}
        for seed in sorted({r["seed"] for r in mine}):
            rungs = {r["r"]: r["test_loss"] for r in mine if r["seed"] == seed and r["lr"] == row["lr"]}
            whole = set(rungs) == set(du.RANKS)
            head = du.bias_alone(k, Path(root))["test_loss"] if whole else None
            row["seeds"][seed] = {"rungs": sorted(rungs), "r90": rb.needed_rank({0: head, **rungs}) if whole else None}
        out[f"dense-k{k}"] = row
    return out
