"""One figure per claim of the full study, drawn from study.json's numbers (see `study_report`)."""

from __future__ import annotations

import math
from pathlib import Path

from loralab.experiments.claims_geometry import kept_over_half, lost_to_sum
from loralab.experiments.claims_training import d90_text
from loralab.plotting import label_points, pyplot, save


def by_int_key(mapping: dict) -> list[tuple[int, dict]]:
    """[(key, value)] sorted by integer key (study.json turns int keys into strings)."""
    return sorted((int(k), v) for k, v in mapping.items())


def band_panels(rows: list[dict], width: float):
    """(figure, one axis per row) for per-task panels."""
    fig, axes = pyplot().subplots(1, len(rows), figsize=(width * len(rows), 3.4), squeeze=False)
    return fig, axes[0]


def band(ax, xs: list, cis: list[dict], label: str) -> None:
    """Mean with its 95% CI band."""
    ax.fill_between(xs, [ci["low"] for ci in cis], [ci["high"] for ci in cis], alpha=0.2)
    ax.plot(xs, [ci["mean"] for ci in cis], marker="o", label=label)


def errorbar(ax, x, ci: dict, **kw):
    ax.errorbar([x], [ci["mean"]], yerr=[[ci["mean"] - ci["low"]], [ci["high"] - ci["mean"]]], capsize=3, **kw)


def grouped_bar(ax, group: int, k: int, n: int, ci: dict, color: str, label) -> None:
    """Bar k of the n bars at x = ``group`` (width 0.8 shared), its height ``ci``'s mean with its 95% CI."""
    width = 0.8 / n
    x = group + (k - (n - 1) / 2) * width
    ax.bar(x, ci["mean"], width, color=color, label=label)
    errorbar(ax, x, ci, color="black")


