"""report.md and a self-contained report.html for the full study: verdicts first, then one section per claim."""

from __future__ import annotations

import base64
import html
import shutil
from pathlib import Path

from loralab.experiments import study_plan as plan
from loralab.experiments.study_figures import FIGURES

METHODS = {
    1: "Full fine-tuning and LoRA r=8 (s = α/r = 2) on query/value, each at its validation-chosen learning rate; "
       "the ratio of test accuracies is taken per seed and summarised with a 95% t-interval. Holds when the interval "
       "lies at or above 0.98 on every task and the trainable-parameter ratio is ≥ 100 (the count includes the new "
       "head). Two stages: a task whose interval straddles 0.98 after the study's 3 seeds, and which at most 6 seeds "
       "would decide (80% power at the first stage's spread), is run at 6 seeds (the second stage depends on the "
       "first: the one-sided error of \"holds\" at the threshold is 3.2% instead of one stage's 2.5%, simulated). "
       "A second arm, LoRA r=8 on every linear layer with its own learning rate, is reported beside it.",
    2: "Read from the rank benchmark (claim 9), no runs of its own: each unit's needed rank r90 on held-out loss — "
       "the smallest r whose gain g(r) = (L_0 − L_r)/(L_0 − L_best) reaches 0.9, log₂-interpolated between rungs of "
       "the ladder r ∈ {0, 1, 2, 4, 8, 16, 32, 64} (s = α/r) — with its seed-bootstrap 95% interval. Small: every "
       "interval ends at ≤ 8. Task-dependent: the units' per-seed r90 differ beyond the seeds' spread "
       "(Kruskal–Wallis permutation test, p < 0.05).",
    3: "DoRA and LoRA at equal rank r ∈ {1, 2, 4, 8} (s = 16/r, each family's validation-chosen learning rate); paired "
       "differences over seeds (same split, data order and head initialisation), pooled over tasks. On "
       f"{', '.join(plan.DORA_TASKS)} only (time budget: a DoRA run costs ~1.4× a LoRA run).",
    4: "Four placements at ≈ equal trainable parameters per block (rank_pattern): query/value r=8, all attention "
       "r=4, MLP r=3, all linear r=2 (block output r=1). Placement's effect (spread across placements) is compared "
       "with rank's (spread across q/v ranks 4, 8, 16 — a 4× budget change), each spread beyond the range its own "
       "seed noise gives, the difference with a bootstrap 95% interval; on "
       f"{', '.join(plan.PLACEMENT_TASKS)}.",
    5: "SAID (Fastfood projection, one scale per tensor) over d ∈ {250, 1000, 4000, 16000} plus one bisection step; "
       "the lr at d = 1000 from the sweep on movie, scaled by √(1000/d). d90 = smallest d whose mean validation "
       f"accuracy over seeds {list(plan.D90_SEEDS)} reaches 90% of full fine-tuning's mean validation accuracy "
       f"(tasks {', '.join(plan.D90_TASKS)}).",
    6: "The full fine-tuning update ΔW = W_ft − W0 of every linear layer (seed 0): k@90, the number of singular "
       "directions holding 90% of ‖ΔW‖², against two nulls: a Gaussian matrix of the same shape, and ΔW of full "
       "fine-tuning on shuffled labels for as many steps at the same lr (the optimizer's own noise); the median "
       "ratio over layers with a bootstrap interval.",
    7: "φ(i, j) = ‖U_iᵀV_j‖²/min(i, j) (LoRA §7.2) between r=8 (seed s) and r=64 (seed s + 1: independent starts) "
       "adapters of the same task, three seed pairs per task, on the input side (right singular vectors) and the "
       "output side (left), over the 12 query/value layers; r=64 at its own validation-chosen learning rate. Nulls: "
       "r=8 seed s vs seed s + 1, and random subspaces (max(i, j)/384). Holds when either side's bootstrap interval "
       "(layers × tasks × pairs) lies above 0.5, does not hold when both lie below it — provided r=64 trains: its "
       "mean test accuracy minus r=8's over tasks × pairs at least −1 point (an interval wholly below −1 point: it "
       "trails; between: undecided). Also reported: ‖A_T − A_0‖/‖A_0‖ (A_0 rebuilt from the run's seed).",
    8: "SmolLM2-135M-Instruct tuned on 300 chat-qa pairs with letter-substituted responses for one epoch: LoRA r=8 "
       "and r=64 on q/v (s = α/r) and full fine-tuning, each at three learning rates and two seeds. Gain: held-out "
       "loss decrease; forgetting: next-token loss increase on 200 BBC News test articles (≤ 128 tokens). Each arm's "
       "forgetting is read off its learning–forgetting curve at the largest gain every arm reaches; full FT − LoRA "
       "with a 95% interval from resampling the articles (Biderman et al. 2024). Each run is also trained again "
       "keeping its weights after step 19 of 38 (hollow points): the same comparison on the curves through every "
       "checkpoint is reported beside the primary, end-of-run one.",
    9: "The rank benchmark (docs/study/rank/README.md, pre-registered): 13 MiniLM task units, needed rank r90 "
       "from a held-out-loss rank ladder r ∈ {0, 1, 2, 4, 8, 16, 32, 64} (s = α/r, each unit's own learning rate, "
       "two seeds, a third where the interval was wide, runs stopped on validation loss); the primary predictor, "
       "computed before training on 256 examples, tested by a one-sided Spearman permutation test at α = 0.01 with "
       "its power at ρ = 0.8; per-layer allocation against uniform, EVA-style and random at equal rank units. "
       "On the study's default sizes also benchmark v2 (docs/study/rank/README.md, registered before its runs): the "
       "13 units and four dense planted units (a rank-k update, k ∈ {4, 16, 32, 64}, in MiniLM's last value "
       "projection; the student distils the teacher's pooled output), tested the same way; its test gives the verdict.",
    10: "The query/value LoRA r=8 adapters of movie, tweets and sms, one replicate per seed with the seeds rotated over "
        "the tasks (adapters of one seed start from the same A, which would make their input subspaces agree by "
        "construction); every cell a mean over replicates with its t-interval; each task with its own head: own "
        "adapter, base, other adapters alone, exact sums (`compose --method cat`) at w=1 and w=1/n, and negation; "
        "the geometry of each pair (docs/compose.md). Two stages (session 22, docs/study/README.md): a first stage "
        "at the study's seeds that is inconclusive, with a deciding n of at most `plan.COMPOSITION_REPLICATES`, is "
        "run at that many replicates, the new ones rotating new seeds among themselves.",
    11: "ΔM and ΔD (DoRA §3) of the query/value weights, logged every 10 steps during training (movie, every seed) "
        "for full fine-tuning, LoRA r=8 and DoRA r=8: per step, their correlation across layers; each run's median "
        "over steps, and a t-interval over the seeds' medians. Two stages: an arm whose interval at the study's seeds "
        f"straddles 0 with a deciding n of at most {plan.TRAJECTORY_SEEDS} is run at {plan.TRAJECTORY_SEEDS} seeds "
        "(the summary states the rule's simulated one-sided error). The verdict reads LoRA and DoRA; full FT is "
        "descriptive (its second stage since session 24).",
}


