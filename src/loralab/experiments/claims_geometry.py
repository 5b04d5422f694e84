"""Claims 6–11 of the full study: the geometry of updates, forgetting, predicting the rank, composing."""

from __future__ import annotations

import collections
import json
import statistics
from pathlib import Path
from typing import Optional

import torch

from loralab.experiments import study_plan as plan
from loralab.experiments.context import Context, claim
from loralab.experiments.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    bootstrap_interval,
    combine_verdicts,
    decides_text,
    interval_decides,
    mean_ci,
    pearson,
    verdict,
    what_decides,
)


def random_k90(shape: tuple[int, int], seed: int = 0) -> int:
    """k@90 of a Gaussian matrix of this shape: the baseline a 'low-rank' update must beat."""
    from loralab.analysis.spectra import energy_rank

    gen = torch.Generator().manual_seed(seed)
    return energy_rank(torch.linalg.svdvals(torch.randn(*shape, generator=gen, dtype=torch.float64)), 0.9)


LOW_RANK = 0.5  # claim 6: k@90 of ΔW under half a Gaussian matrix's


def below(interval: tuple[float, float], bound: float) -> str:
    """Holds when the whole interval lies below ``bound``, does not hold when it lies at or above it."""
    low, high = interval
    return HOLDS if high < bound else (FAILS if low >= bound else INCONCLUSIVE)


@claim(6, "Full fine-tuning updates are effectively low-rank")
def claim_6(ctx: Context) -> dict:
    """k@90 of each layer's full-FT ΔW against two nulls: a Gaussian matrix of the same shape, and ΔW of a full-FT
    run of the same length (the real run's best step) and lr on shuffled labels (the optimizer's own noise: much of
    ΔW's energy may be that). Low-rank means under half the Gaussian's k@90; task signal concentrated beyond noise
    means k@90 below the shuffled run's; each decided by a bootstrap interval (over layers) of the median ratio
    (`below`)."""
    from loralab.analysis.spectra import summarize
    from loralab.analysis.updates import load_updates

    lr = ctx.lr("full")
    real = {task: plan.full_unit(task, ctx.sizes, 0, lr) for task in ctx.tasks}
    trained = ctx.run(list(real.values()))
    null = {task: plan.shuffled_full_unit(task, ctx.sizes, 0, lr, ctx.root / "data", trained[unit.name].best_step)
            for task, unit in real.items()}
    ctx.run(list(null.values()))
    rows, verdicts = [], []
    for task in ctx.tasks:
        updates, noise = load_updates(ctx.run_dir(real[task])), load_updates(ctx.run_dir(null[task]))
        layers = {}
        for path, u in updates.items():
            s = summarize(u.svd(), keep=8)
            shuffled = summarize(noise[path].svd(), keep=8) if path in noise else None
            layers[path] = {"k90": s["k90"], "noise_rank": s["noise_rank"], "shape": s["shape"],
                            "random_k90": random_k90(tuple(s["shape"])), "effective_rank": s["effective_rank"],
                            "shuffled_k90": shuffled["k90"] if shuffled else None}
        versus_random = [v["k90"] / v["random_k90"] for v in layers.values()]
        ratio, random_interval = statistics.median(versus_random), bootstrap_interval(versus_random, statistics.median)
        versus_null = [v["k90"] / v["shuffled_k90"] for v in layers.values() if v["shuffled_k90"]]
        low, high = bootstrap_interval(versus_null, statistics.median)
        low_rank = below(random_interval, LOW_RANK)
        beyond_noise = below((low, high), 1.0)
        verdicts.append(combine_verdicts([low_rank, beyond_noise]))
        rows.append({"task": task, "layers": layers, "median_k90": statistics.median(v["k90"] for v in layers.values()),
                     "median_k90_over_random": ratio, "over_random_interval": list(random_interval),
                     "low_rank": low_rank, "beyond_noise": beyond_noise,
                     "median_k90_over_shuffled": statistics.median(versus_null),
                     "over_shuffled_interval": [low, high], "steps": trained[real[task].name].best_step,
                     "verdict": verdicts[-1],
                     "power": interval_decides(statistics.median(versus_null), low, high, len(versus_null), 1.0,
                                               "layers")})
    return {"verdict": combine_verdicts(verdicts), "rows": rows, "power": {r["task"]: r["power"] for r in rows},
            "summary": "median over layers of k@90(ΔW_full) / k@90(Gaussian matrix of the same shape), and / k@90 of a "
                       "shuffled-label full-FT run's ΔW [bootstrap 95% over layers]: " + ", ".join(
                f"{r['task']} {r['median_k90_over_random']:.2f} [{r['over_random_interval'][0]:.2f}, "
                f"{r['over_random_interval'][1]:.2f}] and {r['median_k90_over_shuffled']:.2f} "
                f"[{r['over_shuffled_interval'][0]:.2f}, {r['over_shuffled_interval'][1]:.2f}]" for r in rows)
            + f"; low-rank means below {LOW_RANK} of the random matrix's, and the task's signal concentrated beyond the "
              "optimizer's noise means below the shuffled run's."}