def claim_1(c: dict, path: Path):
    """Test accuracy per task: full FT, LoRA r=8 on q/v (the registered arm, its ratio printed above it) and, when
    the study ran it, LoRA r=8 on every linear layer."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    arms = [("full", "tab:grey", "full fine-tuning"), ("lora_r8", "tab:blue", "LoRA r=8 (q/v)"),
            ("all_linear_r8", "tab:cyan", "LoRA r=8 (all linear)")]
    arms = [a for a in arms if all(a[0] in row for row in c["rows"])]
    for i, row in enumerate(c["rows"]):
        for a_index, (key, color, label) in enumerate(arms):
            grouped_bar(ax, i, a_index, len(arms), row[key], color, label if i == 0 else None)
        top = max(row[key]["high"] for key, _, _ in arms)
        ax.annotate(f"q/v {row['ratio']['mean']:.3f}×", (i, min(top, 1.0) + 0.01), ha="center", fontsize=8)
    ax.set_xticks(range(len(c["rows"])), [r["task"] for r in c["rows"]])
    low = min(r[key]["low"] for r in c["rows"] for key, _, _ in arms)
    ax.set(ylabel="test accuracy (mean, 95% CI)", ylim=(max(0, low - 0.05), 1.06),
           title=f"LoRA r=8 / full FT (label: ratio); q/v {c['params_fewer']:.0f}× fewer trainable parameters")
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path)


def band_figure(c: dict, path: Path, width: float, series, lines, marker_key: str, title, xlabel: str,
                ylabel: str, label: str, integer_ticks: bool = False):
    """One panel per task: ``series(row)`` → (xs, CIs) as a band, ``lines(row)`` → [(y, style)] reference lines,
    a vertical marker at ``row[marker_key]``, log x."""
    fig, axes = band_panels(c["rows"], width)
    for ax, row in zip(axes, c["rows"]):
        xs, cis = series(row)
        band(ax, xs, cis, label)
        for y, style in lines(row):
            ax.axhline(y, linewidth=1, **style)
        if row[marker_key]:
            ax.axvline(row[marker_key], color="red", alpha=0.4)
        ax.set(xscale="log", xlabel=xlabel, title=title(row))
        if integer_ticks:
            ax.set(xticks=xs, xticklabels=[str(x) for x in xs])
            ax.minorticks_off()
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    return save(fig, path)


def claim_2(c: dict, path: Path):
    """Each benchmark unit's r90 with its seed-bootstrap interval (open ends drawn to the ladder's edges)."""
    plt = pyplot()
    rows = c.get("rows") or []
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.32 * max(len(rows), 1)))
    for i, row in enumerate(rows):
        low, high = row["interval"]
        low, high = low or 0.5, high or 64
        ax.plot([low, high], [i, i], color="tab:blue", linewidth=2, solid_capstyle="butt")
        ax.plot([row["needed_rank"]], [i], marker="o", color="black")
    ax.axvline(8, color="red", linestyle="--", linewidth=1, label="r = 8 ('small')")
    ax.set_yticks(range(len(rows)), [r["unit"] for r in rows])
    ax.set(xscale="log", xlabel="needed rank r90 (held-out loss; line: seed-bootstrap 95%)",
           title=f"small (≤ 8): {c.get('small', 'n/a')}; task-dependent: {c.get('task_dependent', 'n/a')}")
    ax.set_xticks([0.5, 1, 2, 4, 8, 16, 32, 64], ["head", "1", "2", "4", "8", "16", "32", "64"])
    ax.minorticks_off()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axis: never over an interval
    return save(fig, path)


def claim_3(c: dict, path: Path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ranks = [row["rank"] for row in c["rows"]]
    for t_index, task in enumerate(c["rows"][0]["per_task"]):
        xs = [math.log2(r) + 0.06 * (t_index - 1.5) for r in ranks]
        ax.plot(xs, [row["per_task"][task]["mean"] for row in c["rows"]], marker=".", linestyle=":", label=task)
    for row in c["rows"]:
        errorbar(ax, math.log2(row["rank"]), row["pooled"], color="black", marker="s")
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks([math.log2(r) for r in ranks], [str(r) for r in ranks])
    ax.set(xlabel="rank r", ylabel="DoRA − LoRA test accuracy",
           title="paired over seeds; black: pooled over tasks, 95% CI")
    ax.legend(fontsize=7)
    return save(fig, path)


def claim_4(c: dict, path: Path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    names = list(c["rows"][0]["placements"])
    for p_index, name in enumerate(names):
        for t_index, row in enumerate(c["rows"]):
            grouped_bar(ax, t_index, p_index, len(names), row["placements"][name], f"C{p_index}",
                        f"{name} ({c['trainable_params'][name]:,} params)" if t_index == 0 else None)
    ax.set_xticks(range(len(c["rows"])), [r["task"] for r in c["rows"]])
    low = min(ci["low"] for r in c["rows"] for ci in r["placements"].values())
    ax.set(ylabel="test accuracy (mean, 95% CI)", ylim=(max(0, low - 0.05), 1.0),
           title="placement at ≈ equal trainable parameters (head included)")
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path)


def d90_title(row: dict) -> str:
    text = d90_text(row)
    return f"{row['task']}: d90 {text}" if text[0] in "≤>" else f"{row['task']}: d90 = {text}"


def claim_5(c: dict, path: Path):
    def series(row):
        ds, points = zip(*by_int_key(row["points"]))
        return list(ds), [p["validation"] for p in points]

    return band_figure(c, path, 3.6, series, lambda row: [(row["threshold"], {"color": "red", "linestyle": "--",
                                                                             "label": "90% of full FT"})],
                       "d90", d90_title, "subspace dimension d",
                       "validation accuracy (mean, 95% CI)", "SAID validation")


def claim_6(c: dict, path: Path):
    """k@90 of every linear layer's full-FT ΔW against its two nulls: a Gaussian matrix of the same shape (left) and
    ΔW of the shuffled-label run (right: the optimizer's own noise), with y = x and y = x/2."""
    plt = pyplot()
    nulls = [("random_k90", "k@90 of a Gaussian matrix of the same shape")]
    if all("shuffled_k90" in v for r in c["rows"] for v in r["layers"].values()):
        nulls.append(("shuffled_k90", "k@90 of ΔW from full FT on shuffled labels"))
    fig, axes = plt.subplots(1, len(nulls), figsize=(5.2 * len(nulls), 4), squeeze=False)
    for ax, (key, xlabel) in zip(axes[0], nulls):
        for row in c["rows"]:
            layers = list(row["layers"].values())
            ax.scatter([v[key] for v in layers], [v["k90"] for v in layers], s=14, label=row["task"])
        top = max(v[key] for r in c["rows"] for v in r["layers"].values())
        ax.plot([0, top], [0, top], color="grey", linewidth=1, label="y = x")
        ax.plot([0, top], [0, top / 2], color="grey", linestyle="--", linewidth=1, label="half of it")
        ax.set(xlabel=xlabel, ylabel="k@90 of full-FT ΔW", title="each point: one linear layer of MiniLM")
    axes[0][0].legend(fontsize=7)
    return save(fig, path)


def claim_7(c: dict, path: Path):
    import statistics

    from loralab.commands.plots import plot_phi

    rows = c["rows"]
    grids = [p["input"]["r8_vs_r64"] for r in rows for p in r["pairs"]] if "pairs" in rows[0] else [
        r["r8_vs_r64"] for r in rows]  # every seed pair's input-side grid (a report before seed pairs: one per task)
    first = grids[0]
    mean = [[statistics.fmean(g["mean_phi"][i][j] for g in grids) for j in range(first["k2"])]
            for i in range(first["k1"])]
    over = f"{len(rows)} tasks × {len(grids) // len(rows)} seed pairs × q/v layers"
    pair = {"mean_phi": mean, "baseline": first["baseline"], "layers": [], "over": over,
            "first": "LoRA r=8", "second": "LoRA r=64"}
    return plot_phi(pair, path)


def claim_8(c: dict, path: Path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"full": "tab:red", "lora-r8": "tab:blue", "lora-r64": "tab:green"}
    ends = [p for p in c["points"] if p.get("end", True)]
    for arm in colours:
        for seed in sorted({p["seed"] for p in ends}):
            curve = sorted((p["gain"], p["forgetting"]) for p in ends if p["arm"] == arm and p["seed"] == seed)
            if curve:
                ax.plot(*zip(*curve), marker="o", color=colours[arm], alpha=0.8, linestyle="-" if seed == 0 else "--",
                        label=f"{arm}, seed {seed}")
    for p in c["points"]:  # a checkpoint along a run: hollow, joined to where that run ended
        if not p.get("end", True):
            end = next(e for e in ends if (e["arm"], e["lr"], e["seed"]) == (p["arm"], p["lr"], p["seed"]))
            ax.plot([p["gain"], end["gain"]], [p["forgetting"], end["forgetting"]], color=colours[p["arm"]],
                    linewidth=0.6, alpha=0.5)
            ax.plot(p["gain"], p["forgetting"], marker="o", markerfacecolor="white", color=colours[p["arm"]])
    if any(not p.get("end", True) for p in c["points"]):
        ax.plot([], [], marker="o", markerfacecolor="white", color="grey", linestyle="none",
                label=f"after step {', '.join(map(str, c['along_training']['steps']))}")
    if c["matched_gain"] is not None:
        ax.axvline(c["matched_gain"], color="grey", linewidth=1, linestyle=":")
        ax.annotate("matched gain", (c["matched_gain"], ax.get_ylim()[1]), xytext=(3, -12), textcoords="offset points",
                    fontsize=8, color="grey")
    ax.set(xlabel="learning: cipher chat-qa test loss, base − tuned (nats/token)",
           ylabel="forgetting: BBC text loss increase (nats/token)", title="learning–forgetting curves (SmolLM2; "
           "filled: runs' ends over learning rates)")
    ax.legend(fontsize=7, loc="upper left")
    return save(fig, path)


def claim_9(c: dict, path: Path):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    v2 = c.get("v2")
    units = [{"name": n, **u} for n, u in v2["units"].items()] if v2 else c["units"]  # v2: registered + dense units
    kept, labels = [u for u in units if u["kept"] and u["needed_rank"]], []
    for kind, marker, color in (("registered", "o", "tab:blue"), ("dense", "s", "tab:red")):
        mine = [u for u in kept if u.get("kind", "registered") == kind]
        xs, ys = [u["predicted"].get(c["primary"]) for u in mine], [u["needed_rank"] for u in mine]
        left.errorbar(xs, ys, yerr=[[max(y - (u["interval"][0] or y), 0) for y, u in zip(ys, mine)],
                                    [max((u["interval"][1] or y) - y, 0) for y, u in zip(ys, mine)]],
                      fmt=marker, color=color, capsize=3, label=f"{kind} units" if v2 and mine else None)
        labels += [(x, y, u["name"]) for x, y, u in zip(xs, ys, mine)]
    label_points(left, labels)
    test = v2["test"] if v2 else c
    rho = "n/a" if test["spearman"] is None else format(test["spearman"], "+.2f")
    left.set(yscale="log", xlabel=f"{c['primary']} (before training)", ylabel="needed rank r90 (measured)",
             title=f"{'benchmark v2: ' if v2 else ''}ρ = {rho}, n = {test['n']} units")
    if v2:
        left.legend(fontsize=7)
    for i, diffs in enumerate(c["allocation"].values()):
        for j, (name, ci) in enumerate(diffs.items()):
            if ci:
                errorbar(right, i + 0.2 * (j - 1), ci, marker="osd"[j], color=("tab:blue", "tab:orange", "grey")[j],
                         label=name if i == 0 else None)
    right.axhline(0, color="grey", linewidth=1)
    right.set_xticks(range(len(c["allocation"])), list(c["allocation"]), fontsize=7)
    right.set(ylabel="test loss − uniform allocation", title="per-layer ranks at equal rank units")
    if c["allocation"]:
        right.legend(fontsize=7)
    return save(fig, path)


def claim_11(c: dict, path: Path):
    """One panel per arm: the first seed's (ΔD, ΔM) per layer and logged step. Last panel: every seed's median over
    its steps of r(ΔD, ΔM) across layers, per arm, with the mean and its 95% t-interval — what the verdict tests."""
    plt = pyplot()
    names = list(c["rows"])
    per_seed = any(row.get("per_seed") for row in c["rows"].values())  # an older study.json has none
    fig, axes = plt.subplots(1, len(names) + per_seed, figsize=(3.6 * (len(names) + per_seed), 3.4), squeeze=False)
    if per_seed:
        seeds_panel(axes[0][-1], c["rows"])
    for ax, name in zip(axes[0], names):
        points = c["rows"][name]["points"]
        if points:
            dots = ax.scatter([p[0] for p in points], [p[1] for p in points], c=[p[2] for p in points], s=9,
                              cmap="plasma")
            fig.colorbar(dots, ax=ax, label="step")
        pearson = c["rows"][name]["pearson"]
        ax.set(xlabel="ΔD (mean 1 − cos)", ylabel="ΔM (mean |Δ‖row‖|)",
               title=f"{name} (first seed's steps): r across layers,\nmean of the seeds' medians {pearson:+.2f}"
               if pearson is not None else name)
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    return save(fig, path)


def seeds_panel(ax, rows: dict) -> None:
    """Claim 11's replicates: each seed's median r (dots, jittered), the mean over seeds with its t-interval."""
    for i, row in enumerate(rows.values()):
        medians = [v["median"] for v in row.get("per_seed", {}).values()]
        ax.scatter([i + 0.25 * ((k % 5) / 4 - 0.5) for k in range(len(medians))], medians, s=10, color="0.6")
        if row.get("across_seeds"):
            errorbar(ax, i + 0.3, row["across_seeds"], color="black", marker="s", markersize=4)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(range(len(rows)), [f"{n}\n({len(r.get('per_seed', {}))} seeds)" for n, r in rows.items()])
    ax.set(ylabel="median over steps of r(ΔD, ΔM)", ylim=(-1.05, 1.05),
           title="per seed (dots); mean, 95% t-interval")


def tested_panel(ax, c: dict) -> None:
    """Claim 10's tested quantities per replicate (dots, jittered): each task's accuracy kept over half its gain
    (all_w1 − chance − ½(own − chance)) and the accuracy lost to the sum (own − all_w1, mean over tasks); each
    mean with the t-interval its verdict reads."""
    tables = [r["table"] for r in c.get("interference", [])]
    columns = [(f"kept\n{t}", [kept_over_half(tb[t]) for tb in tables], c["kept_over_half"][t])
               for t in c["kept_over_half"]]
    columns.append(("lost to\nthe sum", [lost_to_sum(tb) for tb in tables], c["interference_loss"]))
    for i, (_, values, interval) in enumerate(columns):
        ax.scatter([i + 0.25 * ((k % 5) / 4 - 0.5) for k in range(len(values))], values, s=10, color="0.6")
        errorbar(ax, i + 0.3, interval, color="black", marker="s", markersize=4)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(range(len(columns)), [name for name, _, _ in columns])
    ax.set(ylabel="test accuracy", title="tested: above 0? (dots: replicates; mean, 95% t-interval)")


def claim_10(c: dict, path: Path):
    """Per task (its own head): its own adapter, every adapter summed at w = 1, and its adapter negated — each the
    mean over the replicates with its 95% t-interval — and the majority-class accuracy; beside it the quantities
    the verdict tests, per replicate (`tested_panel`)."""
    plt = pyplot()
    cells = c["cells"]
    fig, (ax, tested) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1.15, 1]})
    bars = [("own", "tab:green", "own adapter"), ("all_w1", "tab:blue", "all adapters summed (w = 1)"),
            ("negated", "tab:red", "own adapter negated")]
    for t_index, cell in enumerate(cells.values()):
        for b_index, (key, color, label) in enumerate(bars):
            grouped_bar(ax, t_index, b_index, len(bars), cell[key], color, label if t_index == 0 else None)
        chance = cell["chance"]["mean"]
        ax.plot([t_index - 0.45, t_index + 0.45], [chance, chance], color="black", linestyle="--", linewidth=1,
                label="majority class" if t_index == 0 else None)
    ax.set_xticks(range(len(cells)), list(cells))
    ax.set(ylabel="test accuracy (mean, 95% CI)", ylim=(0, 1.06),
           title=f"mean over {c['replicates']} replicates (seeds rotated over tasks)")
    ax.legend(fontsize=7, loc="lower left")
    tested_panel(tested, c)
    return save(fig, path)


FIGURES = {1: claim_1, 2: claim_2, 3: claim_3, 4: claim_4, 5: claim_5, 6: claim_6, 7: claim_7, 8: claim_8,
           9: claim_9, 10: claim_10, 11: claim_11}
