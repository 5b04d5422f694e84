"""Plots and the Markdown report of ``loralab analyze`` (on top of `commands.analyze`'s JSON)."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from loralab.plotting import pyplot, save


def short_name(path: str) -> str:
    """'encoder.layer.0.attention.self.query' → '0.query'; 'encoder.layer.3.output.dense' → '3.output.dense'."""
    found = re.search(r"(?:layers?|h|blocks?)\.(\d+)\.(.*)$", path)
    if not found:
        return ".".join(path.split(".")[-2:])
    tail = re.sub(r"^(attention\.self|self_attn|attn|mlp)\.", "", found.group(2))
    return f"{found.group(1)}.{tail}"


def short_names(paths: list[str]) -> list[str]:
    """`short_name` of each path, with the part before the block index kept where two would read the same
    (T5's 'encoder.block.0.layer.0.SelfAttention.q' and 'decoder.block.0…' → 'encoder.0.…', 'decoder.0.…')."""
    short = [short_name(p) for p in paths]
    names = []
    for path, name in zip(paths, short):
        found = re.search(r"(?:^|\.)([^.]+)\.(?:layers?|h|blocks?)\.\d+\.", path)
        names.append(f"{found.group(1)}.{name}" if short.count(name) > 1 and found else name)
    return names


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_spectra(result: dict, path: Path) -> Path:
    """σ_i/σ_1 against i, the median over layers, one line per source (log-log)."""
    import statistics

    from matplotlib import ticker

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, report in result["sources"].items():
        spectra = [row["spectrum"]["singular_values"] for row in report["layers"].values()]
        n = min(len(s) for s in spectra)
        curve = [statistics.median(s[i] / s[0] for s in spectra if s[0] > 0) for i in range(n)]
        k90 = report["summary"]["k90_median"]
        ax.plot(range(1, n + 1), curve, marker=".", label=f"{name} (median k@90 = {k90:g})")
    ax.set(xscale="log", yscale="log", xlabel="singular value index i", ylabel="σ_i / σ_1 (median over layers)",
           title="Singular spectrum of ΔW")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))  # 2, 4, 8 rather than 2×10⁰
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}" if str(int(x))[0] in "25" else ""))
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_per_layer(result: dict, key: str, label: str, path: Path, getter, counts: bool = False) -> Path:
    """Heatmap: one row per source, one column per layer (blank where a source leaves a layer alone). ``counts``:
    the colour scale starts at 0 and its ticks are whole numbers (all zeros gave a −0.1…0.1 scale)."""
    import math

    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    names = list(result["sources"])
    layers = list(next(iter(result["sources"].values()))["layers"])
    for report in result["sources"].values():
        layers += [p for p in report["layers"] if p not in layers]
    grid = [[getter(result["sources"][n]["layers"][p]) if p in result["sources"][n]["layers"] else None
             for p in layers] for n in names]
    values = [[math.nan if v is None else float(v) for v in row] for row in grid]
    fig, ax = plt.subplots(figsize=(min(16.0, 3.0 + 0.32 * len(layers)), 1.6 + 0.42 * len(names)))
    finite = [v for row in values for v in row if not math.isnan(v)]
    scale = {"vmin": 0, "vmax": max([1.0, *finite])} if counts else {}
    image = ax.imshow(values, aspect="auto", cmap="viridis", **scale)
    bar = fig.colorbar(image, ax=ax, label=label, fraction=0.03)
    if counts:
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    if len(layers) <= 48:
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v is not None:
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(len(layers)), short_names(layers), rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(f"{label} per layer")
    ax.grid(False)
    return save(fig, path)


