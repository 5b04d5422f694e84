"""interference.md and interference.png from `interference.run_interference`'s result."""

from __future__ import annotations

from pathlib import Path

from loralab.plotting import pyplot, save


def bars(result: dict, path: Path) -> Path:
    """Per task: own, base, others alone, pairs and all at w=1 and w=1/n, negated; chance as a line."""
    plt = pyplot()
    tasks = list(result["table"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.8), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        row = result["table"][task]
        labels = ["own", "base"] + [f"{o} alone" for o in row["others_alone"]] + \
            [f"+{o} w=1" for o in row["pairs_w1"]] + ["all w=1", "all w=1/n", "negated"]
        values = [row["own"], row["base"], *row["others_alone"].values(), *row["pairs_w1"].values(),
                  row["all_w1"], row["all_w1/n"], row["negated"]]
        colors = ["tab:green", "tab:grey"] + ["tab:purple"] * len(row["others_alone"]) + \
            ["tab:blue"] * len(row["pairs_w1"]) + ["tab:blue", "tab:cyan", "tab:red"]
        ax.bar(range(len(values)), values, color=colors)
        ax.axhline(row["chance"], color="black", linestyle="--", linewidth=1, label=f"majority class {row['chance']:.2f}")
        ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
        ax.set(title=f"{task} (its own head throughout)", ylabel="test accuracy", ylim=(0, 1))
        ax.legend(fontsize=7, loc="lower left")
    return save(fig, path)


def markdown(result: dict) -> str:
    tasks = list(result["table"])
    lines = ["# Adapter interference", "", "Test accuracy of each task with its own head; the encoder gets the "
             "updates named in the column, summed exactly (`cat`).", "",
             "| task | own | base | others alone | + each other (w=1) | + each other (w=1/2) | all (w=1) | all (w=1/n) | "
             "negated (w=−1) | majority class |", "|---|---:|---:|---|---|---|---:|---:|---:|---:|"]
    for task in tasks:
        r = result["table"][task]
        fmt = lambda d: ", ".join(f"{k} {v:.3f}" for k, v in d.items())  # noqa: E731
        lines.append(f"| {task} | {r['own']:.3f} | {r['base']:.3f} | {fmt(r['others_alone'])} | {fmt(r['pairs_w1'])} | "
                     f"{fmt(r['pairs_w1/2'])} | {r['all_w1']:.3f} | {r['all_w1/n']:.3f} | {r['negated']:.3f} | "
                     f"{r['chance']:.3f} |")
    lines += ["", f"Negation: the control keeps its own adapter and gets the negated one (stays = within "
              f"{result['tolerance']:.0%} of its own accuracy).", "",
              "| negated | control | control alone | control + negation | stays |", "|---|---|---:|---:|---|"]
    lines += [f"| {n['negated']} | {n['control']} | {n['control_own']:.3f} | {n['control_with_negation']:.3f} | "
              f"{'yes' if n['stays'] else 'no'} |" for n in result["negation"]]
    lines += geometry_lines(result["geometry"])
    p = result["predictors"]
    rho = ", ".join(f"{k} {v:+.2f}" if v is not None else f"{k} n/a" for k, v in p["spearman"].items())
    lines += ["", f"Which geometry tracks interference (own − pair at w=1, over {p['n_ordered_pairs']} ordered pairs; "
              f"Spearman ρ, a small n): {rho}.", "", "![interference](interference.png)", ""]
    return "\n".join(lines)


def geometry_lines(geometry: dict) -> list[str]:
    """The pairs' geometry table (each cell: the pair, then the random baseline in parentheses) and a warning
    for pairs whose A's started equal."""
    def both(s: dict, key: str) -> str:
        pair, random = s[f"pair_{key}"], s[f"random_{key}"]
        return "–" if pair is None else f"{pair:.3f} ({random:.3f})"

    lines = ["", "Geometry, medians over shared layers (in parentheses: random directions of the same shapes and "
             "norms). Principal cosines of the input subspaces (row spaces of A) and of the output subspaces (column "
             "spaces of B), max / mean:", "",
             "| pair | cosine of ΔWs | input principal cos | output principal cos | sign conflict | cosine of A's |",
             "|---|---:|---:|---:|---:|---:|"]
    for pair, g in geometry.items():
        s = g["summary"]
        lines.append(f"| {pair} | {both(s, 'cosine')} | {both(s, 'max_principal_cosine')} / "
                     f"{both(s, 'mean_principal_cosine')} | {both(s, 'max_output_principal_cosine')} / "
                     f"{both(s, 'mean_output_principal_cosine')} | {both(s, 'sign_conflict')} | {both(s, 'a_cosine')} |")
    shared = [pair for pair, g in geometry.items() if g.get("shared_start")]
    if shared:
        lines += ["", f"**Shared start** ({', '.join(shared)}): in most layers the two A matrices are correlated "
                  "beyond what training alone gives (cosine > 0.3; independent starts ≈ 0 before training, ≤ 0.26 after): these "
                  "adapters began from the same A — the same --seed and shapes — and A moves little in training. "
                  "Their input subspaces agree by construction, not because the tasks share directions: read the "
                  "output-subspace angles (B starts at 0), or train each task with its own --seed."]
    return lines


def write_report(result: dict, out: Path) -> None:
    bars(result, out / "interference.png")
    (out / "interference.md").write_text(markdown(result))
