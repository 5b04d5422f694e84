"""Verdict rules of the full study's claims on known inputs: no training, the claim's own arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from loralab.experiments import study_plan as plan
from loralab.experiments.claims_geometry import (
    below,
    composition,
    decoupling_verdict,
    larger_rank_trains,
    shared_directions_verdict,
)
from loralab.experiments.claims_training import claim_2, d90_verdict, low_rank_advantage, second_stage_seeds
from loralab.experiments.context import Context
from loralab.experiments.stats import FAILS, HOLDS, INCONCLUSIVE


def with_benchmark(units: list[tuple]) -> Context:
    """A study whose claim 9 (the rank benchmark) has already given these (name, r90, interval[, per-seed r90]) units,
    2 seeds each unless per-seed values are given."""
    found = [{"name": n, "needed_rank": r, "interval": i, "kept": True, "seeds": len(rest[0]) if rest else 2,
              "needed_rank_per_seed": dict(enumerate(rest[0])) if rest else {0: r, 1: r}, "predicted": {}}
             for n, r, i, *rest in units]
    found.append({"name": "dropped", "needed_rank": 64.0, "interval": [40.0, 64.0], "kept": False, "seeds": 2,
                  "needed_rank_per_seed": {0: 64.0, 1: 64.0}, "predicted": {}})
    return Context(tasks=("movie",), seeds=(0, 1), root=Path("unused"), out=Path("unused"), executor=None,
                   outcomes={9: {"units": found}})


def test_claim_2_task_dependence_is_a_test_of_the_seeds_and_names_the_seeds_for_an_interval_across_8():
    """Three units whose three seeds each separate completely: Kruskal–Wallis permutation p = 6/1680 ≈ 0.004 < 0.05,
    task-dependent holds. c4 straddles 8 at r90 = 9: small is undecided; its log half-width ln(2)/2 = 0.347 must
    shrink below ln(9/8) = 0.118, so 3·(0.347/0.118)² = 26.0 → 26 seeds. The unit the benchmark dropped counts for
    nothing."""
    c = claim_2(with_benchmark([("c2", 1.0, [0.8, 1.2], [0.9, 1.0, 1.1]), ("c4", 9.0, [6.0, 12.0], [8.0, 9.0, 10.0]),
                                ("c8", 2.5, [2.0, 3.0], [2.4, 2.5, 2.6])]))
    assert (c["task_dependent"], c["small"], c["verdict"]) == (HOLDS, INCONCLUSIVE, INCONCLUSIVE)
    assert c["across_units"]["p_value"] == pytest.approx(6 / 1680, abs=1e-3)
    assert c["power"]["n_needed_small"] == 26 and c["power"]["n_needed_task_dependent"] is None
    assert [r["unit"] for r in c["rows"]] == ["c2", "c8", "c4"] and c["spread"] == pytest.approx(9.0)


def test_claim_2_intervals_apart_do_not_make_task_dependence_when_the_seeds_overlap():
    """The same intervals, but each unit's seeds spread over the others' (one seed 20× another, as the benchmark saw):
    Kruskal–Wallis p far above 0.05, so intervals apart are not enough — inconclusive."""
    c = claim_2(with_benchmark([("c2", 1.0, [0.8, 1.2], [0.9, 9.5, 2.4]), ("c4", 9.0, [6.0, 12.0], [8.0, 1.0, 2.6]),
                                ("c8", 2.5, [2.0, 3.0], [2.5, 10.0, 1.1])]))
    assert c["task_dependent"] == INCONCLUSIVE and c["across_units"]["p_value"] > 0.5


def test_claim_2_fails_task_dependence_when_narrow_intervals_share_a_rank():
    """Intervals 1.5× and 1.43× wide (median under 2×) that overlap: the ladder could have told the units apart, and
    did not. Every interval ends at ≤ 8: small holds."""
    c = claim_2(with_benchmark([("a", 3.7, [3.0, 4.5]), ("b", 4.2, [3.5, 5.0])]))
    assert (c["small"], c["task_dependent"], c["verdict"]) == (HOLDS, FAILS, FAILS)
    assert c["power"]["median_interval_ratio"] == pytest.approx((1.5 + 5 / 3.5) / 2)


def test_claim_2_wide_overlapping_intervals_are_inconclusive_with_the_seeds_that_would_decide():
    """[1, 8] and [2, 16] overlap and are 8× wide: undecided. The extremes' half-widths ln 8/2 + ln 8/2 = ln 8 must
    fall below ln(8/2.8) (the observed spread): 2·(ln 8 / ln 2.857)² = 7.86 → 8 seeds. An open interval ([9, None])
    starting above 8 makes small fail; four seeds a unit that separate completely (p = 2/70) make it task-dependent."""
    c = claim_2(with_benchmark([("low", 2.8, [1.0, 8.0]), ("high", 8.0, [2.0, 16.0])]))
    assert c["task_dependent"] == INCONCLUSIVE and c["power"]["n_needed_task_dependent"] == 8
    c = claim_2(with_benchmark([("low", 2.8, [1.0, 4.0], [2.5, 2.7, 2.9, 3.1]), ("open", 20.0, [9.0, None],
                                                                              [18.0, 19.0, 21.0, 22.0])]))
    assert (c["small"], c["task_dependent"]) == (FAILS, HOLDS)
    assert "open 20 [9, ?]" in c["summary"]


@pytest.mark.parametrize("intervals, trains, verdict", [
    ({"input": (0.05, 0.12), "output": (0.52, 0.70)}, True, HOLDS),  # one side above 0.5 is enough
    ({"input": (0.05, 0.12), "output": (0.30, 0.49)}, True, FAILS),  # both below
    ({"input": (0.05, 0.12), "output": (0.45, 0.60)}, True, INCONCLUSIVE),  # the output side straddles 0.5
    ({"input": (0.05, 0.12), "output": (0.52, 0.70)}, False, INCONCLUSIVE),  # r = 64 did not train: no verdict
])
def test_claim_7_verdict_is_read_from_the_intervals_not_the_means(intervals, trains, verdict):
    assert shared_directions_verdict(intervals, trains) == verdict


@pytest.mark.parametrize("difference, gate", [
    ({"mean": -0.004, "low": -0.030, "high": 0.022}, "trains"),  # within 1 point, however wide the interval
    ({"mean": -0.010, "low": -0.020, "high": 0.000}, "trains"),  # exactly 1 point behind still counts
    ({"mean": -0.014, "low": -0.035, "high": 0.007}, "undecided"),  # behind by 1.4, could be within 1
    ({"mean": -0.030, "low": -0.045, "high": -0.015}, "trails"),  # the whole interval more than 1 point behind
])
def test_claim_7_gate_on_the_larger_ranks_accuracy(difference, gate):
    assert larger_rank_trains(difference) == gate


def test_claim_1_second_stage_runs_a_straddling_task_at_six_seeds_only_when_six_decide_it():
    """Ratios 1.047, 1.063, 1.009 (movie's first stage): mean 1.0397, sd 0.0277, t(2) = 4.303 → [0.971, 1.109]
    straddles 0.98; n_needed (80% power, sd 0.0277, gap 0.0597) = 4 ≤ 6, so seeds 3, 4, 5 are added. A decided
    task, or one that would need more than 6 seeds, gets none."""
    from loralab.experiments.stats import mean_ci

    ctx = Context(tasks=("movie",), seeds=(0, 1, 2), root=Path("unused"), out=Path("unused"), executor=None)
    assert second_stage_seeds(ctx, mean_ci([1.047, 1.063, 1.009]), 0.98) == (3, 4, 5)
    assert second_stage_seeds(ctx, mean_ci([1.007, 1.008, 1.006]), 0.98) == ()  # [1.0045, 1.0095]: holds
    assert second_stage_seeds(ctx, mean_ci([0.99, 0.96, 1.01]), 0.98) == ()  # gap 0.0067, sd 0.025: needs ≫ 6


def test_claim_11_second_stage_runs_dora_at_24_seeds_when_24_decide_it():
    """DoRA's first-stage medians −0.601, −0.109, +0.046 (the committed study, Xeon): mean −0.221, sd 0.338,
    t(2) = 4.303 → [−1.06, +0.62] straddles 0; n_needed (80% power, gap 0.221) = 21 ≤ 24, so seeds 3–23 are added.
    LoRA's +0.933, +0.959, +0.958 lie above 0 (decided): none. Full FT's +0.173, +0.198, +0.381 (descriptive arm):
    [−0.03, +0.53], n_needed 4 ≤ 24, so seeds 3–23 too (session 24)."""
    from loralab.experiments.stats import mean_ci

    ctx = Context(tasks=("movie",), seeds=(0, 1, 2), root=Path("unused"), out=Path("unused"), executor=None)
    dora = mean_ci([-0.601, -0.109, 0.046])
    assert second_stage_seeds(ctx, dora, 0.0, plan.TRAJECTORY_SEEDS) == tuple(range(3, 24))
    assert second_stage_seeds(ctx, dora, 0.0) == ()  # claim 1's cap of 6 would not decide it
    assert second_stage_seeds(ctx, mean_ci([0.933, 0.959, 0.958]), 0.0, plan.TRAJECTORY_SEEDS) == ()
    full = mean_ci([0.173, 0.198, 0.381])  # full FT's stage 1 (descriptive arm, session 24): [−0.03, +0.53], n ≈ 4
    assert second_stage_seeds(ctx, full, 0.0, plan.TRAJECTORY_SEEDS) == tuple(range(3, 24))


@pytest.mark.parametrize("lora, dora, expected", [
    ((0.9, 0.95), (-0.5, -0.1), HOLDS),  # LoRA above 0, DoRA below: the DoRA paper's picture
    ((0.9, 0.95), (0.1, 0.5), FAILS),  # DoRA couples them too
    ((-0.3, -0.1), (-0.5, -0.1), FAILS),  # LoRA's own coupling is absent
    ((0.9, 0.95), (-1.06, 0.62), INCONCLUSIVE),
])
def test_claim_11_verdict_from_the_two_intervals(lora, dora, expected):
    def interval(bounds):
        return {"mean": sum(bounds) / 2, "low": bounds[0], "high": bounds[1], "n": 3}

    assert decoupling_verdict(interval(lora), interval(dora)) == expected
    assert decoupling_verdict(interval(lora), {**interval(dora), "n": 1}) == INCONCLUSIVE


def test_the_simulated_two_stage_rule_is_the_rule_claim_1_runs():
    """`stats.two_stage_error` simulates "extend when the interval straddles and the power at 6 seeds is ≥ 0.8";
    claim 1 extends when n_needed ≤ 6. On 300 random first stages around the threshold both choose the same."""
    import random

    from loralab.experiments.stats import mean_ci, paired_power

    ctx = Context(tasks=("movie",), seeds=(0, 1, 2), root=Path("unused"), out=Path("unused"), executor=None)
    rng, agree, extended = random.Random(0), 0, 0
    for _ in range(300):
        first = mean_ci([0.98 + rng.gauss(0, 0.02) for _ in range(3)])
        simulated = first["low"] < 0.98 < first["high"] and paired_power(first["sd"], 6, first["mean"] - 0.98) >= 0.8
        extended += simulated
        agree += simulated == bool(second_stage_seeds(ctx, first, 0.98))
    assert agree == 300 and 10 < extended < 60  # both branches exercised


def dora_minus_lora(values: dict[str, list[float]]) -> dict:
    """{task: `stats.paired` form} for seeds 0, 1, … (what claim 3 holds per rank)."""
    return {t: {"values": v, "seeds": list(range(len(v)))} for t, v in values.items()}


def test_claim_3_low_rank_advantage_is_paired_per_task_and_seed():
    """Per (task, seed): mean(r1, r2) − r8 = (0.03, 0.02, 0.04, 0.03) → mean 0.03, sd 0.00816, t(3) = 3.182:
    0.03 ± 0.01299, above 0: holds. With one pair's r = 8 gain large, the interval straddles 0: inconclusive."""
    per_rank = {1: dora_minus_lora({"movie": [0.04, 0.03], "trec": [0.05, 0.04]}),
                2: dora_minus_lora({"movie": [0.02, 0.01], "trec": [0.03, 0.02]}),
                8: dora_minus_lora({"movie": [0.0, 0.0], "trec": [0.0, 0.0]})}
    got = low_rank_advantage(per_rank)
    assert got["values"] == pytest.approx([0.03, 0.02, 0.04, 0.03])
    assert (got["low"], got["high"], got["verdict"]) == (pytest.approx(0.017007, abs=1e-5),
                                                         pytest.approx(0.042993, abs=1e-5), HOLDS)
    per_rank[8] = dora_minus_lora({"movie": [0.0, 0.0], "trec": [0.1, 0.0]})
    assert low_rank_advantage(per_rank)["verdict"] == INCONCLUSIVE


def said_points(accuracies: dict[int, float], examples: int = 400) -> dict:
    return {d: {"validation": {"mean": a}, "examples": examples} for d, a in accuracies.items()}


def test_claim_5_d90_is_small_only_when_an_interval_clears_the_threshold_within_the_limit():
    """Threshold 0.80, limit 1000, 400 examples: 0.86 at d = 1000 has the interval 0.86 ± 0.034 ≥ 0.80 → holds there.
    0.81 at d = 1000 (± 0.038) straddles → inconclusive; 0.70 at d = 1000 (high 0.745) → does not hold. A d above the
    limit never counts, and without d = limit measured nothing fails."""
    assert d90_verdict(said_points({250: 0.75, 1000: 0.86, 4000: 0.9}), 0.80, 1000) == (HOLDS, 1000)
    assert d90_verdict(said_points({250: 0.75, 1000: 0.81, 4000: 0.9}), 0.80, 1000) == (INCONCLUSIVE, 1000)
    assert d90_verdict(said_points({250: 0.60, 1000: 0.70, 4000: 0.9}), 0.80, 1000) == (FAILS, 1000)
    assert d90_verdict(said_points({250: 0.60, 4000: 0.9}), 0.80, 1000) == (INCONCLUSIVE, 250)


def test_claim_6_low_rank_and_beyond_noise_are_read_from_intervals():
    assert below((0.2, 0.45), 0.5) == HOLDS
    assert below((0.4, 0.6), 0.5) == INCONCLUSIVE
    assert below((0.5, 0.7), 0.5) == FAILS


def interference_table(own: float, summed: float, chance: float = 0.5) -> dict:
    return {"own": own, "all_w1": summed, "chance": chance}


def test_claim_10_composes_and_interferes_over_replicates():
    """Two tasks, three replicates (chance 0.5). movie's sum 0.755 ± 0.01 keeps 0.755 − (0.5 + ½·0.3) = 0.105 above
    half its gain, sms's 0.905 − 0.725 = 0.18: composes. Accuracy lost to the sum per replicate 0.045, 0.055, 0.035
    → interval above 0: interferes."""
    tables = [{"movie": interference_table(0.80, 0.78 + d), "sms": interference_table(0.95, 0.93 + d)}
              for d in (-0.025, -0.035, -0.015)]
    found = composition(tables)
    assert found["loss"]["mean"] == pytest.approx(0.045)
    assert found["kept_over_half"]["movie"]["mean"] == pytest.approx(0.105)
    assert (found["composes"], found["interferes"]) == (HOLDS, HOLDS)
    assert composition(tables[:1])["composes"] == INCONCLUSIVE  # one replicate decides nothing
    lost = [{"movie": interference_table(0.80, 0.55 + d), "sms": interference_table(0.95, 0.93)} for d in (0, .01, -.01)]
    assert composition(lost)["composes"] == FAILS  # movie's sum keeps under half of its gain: 0.55 < 0.65
    assert (found["undecided"], found["n_needed"]) == ([], None)  # all decided
    assert (composition(lost)["undecided"], composition(lost)["n_needed"]) == ([], None)  # a failed part decides it


def test_claim_10_names_the_replicates_that_would_decide_every_undecided_part():
    """composes holds on both tasks; the loss per replicate 0.01, 0.05, 0.00 (mean 0.02, sd 0.0265) straddles 0:
    the verdict waits on interferes alone, so its n is the loss's n_needed (sd 0.0265, effect 0.02: 16)."""
    from loralab.experiments.claims_geometry import composition_summary, parts_text
    from loralab.experiments.stats import mean_ci, n_needed

    tables = [{"movie": interference_table(0.80, 0.80 - d), "sms": interference_table(0.95, 0.95 - d)}
              for d in (0.01, 0.05, 0.00)]
    found = composition(tables)
    assert found["composes"] == HOLDS and found["interferes"] == INCONCLUSIVE
    assert found["undecided"] == ["interferes"] and found["n_needed"] == n_needed(0.0264575, 0.02) == 16
    assert parts_text(found) == (" Replicates that would decide each undecided part: interferes n ≈ 16; the verdict "
                                 "needs all of them: n ≈ 16 replicates.")
    # what composes tested, per task (kept over half: movie 0.15 − d, sms 0.225 − d; sd 0.0265, ± t(2)·sd/√3 = 0.0657)
    cells = {t: {cell: mean_ci([table[t][cell] for table in tables]) for cell in ("own", "all_w1")} for t in tables[0]}
    summary = composition_summary(cells, found, True, False, None)
    assert "per task: movie +0.130 [+0.064, +0.196], sms +0.205 [+0.139, +0.271]): holds;" in summary
    assert summary.endswith("(intervals apart): True. " + parts_text(found)[1:])


def test_d90_says_at_most_when_the_grids_smallest_d_already_reaches_the_threshold():
    from loralab.experiments.claims_training import d90_text

    assert d90_text({"d90": 250, "d90_below": None}) == "≤ 250"  # nothing below 250 was measured
    assert d90_text({"d90": 1000, "d90_below": 500}) == "1000"  # 500 missed: bracketed
    assert d90_text({"d90": None, "d90_below": 16000}) == "> 16000"


def test_claim_10_replicates_rotate_seeds_within_each_stage():
    """Session 22's registration: stage 1 is seeds 0–2 rotated ((i + k) mod 3), stage 2's replicates 3–35 take
    seeds 3 + (i + k − 3) mod 33; every run in one replicate, no seed twice in a replicate, stage 1 unchanged."""
    from loralab.experiments.claims_geometry import replicate_seeds

    rows = replicate_seeds(3, 36, 3)
    assert rows[:3] == replicate_seeds(3, 3, 3) == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    assert rows[3] == [3, 4, 5] and rows[35] == [35, 3, 4]
    for i in range(3):
        assert sorted(row[i] for row in rows) == list(range(36))  # each task's seeds 0–35, once each
    assert all(len(set(row)) == 3 for row in rows)
    assert replicate_seeds(2, 3, 3) == [[0, 1, 2], [1, 2, 0], [3, 4, 5]]  # fewer replicates than tasks: 3 seeds a pool


def test_claim_10_goes_to_its_second_stage_only_when_that_decides_it():
    """Stage 1 of session 15 (n_needed 34): inconclusive → 36 replicates; a decided stage 1, or one needing more
    than the cap, stays at 3."""
    from loralab.experiments.claims_geometry import composition_second_stage

    stage_1 = {"composes": INCONCLUSIVE, "interferes": INCONCLUSIVE, "n_needed": 34}
    assert composition_second_stage(stage_1, 3, 36) == 36
    assert composition_second_stage({**stage_1, "n_needed": 37}, 3, 36) == 3
    assert composition_second_stage({**stage_1, "n_needed": None}, 3, 36) == 3
    assert composition_second_stage({**stage_1, "composes": FAILS}, 3, 36) == 3  # a failed part decides the claim
    assert composition_second_stage({"composes": HOLDS, "interferes": HOLDS, "n_needed": None}, 3, 36) == 3


def test_an_interference_table_is_read_back_only_for_the_same_runs_and_code(tmp_path, monkeypatch):
    """`interference_table` evaluates when the stored table was made by other code or of other runs, and reads
    back (no evaluation) one of the same runs made by the same code."""
    import json

    from loralab.experiments import claims_geometry, interference
    from loralab.experiments.launcher import code_version

    calls = []
    monkeypatch.setattr(interference, "run_interference",
                        lambda runs, out: calls.append(list(runs)) or {"runs": list(runs), "table": {"n": len(calls)}})
    version = code_version(("loralab.experiments.interference",))
    (tmp_path / "interference.json").write_text(json.dumps({"runs": ["a", "b"], "code_version": "000000000000"}))
    assert claims_geometry.interference_table(["a", "b"], tmp_path)["table"] == {"n": 1}  # other code: evaluated
    assert claims_geometry.interference_table(["a", "b"], tmp_path) == {"runs": ["a", "b"], "table": {"n": 1},
                                                                         "code_version": version}  # read back
    assert claims_geometry.interference_table(["a", "c"], tmp_path)["table"] == {"n": 2}  # other runs: evaluated
    assert calls == [["a", "b"], ["a", "c"]]