PHI_SHARED = 0.5  # LoRA §7.2: φ(1, 1) > 0.5 between r = 8 and r = 64
TRAINS_WITHIN = 0.01  # claim 7: r = 64 must reach r = 8's test accuracy within 1 point


def larger_rank_trains(difference: dict) -> str:
    """Claim 7's gate on r = 64 − r = 8 test accuracy (`stats.mean_ci` over tasks × seed pairs): within 1 point
    when the mean difference is at least −1 point (``"trains"``); shown to trail when the whole 95% interval lies
    below −1 point (``"trails"``); otherwise ``"undecided"``. A gate, not the claim: the claim reads φ, and φ of a
    partner that did not train says nothing."""
    if difference["mean"] >= -TRAINS_WITHIN:
        return "trains"
    return "trails" if difference["high"] < -TRAINS_WITHIN else "undecided"


def shared_directions_verdict(intervals: dict[str, tuple[float, float]], larger_rank_trains: bool) -> str:
    """Claim 7's rule on the 95% intervals of the mean φ(1, 1), one per side of ΔW: holds when either interval lies
    above `PHI_SHARED`, does not hold when both lie below it, else inconclusive — and inconclusive whatever φ is
    when the larger rank did not train (its subspace then says nothing)."""
    if not larger_rank_trains:
        return INCONCLUSIVE
    if any(low > PHI_SHARED for low, _ in intervals.values()):
        return HOLDS
    return FAILS if all(high < PHI_SHARED for _, high in intervals.values()) else INCONCLUSIVE


def adapter_at_start(cfg) -> dict:
    """{module path: LayerUpdate} of the adapter ``cfg`` starts training from (A from its seed, B = 0): the
    trainer's own seeding, data split and injection, stopped before the first step."""
    from loralab.analysis.updates import load_updates
    from loralab.train.loop import Trainer

    trainer = Trainer(cfg, progress=False)
    trainer.setup_processes()
    trainer.load_data_and_model()
    return load_updates(trainer.model, with_base=False)


def input_movement(cfg, end: dict) -> float:
    """Mean over layers of ‖A_T − A_0‖_F / ‖A_0‖_F between the trained adapter ``end`` ({path: LayerUpdate}, e.g.
    `load_updates` of the run) and the one ``cfg`` started from: how far training moved the input factor from its
    random start (LoRA §7.2 reads φ on A's row space; an A that barely moved shares little by construction)."""
    start = adapter_at_start(cfg)
    return statistics.fmean(float(torch.linalg.norm(end[p].factors.A.double() - a.factors.A.double())
                                  / torch.linalg.norm(a.factors.A.double())) for p, a in start.items())


def seed_pairs(seeds: tuple[int, ...]) -> list[tuple[int, int]]:
    """Claim 7's pairs (r = 8 seed, r = 64 seed): each r = 64 run one seed later than its r = 8 partner, so no
    pair shares a starting A; the same-rank null pairs r = 8 seed s with the next r = 8 seed, cyclically."""
    return [(s, s + 1) for s in seeds]


def compare_pair(svds: dict, accuracy: dict, task: str, seeds: tuple[int, int], next_seed: int) -> dict:
    """One of claim 7's seed pairs on ``task``: φ of r = 8 (seed s) against r = 64 (seed s + 1) and against r = 8 of
    ``next_seed`` (the null), on both sides, each layer's φ(1, 1) under ``top_phi``; and r = 64's accuracy minus
    r = 8's. ``svds``/``accuracy`` are keyed (rank, task, seed)."""
    from loralab.commands.analyze import compare_sources

    s8, s64 = seeds
    pair = {"r8_seed": s8, "r64_seed": s64, "accuracy_difference": accuracy[(64, task, s64)] - accuracy[(8, task, s8)]}
    for side in ("input", "output"):
        ranks = compare_sources(svds[(8, task, s8)], svds[(64, task, s64)], side=side)
        null = compare_sources(svds[(8, task, s8)], svds[(8, task, next_seed)], side=side)
        pair[side] = {"r8_vs_r64": {k: ranks[k] for k in ("mean_phi", "baseline", "mean_top_phi", "k1", "k2")},
                      "r8_vs_r8_next_seed": {"mean_top_phi": null["mean_top_phi"]},
                      "top_phi": list(ranks["top_phi"].values())}
    return pair