def figures(study: dict, out: Path) -> dict[int, str]:
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for key, c in study["claims"].items():
        number = int(key)
        if c.get("verdict") == "not run":
            continue
        if number == 10 and "cells" not in c and (out / "interference" / "interference.png").exists():
            shutil.copy(out / "interference" / "interference.png", folder / "claim10.png")  # before replicates
            made[number] = "figures/claim10.png"
        elif number in FIGURES:
            FIGURES[number](c, folder / f"claim{number}.png")
            made[number] = f"figures/claim{number}.png"
    return made


def recipe(m: dict) -> str:
    """How every classification run was trained, in one phrase (a study.json written before early stopping has
    ``epochs`` instead)."""
    z = m["sizes"]
    tests = ", ".join(f"{t} {n:,}" for t, n in m.get("test_examples", {}).items())
    if "epochs" in z:
        return f"{z['max_train']} training examples, {z['epochs']} epochs, test examples: {tests}"
    return (f"{z['max_train']} training examples, batch {z['batch_size']}, stopped on validation loss (every "
            f"{z['eval_steps']} steps, patience {z['patience']}, {z['min_steps']}–{z['max_steps']} steps; SAID ≤ "
            f"{z['said_max_steps']}), the best validation's weights tested; test examples: {tests}")


def trained_text(compute: dict) -> str:
    """Which of an invocation's runs it trained, when it read some back (a study.json from before this was recorded
    says nothing)."""
    now = compute.get("trained")
    if now is None or now["runs"] == compute["runs"]:
        return ""
    return f" — {now['runs']} of them trained by this invocation ({now['run_hours']:.1f} h), the rest read back"


def compute_text(study: dict) -> str:
    """The runs and the machine time behind them (the sum of each run's own wall clock), the rank benchmark's
    (claim 9) beside them, and this invocation's wall time (finished runs are read back)."""
    m = study["meta"]
    c = m.get("compute")
    if not c:  # a study.json written before compute was recorded
        return f"{m['runs_trained_or_read']} runs; wall time {m['wall_time_s'] / 3600:.2f} h"
    workers, earlier = c.get("workers") or 1, m.get("carried_over")
    parts = [] if earlier and not c["runs"] else [
        f"{c['runs']} runs, {c['run_hours']:.1f} h of run time ({workers} at a time ≈ {c['run_hours'] / workers:.1f} h elapsed)"
        + trained_text(c)]
    if earlier:
        runs = earlier.get("compute") or {}
        parts.append(f"claims {', '.join(map(str, earlier['claims']))} carried over from an earlier invocation of the "
                     f"same study" + (f" ({runs['runs']} runs, {runs['run_hours']:.1f} h of run time)" if runs else ""))
    text = "; ".join(parts)
    bench = study["claims"].get("9", {}).get("compute")
    if bench:
        bench_workers = bench.get("workers") or 1
        text += (f", plus the rank benchmark's {bench['runs']} runs, {bench['run_hours']:.1f} h of run time "
                 f"(≈ {bench['run_hours'] / bench_workers:.1f} h elapsed)")
    return f"{text}; this invocation {m['wall_time_s'] / 3600:.2f} h"