def plot_phi(pair: dict, path: Path) -> Path:
    """Heatmap of the mean φ(i, j) over layers, and φ(i, i), φ(1, j) against the random baseline."""
    import torch
    from matplotlib.ticker import MaxNLocator, NullFormatter

    plt = pyplot()
    phi, base = torch.tensor(pair["mean_phi"]), torch.tensor(pair["baseline"])
    over = pair.get("over") or f"{len(pair['layers'])} layers"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1.4, 1]})
    image = left.imshow(phi.numpy(), aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis",
                        extent=(0.5, phi.shape[1] + 0.5, 0.5, phi.shape[0] + 0.5))
    fig.colorbar(image, ax=left, label="φ(i, j)")
    left.set(xlabel=f"j (top directions of {pair['second']})", ylabel=f"i (top directions of {pair['first']})",
             title=f"φ, mean over {over} (random: ≤ {float(base.max()):.3f})")
    left.grid(False)
    diagonal = min(phi.shape)
    right.plot(range(1, diagonal + 1), [float(phi[i, i]) for i in range(diagonal)], marker="o", label="φ(i, i)")
    right.plot(range(1, phi.shape[1] + 1), phi[0].tolist(), marker=".", label="φ(1, j)")
    right.plot(range(1, phi.shape[1] + 1), base[0].tolist(), linestyle="--", color="grey",
               label="random subspaces, E φ = max(i, j)/n")
    right.set(xscale="log", ylim=(0, 1.02), xlabel="i or j", ylabel="φ", title=f"{pair['first']} vs {pair['second']}")
    ticks = [2 ** k for k in range(phi.shape[1].bit_length()) if 2 ** k <= phi.shape[1]]  # 1, 2, 4, … as plain numbers
    right.set_xticks(ticks, [str(t) for t in ticks])
    right.xaxis.set_minor_formatter(NullFormatter())
    for axis, size in ((left.xaxis, phi.shape[1]), (left.yaxis, phi.shape[0])):  # whole directions only
        axis.set_major_locator(MaxNLocator(integer=True, nbins=min(size, 10)))
    right.legend(fontsize=7)
    return save(fig, path)