@claim(7, "Top directions are shared across ranks (φ, LoRA §7.2)")
def claim_7(ctx: Context) -> dict:
    """φ(1, 1) between r = 8 (seed s) and r = 64 (seed s + 1: independent starts, so a shared A cannot make φ
    high), for every seed s of the study, on both sides of ΔW — input (A's row space) and output (B's column space,
    what training writes) — against two nulls: the same rank from the next seed, and random subspaces. r = 64 has
    its own tuned learning rate (the ``lora-r64`` family) and must train (`larger_rank_trains`), else its subspace
    says nothing. Holds when either side's bootstrap interval (over layers × tasks × seed pairs) of the mean φ lies
    above 0.5 (the LoRA paper's finding), does not hold when both lie below it. Also reported: how far A moved from
    its start, ‖A_T − A_0‖/‖A_0‖."""
    from loralab.analysis.updates import load_updates

    lr8, lr64 = ctx.lr("lora"), ctx.lr("lora-r64")
    pairs = seed_pairs(ctx.seeds)
    r8 = {(t, s): plan.lora_unit(t, ctx.sizes, s, lr8, r=8) for t in ctx.tasks for s in ctx.seeds}
    r64 = {(t, s): plan.lora_unit(t, ctx.sizes, s, lr64, r=64) for t in ctx.tasks for _, s in pairs}
    units = {(8, *k): u for k, u in r8.items()} | {(64, *k): u for k, u in r64.items()}  # (rank, task, seed)
    results = ctx.run(list(units.values()), archive=False)
    updates = {key: load_updates(ctx.run_dir(unit), with_base=False) for key, unit in units.items()}
    svds = {key: {p: u.svd() for p, u in found.items()} for key, found in updates.items()}
    accuracy = {key: results[unit.name].test["accuracy"] for key, unit in units.items()}
    rows = []
    for task in ctx.tasks:
        row = {"task": task, "pairs": [],
               "accuracy": {"r8": {s: accuracy[(8, task, s)] for s in ctx.seeds},
                            "r64": {s: accuracy[(64, task, s)] for _, s in pairs}}}
        for (s8, s64), s_next in zip(pairs, ctx.seeds[1:] + ctx.seeds[:1]):
            pair = compare_pair(svds, accuracy, task, (s8, s64), s_next)
            pair["a_moved"] = {f"r{r}": input_movement(units[(r, task, s)].config, updates[(r, task, s)])
                               for r, s in ((8, s8), (64, s64))}
            row["pairs"].append(pair)
        rows.append(row)
    every = [p for r in rows for p in r["pairs"]]
    layer_top = {side: [v for p in every for v in p[side]["top_phi"]] for side in ("input", "output")}
    top = {side: statistics.fmean(p[side]["r8_vs_r64"]["mean_top_phi"] for p in every) for side in ("input", "output")}
    null = {side: statistics.fmean(p[side]["r8_vs_r8_next_seed"]["mean_top_phi"] for p in every)
            for side in ("input", "output")}
    moved = {r: statistics.fmean(p["a_moved"][r] for p in every) for r in ("r8", "r64")}
    baseline = every[0]["input"]["r8_vs_r64"]["baseline"][0][0]
    difference = mean_ci([p["accuracy_difference"] for p in every])
    gate = larger_rank_trains(difference)
    intervals = {side: bootstrap_interval(layer_top[side], statistics.fmean) for side in ("input", "output")}
    side = max(top, key=top.get)  # the side the claim could hold on
    power = interval_decides(top[side], *intervals[side], len(layer_top[side]), PHI_SHARED,
                             "layers × tasks × seed pairs")
    return {"verdict": shared_directions_verdict(intervals, gate == "trains"), "mean_top_phi": top,
            "intervals": intervals, "seed_null_top_phi": null, "baseline_top": baseline, "a_moved": moved,
            "learning_rates": {"r8": lr8, "r64": lr64}, "accuracy_difference": difference, "r64_trains": gate,
            "rows": rows, "power": power,
            "summary": f"φ(1, 1) between r=8 (lr {lr8:g}, seed s) and r=64 (its own tuned lr {lr64:g}, seed s + 1), "
                       f"mean over q/v layers, tasks and {len(pairs)} seed pairs [bootstrap 95% over layers × tasks × "
                       f"pairs]: input side {top['input']:.3f} [{intervals['input'][0]:.3f}, "
                       f"{intervals['input'][1]:.3f}], output side {top['output']:.3f} [{intervals['output'][0]:.3f}, "
                       f"{intervals['output'][1]:.3f}]{decides_text(power)}; same rank, next seed: {null['input']:.3f} "
                       f"/ {null['output']:.3f}; random subspaces {baseline:.4f}. ‖A_T − A_0‖/‖A_0‖: r=8 "
                       f"{moved['r8']:.3f}, r=64 {moved['r64']:.3f}. r=64 − r=8 test accuracy over tasks × pairs "
                       f"{100 * difference['mean']:+.2f} points [{100 * difference['low']:+.2f}, "
                       f"{100 * difference['high']:+.2f}]: {GATE_TEXT[gate]}. The LoRA paper reports > 0.5."}