def markdown(study: dict, images: dict[int, str]) -> str:
    m = study["meta"]
    lines = ["# loralab full study: the claims of low-rank adaptation, tested", "",
             f"Model {m['model']}; tasks {', '.join(m['tasks'])}; seeds {m['seeds']}; {recipe(m)}; "
             f"{compute_text(study)}; code {m['code_version']}.",
             "", "| claim | verdict | the numbers |", "|---|---|---|"]
    for key, c in study["claims"].items():
        lines.append(f"| {key}. {c['title']} | **{c['verdict']}** | {c['summary']} |")
    lines += ["", "Learning rates (validation accuracy, or loss for SmolLM2, per grid value; the chosen one used "
              "everywhere):", ""]
    for family, table in m["learning_rates"].items():
        grid = ", ".join(f"{lr}: {v:.4f}" for lr, v in table["grid"].items())
        flag = " — **at the grid's edge after extending it: not tuned**" if table.get("at_edge") else ""
        lines.append(f"- {family}: {grid} → **{table['chosen']:g}**{flag}")
    if "full" in m["learning_rates"] and "lora" in m["learning_rates"]:
        ratio = m["learning_rates"]["lora"]["chosen"] / m["learning_rates"]["full"]["chosen"]
        lines.append(f"- LoRA / full-FT learning rate: {ratio:.0f}× (\"LoRA Without Regret\", 2025: about 10×)")
    for key, c in study["claims"].items():
        number = int(key)
        lines += ["", f"## Claim {key}: {c['title']}", "", f"**Verdict: {c['verdict']}.** {c['summary']}", "",
                  f"Method: {METHODS.get(number, '')}"]
        if number in images:
            lines += ["", f"![claim {key}]({images[number]})"]
        if c.get("error"):
            lines += ["", "```", c["error"], "```"]
    return "\n".join(lines) + "\n"


def image_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#f3f3f3}.holds{color:#16794a;font-weight:600}.does-not-hold{color:#b3261e;font-weight:600}
.inconclusive{color:#8a6d00;font-weight:600}.not-run{color:#777}img{max-width:100%;border:1px solid #eee}
section{margin-top:2.2em}p.method{color:#555;font-size:13px}"""


def verdict_class(verdict: str) -> str:
    return {"holds": "holds", "does not hold": "does-not-hold"}.get(verdict, "not-run" if verdict == "not run"
                                                                      else "inconclusive")


def html_page(study: dict, images: dict[int, str], out: Path) -> str:
    e, m = html.escape, study["meta"]
    rows = "".join(f"<tr><td><a href='#c{k}'>{k}. {e(c['title'])}</a></td><td class='{verdict_class(c['verdict'])}'>"
                   f"{e(c['verdict'])}</td><td>{e(c['summary'])}</td></tr>" for k, c in study["claims"].items())
    sections = []
    for key, c in study["claims"].items():
        image = f"<img alt='claim {key}' src='{image_uri(out / images[int(key)])}'>" if int(key) in images else ""
        sections.append(f"<section id='c{key}'><h2>Claim {key}: {e(c['title'])}</h2><p><span class="
                        f"'{verdict_class(c['verdict'])}'>Verdict: {e(c['verdict'])}.</span> {e(c['summary'])}</p>"
                        f"<p class='method'>Method: {e(METHODS.get(int(key), ''))}</p>{image}</section>")
    lrs = "".join(f"<li>{e(f)}: {e(', '.join(f'{lr}: {v:.4f}' for lr, v in t['grid'].items()))} → "
                  f"<b>{t['chosen']:g}</b></li>" for f, t in m["learning_rates"].items())
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>loralab full study</title>"
            f"<style>{STYLE}</style></head><body><h1>loralab full study: the claims of low-rank adaptation, tested</h1>"
            f"<p>{e(m['model'])}; tasks {e(', '.join(m['tasks']))}; seeds {m['seeds']}; {e(recipe(m))}; "
            f"{e(compute_text(study))}; code {e(m['code_version'])}.</p><table><tr><th>claim</th><th>verdict</th>"
            f"<th>the numbers</th></tr>{rows}</table><h3>Learning rates (validation sweep)</h3><ul>{lrs}</ul>"
            f"{''.join(sections)}</body></html>")


def write_report(study: dict, out: Path) -> None:
    images = figures(study, out)
    (out / "report.md").write_text(markdown(study, images))
    (out / "report.html").write_text(html_page(study, images, out))