def plot_magnitude_direction(result: dict, path: Path) -> Path:
    """DoRA Fig. 2: ΔD (x) against ΔM (y) per layer, over the logged steps when there is a trajectory."""
    plt = pyplot()
    names = list(result["sources"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        report = result["sources"][name]
        points = [(layer["delta_d"], layer["delta_m"], record["step"]) for record in report["trajectory"]
                  for layer in record["layers"].values() if "delta_m" in layer]
        if not points:
            points = [(r["magnitude_direction"]["delta_d"], r["magnitude_direction"]["delta_m"], 0)
                      for r in report["layers"].values() if "magnitude_direction" in r]
        if points:
            xs, ys, steps = zip(*points)
            dots = ax.scatter(xs, ys, c=steps, s=10, cmap="plasma")
            if len(set(steps)) > 1:
                fig.colorbar(dots, ax=ax, label="step")
        ax.set(xlabel="ΔD (mean 1 − cos)", ylabel="ΔM (mean |Δ‖row‖|)", title=f"{name} ({report['kind']})")
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    return save(fig, path)


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(result: dict, images: dict[str, str]) -> str:
    lines = ["# Analysis of weight updates", "", "| source | kind | layers | median k@90 | median effective rank | "
             "median amplification | intruders (top-10, ε=0.5) | median ΔM | median ΔD |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, report in result["sources"].items():
        s = report["summary"]
        lines.append(f"| {name} | {report['kind']} | {s['layers']} | {fmt(s['k90_median'], 'g')} | "
                     f"{fmt(s['effective_rank_median'], '.2f')} | {fmt(s['amplification_median'], '.3g')} | "
                     f"{s['intruders_total']} | {fmt(s['delta_m_median'], '.3g')} | {fmt(s['delta_d_median'], '.3g')} |")
    lines += ["", *(f"**{name}**: {report['needs_base']}" for name, report in result["sources"].items()
                     if report.get("needs_base"))]
    lines += ["", "Amplification (LoRA §7.3): ‖ΔW‖_F / ‖UᵀW0V‖_F with U, V the update's top-r singular vectors; "
              "next to ‖UᵀW0V‖_F for W0's own top-r directions and for random ones (medians over layers):", "",
              "| source | r | ‖ΔW‖_F | ΔW directions | W0's own | random | amplification |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, report in result["sources"].items():
        rows = [r["amplification"] for r in report["layers"].values() if "amplification" in r]
        if rows:
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}  # as the summary's medians
            lines.append(f"| {name} | {med['r']} | {med['delta_frobenius']:.3g} | {med['w_on_delta_directions']:.3g} | "
                         f"{med['w_on_own_directions']:.3g} | {med['w_on_random_directions']:.3g} | "
                         f"{med['amplification']:.3g} |")
    if result["pairs"]:
        lines += ["", "Subspace similarity of input directions (LoRA §7.2), mean over shared layers:", "",
                  "| pair | layers | φ(1,1) | random E φ(1,1) |", "|---|---:|---:|---:|"]
        for key, pair in result["pairs"].items():
            lines.append(f"| {key} | {len(pair['layers'])} | {pair['mean_top_phi']:.3f} | {pair['baseline'][0][0]:.4f} |")
        for key, pair in result["pairs"].items():
            if pair.get("shared_start"):
                lines += ["", f"**Shared start** ({key}): in {len(pair['shared_start'])} of {len(pair['layers'])} layers "
                          "the two adapters' A matrices are correlated over their common rows beyond what training alone "
                          "gives (cosine > 0.3): they began equal — the same --seed; a higher rank draws the lower one's rows "
                          "first, so r = 8 and r = 64 runs of one seed share their first adapted layer's start. φ there is "
                          "high by construction; compare adapters trained with different seeds (LoRA §7.2 does)."]
    lines += [""] + [f"![{title}]({file})" for title, file in images.items()] + [""]
    return "\n".join(lines)


def write_report(result: dict, out: Path) -> dict[str, str]:
    """Every plot and analysis.md under ``out``; returns {title: file name}."""
    images = {"singular spectra": plot_spectra(result, out / "spectra.png").name}
    images["effective rank per layer"] = plot_per_layer(
        result, "effective_rank", "entropy effective rank", out / "effective_rank.png",
        lambda r: r["spectrum"]["effective_rank"]).name
    images["k@90 per layer"] = plot_per_layer(result, "k90", "k@90 (rank holding 90% of ‖ΔW‖²)", out / "k90.png",
                                              lambda r: r["spectrum"]["k90"]).name
    if any("intruders" in r for s in result["sources"].values() for r in s["layers"].values()):
        images["intruder dimensions"] = plot_per_layer(
            result, "intruders", "intruder dimensions (top-10)", out / "intruders.png",
            lambda r: r.get("intruders", {}).get("count"), counts=True).name
        images["magnitude vs direction"] = plot_magnitude_direction(result, out / "magnitude_direction.png").name
    for key, pair in result["pairs"].items():
        images[f"φ {key}"] = plot_phi(pair, out / f"phi_{safe(pair['first'])}__{safe(pair['second'])}.png").name
    (out / "analysis.md").write_text(markdown(result, images))
    return images


def plot_probe(result: dict, path: Path) -> Path:
    """`loralab probe`: each predictor's rank per layer (top, log scale) and the allocated ranks (bottom)."""
    plt = pyplot()
    layers = list(result["layers"])
    x = range(len(layers))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(min(16.0, 3.0 + 0.3 * len(layers)), 5.2),
                                      gridspec_kw={"height_ratios": [1.4, 1]})
    for key, marker in (("gradient", "o"), ("gradient_covariance", "s"), ("activation", "^")):
        top.plot(x, [result["layers"][p][key] for p in layers], marker=marker, markersize=4, linewidth=1,
                 label=f"{key.replace('_', ' ')} (median {result['predicted_rank'][key]:g})")
    energy = result["config"]["energy"]
    top.set(yscale="log", ylabel=f"rank at {energy:.0%} energy", title="Rank probe: what each layer's update needs")
    top.legend(fontsize=7)
    allocated = [result["allocated_rank"][p] for p in layers]
    bottom.bar(x, allocated, color="tab:gray")
    mean_r = result["config"]["r"]
    bottom.axhline(mean_r, color="tab:red", linestyle="--", linewidth=1, label=f"uniform r = {mean_r}")
    bottom.set(ylabel="allocated rank")
    bottom.legend(fontsize=7)
    bottom.set_xticks(list(x), short_names(layers), rotation=90, fontsize=6)
    return save(fig, path)