GATE_TEXT = {"trains": "r=64 trains (within 1 point of r=8)",
             "trails": "r=64 trails r=8 by more than 1 point (no verdict from its subspace)",
             "undecided": "r=64 may trail r=8 by more than 1 point (undecided: no verdict from its subspace)"}


@claim(8, "LoRA forgets less than full fine-tuning at matched learning (SmolLM2, Biderman et al. 2024)")
def claim_8(ctx: Context) -> dict:
    """Forgetting (BBC loss increase) of full FT minus LoRA's, read off each arm's learning–forgetting curve at a
    gain both reach (`forgetting_runs`): holds when every LoRA arm's interval lies above 0, fails when one lies
    below; no common gain, or an interval across 0: inconclusive."""
    from loralab.experiments.forgetting_runs import smollm2_forgetting

    found = smollm2_forgetting(ctx)
    compared = found["compared"]
    verdicts = []
    for c in compared.values():
        if c["difference"] is None:
            verdicts.append(INCONCLUSIVE)
        else:
            verdicts.append(HOLDS if c["low"] > 0 else FAILS if c["high"] < 0 else INCONCLUSIVE)
    power = {arm: interval_decides(c["difference"], c["low"], c["high"], found["reference_texts"], 0.0,
                                   "reference texts") if c["difference"] is not None else None
             for arm, c in compared.items()}
    along = found["along_training"]
    return {"verdict": combine_verdicts(verdicts), **found, "seeds": len(plan.FORGETTING_SEEDS), "power": power,
            "summary": f"learning–forgetting curves over {len(plan.SMOLLM2_LR_GRID['lora'])} learning rates × "
                       f"{len(plan.FORGETTING_SEEDS)} seeds per arm, forgetting on {found['reference_texts']} BBC "
                       f"texts × ≤ 128 tokens (95% interval from resampling texts); ends of runs: "
                       f"{matched_text(found['matched_gain'], compared, power)}. With the checkpoints along training "
                       f"(after step {', '.join(map(str, along['steps']))} of each run, as well as its end): "
                       f"{matched_text(along['matched_gain'], along['compared'])}."}


def matched_text(gain, compared: dict, power: Optional[dict] = None) -> str:
    """Claim 8's comparison at matched gain in words: each LoRA arm's full FT − LoRA forgetting with its interval."""
    if gain is None:
        return "no gain that every arm reaches (the curves do not overlap)"
    return f"at matched gain {gain:.3f} nats/token on the enciphered chat-qa, " + ", ".join(
        f"full FT − {arm} forgetting {c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
        + (decides_text(power[arm]) if power else "")
        + f" (per seed {', '.join(f'{v:+.4f}' for v in c['per_seed'].values())})" for arm, c in compared.items())


@claim(9, "The needed rank can be predicted before training (the rank benchmark)")
def claim_9(ctx: Context) -> dict:
    """`experiments.rank_benchmark` on its 13 units (pre-registered in docs/study/rank/README.md): the primary
    predictor's one-sided Spearman test against the measured r90 at α = 0.01, with its power at ρ = 0.8. On the
    study's default sizes also benchmark v2 (`rank_v2`: those units and the four dense planted units, registered
    before their runs), whose test H1-v2 then gives the verdict, v1's reported beside it."""
    from loralab.experiments.rank_benchmark import run_rank_benchmark, study_plan

    report = run_rank_benchmark(ctx.out / "rank", ctx.root / "rank", executor=ctx.executor, plan=study_plan(ctx.sizes))
    allocation = {unit: {k: row["allocations"][k].get("minus_uniform") for k in ("predicted", "eva", "random")}
                  for unit, row in report["allocation"].items()}
    carried = ("name", "needed_rank", "interval", "kept", "seeds", "needed_rank_per_seed", "predicted")
    v1 = {"primary": report["primary"], "spearman": report["spearman"], "p_value": report["p_value"], "n": report["n"],
          "power": report["power"]}
    v2 = benchmark_v2(ctx) if ctx.sizes == plan.Sizes() else None
    decided = v2["test"] if v2 else v1
    summary = f"{test_line(v1, 'pre-registered predictor', 'units')}; details in rank/report.md."
    if v2:
        both = test_line(decided, "the same predictor", "units (registered and dense planted)")
        summary = (f"benchmark v2 (registered before its runs): {both}; r90 spread {v2['spread']['ratio']:.1f}× "
                   f"(target 16×); benchmark v1: {summary} v2 in rank/v2.md.")
    return {"verdict": rank_verdict(decided), **v1, "v2": v2, "units": [{k: u[k] for k in carried} for u in report["units"]],
            "allocation": allocation, "learning_rates": report["learning_rates"], "spread": report["spread"],
            "compute": benchmark_compute(report.get("compute"), v2), "summary": summary}


