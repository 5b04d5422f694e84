"""The rank benchmark's report: report.md and its figures (rank.json is `rank_benchmark`'s)."""

from __future__ import annotations

import math
from pathlib import Path

from loralab.experiments import stats
from loralab.plotting import label_points, pyplot, save


def fmt(value, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def verdict(report: dict) -> str:
    """The answer in plain words, from the primary predictor's test."""
    rho, p, n = report.get("spearman"), report.get("p_value"), report.get("n")
    power = (report.get("power") or {}).get("alpha_0.01")
    if rho is None:
        return "Not decided: too few units kept a rank to predict (see the dropped units)."
    strong = rho >= 0.8 and p < 0.01
    word = ("predicts the needed rank" if strong else "orders the needed rank somewhat" if p < 0.05 and rho > 0
            else "does not predict the needed rank")
    return (f"The pre-registered predictor ({report['primary']}) {word}: Spearman ρ = {rho:.2f} over n = {n} units, "
            f"one-sided permutation p = {p:.2g}; this test has power {fmt(power, '.2f')} to find ρ = 0.8 at α = 0.01.")


def units_table(report: dict) -> list[str]:
    names = ["gradient_effective_rank", "gradient_null_rank", "log2_classes", "data_bits", "cca_deficit", "activation_rank",
             "twonn_dimension",
             "gradient_importance", "mean_tokens"]
    lines = ["| unit | classes | seeds | needed rank r90 [95% CI] | gain over head | kept | " + " | ".join(names) + " |",
             "|---|---:|---:|---|---:|---|" + "---:|" * len(names)]
    classes = {u["name"]: u["classes"] for u in report["plan"]["units"]}
    for u in report["units"]:
        low, high = u["interval"]
        cells = [fmt(u["predicted"].get(k)) for k in names]
        lines.append(f"| {u['name']} | {classes[u['name']]} | {u['seeds']} | {fmt(u['needed_rank'])} [{fmt(low)}, {fmt(high)}] | "
                     f"{u['relative_gain']:.1%} | {'yes' if u['kept'] else 'no'} | " + " | ".join(cells) + " |")
    return lines


def tests_table(report: dict) -> list[str]:
    lines = ["| predictor | ρ | one-sided p | partial ρ given log₂ C |", "|---|---:|---:|---:|"]
    for name, row in sorted(report["test"]["predictors"].items(), key=lambda kv: -kv[1]["rho"]):
        mark = " (primary)" if name == report["primary"] else ""
        lines.append(f"| {name}{mark} | {row['rho']:.3f} | {row['p_value']:.2g} | "
                     f"{fmt(row['partial_rho_given_log2_classes'], '.3f')} |")
    return lines


def sensitivity_table(report: dict) -> list[str]:
    """Each unit's needed rank at 80% / 90% / 95% of the gain and on the monotone loss curve, then the primary
    predictor's ρ against each: beside the registered test, not instead of it."""
    keys, rows = ("r80", "r95", "r90_monotone"), report["sensitivity"]
    lines = ["## Sensitivity of the response (not confirmatory)", "",
             "| unit | r80 | r90 (registered) | r95 | r90 on the monotone curve |", "|---|---:|---:|---:|---:|"]
    for u in report["units"]:
        found = u["sensitivity"]
        lines.append(f"| {u['name']} | {fmt(found['r80'])} | {fmt(u['needed_rank'])} | {fmt(found['r95'])} | "
                     f"{fmt(found['r90_monotone'])} |")
    tests = [f"{k}: ρ = {fmt(rows[k]['rho'], '.2f')}, p = {fmt(rows[k]['p_value'], '.2g')} (n = {rows[k]['n']})"
             for k in keys]
    return [*lines, "", f"The primary predictor ({report['primary']}) against each: " + "; ".join(tests) + ".", ""]


def tuned_lr(arm: dict) -> str:
    """An allocation's chosen learning rate, marked "edge" when it still sat at its grid's edge after extension."""
    return f"{arm['lr']:g}" + (", edge" if arm.get("at_edge") else "")


def same_as_uniform(row: dict, name: str) -> bool:
    """Whether allocation ``name`` gave every layer the rank uniform gave it (an empty comparison: e.g. EVA's
    explained-variance shares round to the uniform split at a small budget)."""
    ranks = row.get("ranks") or {}
    return name in ranks and ranks[name] == ranks.get("uniform")


def allocation_table(report: dict) -> list[str]:
    """Per unit: the budget, uniform's mean test loss, each allocation's paired difference to uniform [95%
    t-interval] and its tuned learning rate, then what the intervals could detect at their n."""
    lines = ["| unit | rank budget | uniform (lr) | predicted − uniform (lr) | EVA − uniform (lr) | random − uniform (lr) |",
             "|---|---:|---:|---|---|---|"]
    detects = []
    for unit, row in report["allocation"].items():
        a = row["allocations"]
        uniform = sum(a["uniform"]["test_loss"].values()) / len(a["uniform"]["test_loss"])
        cells = [f"same ranks as uniform ({tuned_lr(a[k])})" if same_as_uniform(row, k) else
                 f"{a[k]['minus_uniform']['mean']:+.4f} [{a[k]['minus_uniform']['low']:+.4f}, "
                 f"{a[k]['minus_uniform']['high']:+.4f}] ({tuned_lr(a[k])})" for k in ("predicted", "eva", "random")]
        lines.append(f"| {unit} | {row['budget']} | {uniform:.4f} ({tuned_lr(a['uniform'])}) | " + " | ".join(cells) + " |")
        power = a["predicted"]["minus_uniform"].get("power")
        if power:
            detects.append(unit + stats.decides_text(power))
    if detects:
        lines += ["", "What the predicted − uniform interval can detect with 80% power (paired t-test): "
                  + "; ".join(detects) + "."]
    return lines


def planted_table(report: dict) -> list[str]:
    """Planted-rank units: the measured r90 against the planted k, and how each per-layer predictor tells the
    planted (value) layers from the unplanted (query) ones."""
    planted = report.get("planted") or {}
    if not planted:
        return []
    needed = {u["name"]: u for u in report["units"]}
    lines = ["## Planted-rank units: the truth known", "",
             "| unit | planted k | needed rank r90 [95% CI] | predictor | ρ with the per-layer truth | planted − unplanted |",
             "|---|---:|---|---|---:|---:|"]
    for name, row in planted.items():
        u = needed.get(name, {})
        low, high = u.get("interval", (None, None))
        for i, (predictor, v) in enumerate(row["predictors"].items()):
            lead = (f"| {name} | {row['k']} | {fmt(u.get('needed_rank'))} [{fmt(low)}, {fmt(high)}] " if i == 0
                    else "| | | ")
            lines.append(f"{lead}| {predictor} | {v['rho']:.2f} | {v['planted_minus_unplanted']:+.3g} |")
    return lines + [""]


def allocation_summary(report: dict) -> str:
    """Per allocation, against uniform: on how many units its mean test loss is lower, and on how many the paired
    95% interval lies wholly below 0 (better) or above 0 (worse)."""
    rows = report["allocation"]
    if not rows:
        return "No allocation test: no unit kept a needed rank."
    parts = []
    for name in ("predicted", "eva", "random"):
        diffs = [row["allocations"][name]["minus_uniform"] for row in rows.values()]
        lower = sum(1 for d in diffs if d["mean"] < 0)
        better = sum(1 for d in diffs if d["n"] > 1 and d["high"] < 0)  # one seed has no interval
        worse = sum(1 for d in diffs if d["n"] > 1 and d["low"] > 0)
        same = sum(same_as_uniform(row, name) for row in rows.values())
        parts.append(f"{name} lower on {lower} of {len(diffs)} units (interval below 0 on {better}, above 0 on "
                     f"{worse}{f'; the same ranks as uniform on {same}' if same else ''})")
    return "Test loss against uniform: " + "; ".join(parts) + "."


def spread_line(spread: dict | None) -> str:
    """The needed ranks' spread over the kept units, against the benchmark's target."""
    if not spread or spread["ratio"] is None:
        return "Spread of the needed ranks: no unit kept."
    (low, r_low), (high, r_high) = spread["lowest"], spread["highest"]
    met = "meets" if spread["meets_target"] else "falls short of"
    return (f"Spread of the needed ranks: {spread['ratio']:.1f}× ({low} {r_low:.3g} to {high} {r_high:.3g}), which {met} "
            f"the target of {spread['target']:g}×.")


def agreement_line(report: dict) -> str:
    """Whether the needed rank repeats across seeds (`rank_benchmark.seed_agreement`), and the ceiling it puts on any
    predictor's ρ."""
    found = report.get("seed_agreement")
    if not found or found.get("rho") is None:
        return "Seed agreement of the needed rank: too few units with two whole ladders."
    first, second = found["seeds"]
    return (f"Does the needed rank repeat across seeds? Spearman ρ of r90 from seed {first}'s ladder alone against seed "
            f"{second}'s, over the {found['n']} kept units: {found['rho']:.2f} (one-sided p = {found['p_value']:.2g}). "
            f"At {found['median_seeds']:g} seeds per unit that makes the measured r90 a reliability of "
            f"{found['reliability_of_mean']:.2f} (Spearman–Brown), so a predictor of the true needed rank could reach "
            f"ρ ≤ {found['ceiling']:.2f} against it. (A diagnostic added after the ladders finished, beside the "
            "registered test.)")


def convergence_line(report: dict) -> str:
    """How many ladder runs were still improving when the step cap stopped them (`rank_benchmark.at_step_cap`), by
    unit: their losses may be high, and a capped head (r = 0) or low rung moves its unit's r90."""
    cap, units = report["plan"]["max_steps"], report["units"]
    total, capped = sum(u["runs"] for u in units), {u["name"]: u["at_step_cap"] for u in units if u["at_step_cap"]}
    if not capped:
        return f"Convergence: all {total} ladder runs had their best validation loss before the {cap:,}-step cap."
    return (f"Convergence: {sum(map(len, capped.values()))} of {total} ladder runs had their best validation loss at "
            f"the {cap:,}-step cap (still improving when stopped; their losses may be high): "
            + "; ".join(f"{name} {', '.join(runs)}" for name, runs in capped.items()) + ".")


def compute_line(report: dict) -> str:
    c = report.get("compute")
    if not c:
        return f"Compute: {report['seconds'] / 3600:.2f} h of wall time for this invocation."
    return (f"Compute: {c['runs']} runs, {c['run_hours']:.1f} h of run time (the sum of each run's own wall clock, "
            f"{c['threads_per_run']} thread each; {c['workers']} at a time on this machine ≈ "
            f"{c['run_hours'] / max(c['workers'], 1):.1f} h elapsed). This invocation: {report['seconds'] / 3600:.2f} h "
            f"(finished runs are read back, not trained again).{machines_text(c.get('machines'))}")


def machines_text(machines: dict | None) -> str:
    """" Runs trained on: A (n), B (m)." — the CPUs behind the runs, as the archive records them."""
    if not machines:
        return ""
    return " Runs trained on: " + ", ".join(f"{m} ({n})" for m, n in sorted(machines.items(), key=lambda x: -x[1])) + "."


def plot_scatter(report: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    kept = [u for u in report["units"] if u["kept"] and u["needed_rank"]]
    x = [u["predicted"].get(report["primary"]) for u in kept]
    y = [u["needed_rank"] for u in kept]
    ax.errorbar(x, y, yerr=[[max(v - (u["interval"][0] or v), 0) for v, u in zip(y, kept)],
                            [max((u["interval"][1] or v) - v, 0) for v, u in zip(y, kept)]],
                fmt="o", capsize=3, color="tab:blue")
    label_points(ax, [(xi, yi, u["name"]) for xi, yi, u in zip(x, y, kept)], fontsize=7)
    ax.set(xlabel=f"{report['primary']} (before training)", ylabel="needed rank r90 (log scale)", yscale="log",
           title=f"ρ = {fmt(report.get('spearman'), '.2f')}, p = {fmt(report.get('p_value'), '.2g')}, "
                 f"n = {report.get('n')}")
    return save(fig, path)


def plot_gain(report: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    colors = plt.get_cmap("tab10").colors
    for i, u in enumerate(report["units"]):  # ten colours, then the same colours dashed
        means = {int(k): v for k, v in u["mean_test_loss"].items()}
        rungs = sorted(means)
        head, best = means[rungs[0]], min(means.values())
        if head - best <= 0:
            continue
        xs = [math.log2(r) if r else -1 for r in rungs]
        ax.plot(xs, [(head - means[r]) / (head - best) for r in rungs], marker="os"[i // 10 % 2], markersize=3,
                linewidth=1, linestyle=("-", "--")[i // 10 % 2], color=colors[i % 10], label=u["name"],
                alpha=1.0 if u["kept"] else 0.35)
    ax.axhline(0.9, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks([-1, 0, 1, 2, 3, 4, 5, 6], ["head", "1", "2", "4", "8", "16", "32", "64"])
    ax.set(xlabel="LoRA rank r (s = α/r, q/v)", ylabel="normalised gain g(r)", title="Test-loss gain over the head alone")
    ax.legend(fontsize=6, ncol=2)
    return save(fig, path)


def lr_lines(lrs: dict) -> list[str]:
    """One line per choice: the head's (over the lr units), then each unit's LoRA learning rate at r = 8."""
    def line(name: str, v: dict) -> str:
        return (f"- {name}: chosen {v['chosen']:g} from {v['grid']} (relative validation loss)"
                f"{' — AT AN EDGE' if v['at_edge'] else ''}")
    return [line("head (every unit)", lrs["head"]), *(line(f"LoRA, {u}", v) for u, v in lrs["lora"].items())]


def listed(values) -> str:
    """Seeds or rungs as "0, 1, 2" (the same from the run's tuples as from rank.json's lists)."""
    return ", ".join(str(v) for v in values)


def write_report(report: dict, out: Path) -> None:
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_scatter(report, figures / "needed_vs_predicted.png")
    plot_gain(report, figures / "gain_curves.png")
    lrs = report["learning_rates"]
    lines = ["# The rank benchmark: is the rank a task needs predictable before training?", "",
             verdict(report), "",
             f"Needed rank: r90 on the held-out loss (see README.md for the definition), {len(report['units'])} units, "
             f"{report['test']['n']} kept; seeds {listed(report['plan']['seeds'])} (and seed {report['plan']['third_seed']} "
             f"where the r90 interval spans more than ×{report['plan']['decisive_ratio']:g}); rungs "
             f"{listed(report['plan']['rungs'])}.", "",
             spread_line(report.get("spread")), "", agreement_line(report), "", convergence_line(report), "",
             "![needed vs predicted](figures/needed_vs_predicted.png)", "", *units_table(report), "",
             "![gain curves](figures/gain_curves.png)", "", "## Every predictor", "", *tests_table(report), "",
             f"Power of the test for a population ρ = 0.8: α = 0.01: {fmt(report['power'].get('alpha_0.01'), '.2f')}, "
             f"α = 0.05: {fmt(report['power'].get('alpha_0.05'), '.2f')} (n = {report['n']}).", "",
             *sensitivity_table(report), *planted_table(report),
             "## Learning rates", "",
             *lr_lines(lrs), "",
             "## Allocation at equal rank units (test loss; differences paired over seeds, 95% t-intervals)", "",
             *allocation_table(report), "", allocation_summary(report), "", compute_line(report)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