def rank_verdict(test: dict) -> str:
    """Holds when ρ > 0 at p < 0.01; a miss fails only when the test had power ≥ 0.8 at ρ = 0.8 (a test that could
    not have found ρ = 0.8 is not evidence against the predictor)."""
    rho, p, power = test["spearman"], test["p_value"], (test.get("power") or test.get("power_rho_0.8") or {}).get("alpha_0.01")
    if rho is None:
        return INCONCLUSIVE
    if rho > 0 and p < 0.01:
        return HOLDS
    return FAILS if power is not None and power >= 0.8 else INCONCLUSIVE


def test_line(test: dict, what: str, units: str) -> str:
    rho, p, n = test["spearman"], test["p_value"], test["n"]
    power = (test.get("power") or test.get("power_rho_0.8") or {}).get("alpha_0.01")
    return (f"{what} {test['primary']} against the measured needed rank r90 over n = {n} {units}: Spearman "
            f"ρ = {'n/a' if rho is None else format(rho, '+.2f')}, one-sided permutation p = "
            f"{'n/a' if p is None else format(p, '.2g')} (α = 0.01), power at ρ = 0.8: "
            f"{'n/a' if power is None else format(power, '.2f')}")


def benchmark_v2(ctx: Context) -> dict:
    """The dense units' predictors (before their ladders), ladders (`dense_units.run`, read back from
    ``rank/dense_runs.jsonl``) and the joint reading (`rank_v2.run`), all under ``<out>/rank``."""
    from loralab.experiments import dense_probe, dense_units, rank_v2

    out, root = ctx.out / "rank", ctx.root / "dense_units"
    for k in dense_units.KS:
        dense_probe.unit_predictors(k, root, home=out / "predictors")
    dense_units.run(str(root), str(out / "dense_units.json"), str(out / "dense_runs.jsonl"), executor=ctx.executor)
    report = rank_v2.run(str(out / "rank.json"), str(out / "dense_units.json"), str(out / "predictors"),
                         str(out / "v2.json"), str(out / "figures" / "v2.png"))
    return {**report, "compute": dense_compute(out / "dense_runs.jsonl", dense_units.version())}


def dense_compute(archive: Path, version: str) -> dict:
    """The dense units' runs of this code ``version`` in their archive: how many, the sum of their wall clocks in
    hours, and the machines they trained on."""
    from loralab.experiments.launcher import run_records

    current = [r for r in run_records(archive) if r["run"].endswith(f"-{version}")]
    return {"runs": len(current), "run_hours": sum(r["result"]["seconds"] for r in current) / 3600,
            "machines": dict(collections.Counter(r["machine"] for r in current))}


def benchmark_compute(v1: Optional[dict], v2: Optional[dict]) -> Optional[dict]:
    """Claim 9's compute: benchmark v1's runs plus, when it ran, the dense units' (run at v1's workers)."""
    if not v1 or not v2:
        return v1
    machines = collections.Counter(v1.get("machines") or {}) + collections.Counter(v2["compute"]["machines"])
    return {**v1, "runs": v1["runs"] + v2["compute"]["runs"], "run_hours": v1["run_hours"] + v2["compute"]["run_hours"],
            "machines": dict(machines),
            "parts": {"v1": {"runs": v1["runs"], "run_hours": v1["run_hours"]}, "dense units": v2["compute"]}}


def kept_over_half(row: dict) -> float:
    """One task's row of an interference table: all_w1 − (chance + ½(own − chance)), above 0 when the sum keeps
    more than half of the task's own gain over chance."""
    return row["all_w1"] - row["chance"] - 0.5 * (row["own"] - row["chance"])


def lost_to_sum(table: dict) -> float:
    """One replicate's interference table: own − all_w1, mean over its tasks (the accuracy the sum loses)."""
    return statistics.fmean(row["own"] - row["all_w1"] for row in table.values())


def composition(tables: list[dict[str, dict]]) -> dict:
    """Claim 10's two tests over replicates (``tables``: one {task: {"own", "all_w1", "chance", ...}} per replicate).
    composes: per task, all_w1 − (chance + ½(own − chance)) — the sum keeps over half of the task's own gain over
    chance — with a t-interval above 0 on every task; interferes: the mean over tasks of own − all_w1, its t-interval
    above 0. One replicate decides neither (inconclusive). ``power``: what each part can decide (`what_decides`),
    and ``n_needed``, the replicates at which every still undecided part would be (the largest of theirs; None when
    one of them has none, or when a failed part already decides the claim)."""

    def above_zero(interval: dict) -> str:
        return verdict(interval, 0.0) if interval["n"] > 1 else INCONCLUSIVE

    kept = {t: mean_ci([kept_over_half(table[t]) for table in tables]) for t in tables[0]}
    loss = mean_ci([lost_to_sum(table) for table in tables])
    parts = {**{f"composes:{t}": k for t, k in kept.items()}, "interferes": loss}
    power = {name: {**what_decides(interval, 0.0), "unit": "replicates"} for name, interval in parts.items()}
    verdicts = {name: above_zero(interval) for name, interval in parts.items()}
    undecided = [] if FAILS in verdicts.values() else [name for name, v in verdicts.items() if v == INCONCLUSIVE]
    needed = [power[name]["n_needed"] for name in undecided]
    return {"kept_over_half": kept, "composes": combine_verdicts([above_zero(k) for k in kept.values()]),
            "loss": loss, "interferes": above_zero(loss), "power": power, "undecided": undecided,
            "n_needed": max(needed) if needed and None not in needed else None}


def parts_text(found: dict) -> str:
    """What would decide claim 10: each undecided part's n, and the n at which all of them would be decided."""
    if not found["undecided"]:
        return ""
    listed = ", ".join(f"{name.replace('composes:', 'composes on ')} n ≈ {found['power'][name]['n_needed'] or '?'}"
                       for name in found["undecided"])
    whole = f"n ≈ {found['n_needed']} replicates" if found["n_needed"] else "an n this spread cannot tell (?)"
    return f" Replicates that would decide each undecided part: {listed}; the verdict needs all of them: {whole}."


def replicate_seeds(first: int, total: int, tasks: int) -> list[list[int]]:
    """Claim 10's replicates as seeds, one list per replicate: task i's adapter in replicate k. Stage 1's ``first``
    replicates rotate seeds 0 … p − 1 (p = max(first, tasks)): (i + k) mod p. A second stage's replicates first …
    total − 1 rotate the next q = max(total − first, tasks) seeds among themselves: p + (i + k − first) mod q. So
    every run sits in one replicate, no replicate holds two adapters of one seed (they would start from the same A,
    `compose.geometry`), and stage 1's replicates are the same whether or not a second stage follows."""
    pool, later = max(first, tasks), max(total - first, tasks)
    return ([[(i + k) % pool for i in range(tasks)] for k in range(first)]
            + [[pool + (i + k - first) % later for i in range(tasks)] for k in range(first, total)])


def interference_table(runs: list[str], out: Path) -> dict:
    """One replicate's `run_interference` result, read back when ``out`` holds one of the same ``runs`` made by
    the same code (the interference module and everything it imports, `launcher.code_version`)."""
    from loralab.experiments.interference import run_interference
    from loralab.experiments.launcher import code_version
    from loralab.io.atomic import atomic_write_text

    version, done = code_version(("loralab.experiments.interference",)), out / "interference.json"
    if done.exists():
        found = json.loads(done.read_text())
        if found.get("runs") == runs and found.get("code_version") == version:
            return found
    result = {**run_interference(runs, out), "code_version": version}
    atomic_write_text(done, json.dumps(result, indent=1) + "\n")
    return result


def composition_replicates(ctx: Context, tasks: list[str], rows: list[list[int]], start: int = 0) -> list[dict]:
    """The interference tables of replicates ``start`` … (``rows``: `replicate_seeds`), their missing runs
    trained together first."""
    units = [plan.lora_unit(t, ctx.sizes, seed, ctx.lr("lora")) for row in rows for t, seed in zip(tasks, row)]
    dirs, n = [str(d) for d in ctx.dirs(units)], len(tasks)
    return [interference_table(dirs[k * n:(k + 1) * n], ctx.out / "interference" / f"replicate{start + k}")
            for k in range(len(rows))]


def composition_second_stage(found: dict, first: int, most: int) -> int:
    """How many replicates claim 10 is run at: ``most`` when stage 1's ``first`` leave it inconclusive and the n
    that would decide every undecided part (`composition`) is at most ``most``; otherwise ``first``."""
    undecided = combine_verdicts([found["composes"], found["interferes"]]) == INCONCLUSIVE
    return most if undecided and found["n_needed"] is not None and found["n_needed"] <= most else first


@claim(10, "Adapters compose but interfere")
def claim_10(ctx: Context) -> dict:
    """Task vectors summed: one replicate per seed of the study, each with every task's adapter from its own
    seed (`replicate_seeds`); every cell is a mean over replicates with its t-interval. Composes: on every task, the
    sum keeps more than half of the task's own gain over chance (a t-interval above 0); interferes: the accuracy the
    sum loses against each task's own adapter, mean over tasks, has its t-interval above 0. Both hold → holds;
    either fails → does not hold. Two stages: an inconclusive first stage whose deciding n is at most
    `plan.COMPOSITION_REPLICATES` is run at that many replicates (`composition_second_stage`); the second stage's
    replicates keep their tables and negation checks here (their geometry stays in their interference.json)."""
    from loralab.experiments.stats import two_stage_error

    tasks, first = [t for t in plan.INTERFERENCE_TASKS if t in ctx.tasks], len(ctx.seeds)
    replicates = composition_replicates(ctx, tasks, replicate_seeds(first, first, len(tasks)))
    stage_1 = composition([r["table"] for r in replicates])
    total = composition_second_stage(stage_1, first, plan.COMPOSITION_REPLICATES)
    if total > first:
        later = composition_replicates(ctx, tasks, replicate_seeds(first, total, len(tasks))[first:], start=first)
        replicates += [{key: r[key] for key in ("runs", "table", "negation", "seconds")} for r in later]
    tables = [r["table"] for r in replicates]
    cells = {t: {key: mean_ci([table[t][key] for table in tables]) for key in ("own", "all_w1", "negated", "chance")}
             for t in tables[0]}
    found = composition(tables) if total > first else stage_1
    negation = all(c["negated"]["high"] < c["own"]["low"] for c in cells.values())
    first_figure = ctx.out / "interference" / "replicate0" / "interference.png"
    if first_figure.exists():  # the report shows the first replicate's figure
        (ctx.out / "interference" / "interference.png").write_bytes(first_figure.read_bytes())
    error = two_stage_error(first, total) if total > first else None
    hours = sum(r["seconds"] for r in replicates) / 3600  # each table's own evaluation, also when read back
    return {"verdict": combine_verdicts([found["composes"], found["interferes"]]), "composes": found["composes"],
            "kept_over_half": found["kept_over_half"], "interferes": found["interferes"],
            "interference_loss": found["loss"],
            "power": {**found["power"]["interferes"], "n_needed": found["n_needed"], "parts": found["power"]},
            "cells": cells, "replicates": len(replicates), "second_stage": total > first,
            "stage_1": {"replicates": first, "n_needed": stage_1["n_needed"], "undecided": stage_1["undecided"]},
            "second_stage_error": error, "negation_moves_toward_chance": negation,
            "controls_stay": [[n["stays"] for n in r["negation"]] for r in replicates],
            "interference": replicates, "evaluation_hours": hours,
            "summary": composition_summary(cells, found, negation, total > first, error)
            + f" Evaluation: {len(replicates)} interference tables, {hours:.2f} h."}


def composition_summary(cells: dict, found: dict, negation: bool, extended: bool, error: Optional[dict]) -> str:
    """Claim 10's summary line: every task's sum against its own adapter, both parts' verdicts and what would
    decide what is undecided."""
    n, loss = found["loss"]["n"], found["loss"]
    return ("all adapters summed (w=1) vs own, per task, mean over " + f"{n} replicates"
            + (" (second stage)" if extended else "") + " [95% t-interval]: " + ", ".join(
                f"{t} {c['all_w1']['mean']:.3f} [{c['all_w1']['low']:.3f}, {c['all_w1']['high']:.3f}] vs "
                f"{c['own']['mean']:.3f} [{c['own']['low']:.3f}, {c['own']['high']:.3f}]" for t, c in cells.items())
            + "; composes (the sum keeps over half of each task's gain over chance; all_w1 − chance − ½(own − chance)"
            + " per task: " + ", ".join(f"{t} {k['mean']:+.3f} [{k['low']:+.3f}, {k['high']:+.3f}]"
                                        for t, k in found["kept_over_half"].items())
            + f"): {found['composes']}"
            + f"; accuracy lost to the sum, mean over tasks {loss['mean']:.3f} [{loss['low']:.3f}, {loss['high']:.3f}]"
            + f": {found['interferes']}" + decides_text(found["power"]["interferes"])
            + f"; negation below own on every task (intervals apart): {negation}." + parts_text(found)
            + (" The two-stage rule's one-sided error per part is {:.1%} (one stage: 2.5%; `stats.two_stage_error`)."
               .format(error["two_stage"]) if error else ""))


def trajectory_medians(ctx: Context, make, seeds) -> tuple[dict, list, dict]:
    """Per seed of ``seeds`` (their runs trained already, `Context.dirs`): the median over the run's logged steps of
    the Pearson r across the q/v layers of ΔD and ΔM, with a bootstrap interval over its steps. Also the first seed's
    (ΔD, ΔM, step) points and {step: r} for the figure."""
    from loralab.commands.analyze import trajectory

    per_seed, points, first_steps = {}, [], {}
    for seed in seeds:
        per_step = {}
        for record in trajectory(ctx.run_dir(make(seed))):
            layers = [(layer["delta_d"], layer["delta_m"]) for path, layer in record["layers"].items()
                      if path.endswith(("query", "value"))]
            if seed == seeds[0]:
                points += [(d, m, record["step"]) for d, m in layers]
            per_step[record["step"]] = pearson([d for d, _ in layers], [m for _, m in layers])
        values = [v for v in per_step.values() if v is not None]
        if values:
            low, high = bootstrap_interval(values, statistics.median) if len(values) > 1 else (values[0],) * 2
            per_seed[seed] = {"median": statistics.median(values), "low": low, "high": high, "steps": len(values)}
        if seed == seeds[0]:
            first_steps = per_step
    return per_seed, points, first_steps


def decoupling_verdict(lora: Optional[dict], dora: Optional[dict]) -> str:
    """Claim 11: holds when LoRA's t-interval lies above 0 and DoRA's below; fails when DoRA's lies above 0 or
    LoRA's below; otherwise (or with fewer than 2 seeds in either) inconclusive."""
    if lora is None or dora is None or lora["n"] < 2 or dora["n"] < 2:
        return INCONCLUSIVE
    if lora["low"] > 0 and dora["high"] < 0:
        return HOLDS
    return FAILS if dora["low"] > 0 or lora["high"] < 0 else INCONCLUSIVE


@claim(11, "DoRA changes magnitude and direction independently (DoRA §3)")
def claim_11(ctx: Context) -> dict:
    """DoRA §3's measure: at each logged step, the correlation across the q/v layers of ΔD (direction change) and
    ΔM (magnitude change); each run's per-step values summarised by their median, and the medians of the seeds by a
    t-interval (the runs are the replicates; a bootstrap over one run's steps is shown beside it). (Pooling layers ×
    steps instead lets a shared time trend — both grow as training goes on — make every method's correlation
    positive.) Two stages: the study's seeds, then any arm whose interval straddles 0 with a deciding n of at most
    `plan.TRAJECTORY_SEEDS` is run at that many seeds (`claims_training.second_stage_seeds`); the one-sided error of
    either side's call rises from 2.5% to ``second_stage_error["two_stage"]`` (`stats.two_stage_error`). The verdict
    reads LoRA and DoRA only; full FT's arm (session 24's registration, docs/study/README.md) is descriptive."""
    from loralab.experiments.claims_training import second_stage_seeds
    from loralab.experiments.stats import two_stage_error

    makers = {"full": lambda s: plan.full_unit("movie", ctx.sizes, s, ctx.lr("full")),
              "lora": lambda s: plan.lora_unit("movie", ctx.sizes, s, ctx.lr("lora")),
              "dora": lambda s: plan.lora_unit("movie", ctx.sizes, s, ctx.lr("dora"), "dora")}
    ctx.dirs([make(s) for make in makers.values() for s in ctx.seeds])  # stage 1's runs train together
    found = {name: trajectory_medians(ctx, make, ctx.seeds) for name, make in makers.items()}
    extra = {name: second_stage_seeds(ctx, mean_ci([v["median"] for v in found[name][0].values()]), 0.0,
                                      plan.TRAJECTORY_SEEDS)
             for name in makers if len(found[name][0]) > 1}
    extra = {name: seeds for name, seeds in extra.items() if seeds}
    ctx.dirs([makers[name](s) for name, seeds in extra.items() for s in seeds])  # stage 2's runs train together
    for name, seeds in extra.items():
        found[name][0].update(trajectory_medians(ctx, makers[name], seeds)[0])
    rows = {}
    for name, (per_seed, points, per_step0) in found.items():
        across = mean_ci([v["median"] for v in per_seed.values()]) if per_seed else None
        rows[name] = {"points": points, "per_step": per_step0, "per_seed": per_seed, "across_seeds": across,
                      "power": what_decides(across, 0.0) if across else None,
                      "pearson": across["mean"] if across else None}
    final = decoupling_verdict(rows["lora"]["across_seeds"], rows["dora"]["across_seeds"])
    error = two_stage_error(len(ctx.seeds), plan.TRAJECTORY_SEEDS) if extra else None
    return {"verdict": final, "rows": rows, "seeds": len(ctx.seeds), "power": {k: v["power"] for k, v in rows.items()},
            "second_stage": {name: list(seeds) for name, seeds in extra.items()}, "second_stage_error": error,
            "summary": "per logged step, Pearson r of ΔD and ΔM across the q/v layers (movie), each run's median "
                       "over its steps, mean over the seeds [95% t-interval]: " + ", ".join(
                f"{k} {v['across_seeds']['mean']:+.2f} [{v['across_seeds']['low']:+.2f}, "
                f"{v['across_seeds']['high']:+.2f}] ({v['across_seeds']['n']} seeds"
                + (": second stage)" if k in extra else ")") + decides_text(v["power"])
                for k, v in rows.items() if v["across_seeds"])
            + "; the DoRA paper finds LoRA positive, full FT and DoRA negative (the verdict reads LoRA and DoRA; "
              "full FT is descriptive)."
            + (" The two-stage rule's one-sided error is {:.1%} (one stage: 2.5%; `stats.two_stage_error`)."
               .format(error["two_stage"]) if extra else "")}
