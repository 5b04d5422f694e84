"""The rank benchmark's parts against known answers: the r90 estimator on known curves, the null-based predictor on
gradients of known rank, the permutation test against an exact p, the unit builders; and the whole benchmark on
the tiny model."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from loralab.analysis import rank_predictors as rp
from loralab.experiments import rank_benchmark as rb
from loralab.experiments import rank_units, stats
from loralab.experiments.launcher import machine_kind


def test_needed_rank_on_known_curves():
    # gain 0, 0.5, 1.0 at head, r=1, r=4: 0.9 is 80% of the way from r=1 (log2 0) to r=4 (log2 2) → 2^1.6
    assert rb.needed_rank({0: 2.0, 1: 1.5, 4: 1.0}) == pytest.approx(2 ** 1.6)
    # reached between the head (log2 −1) and r=1: 90% of the way → 2^(−0.1)
    assert rb.needed_rank({0: 2.0, 1: 1.0, 4: 1.0}) == pytest.approx(2 ** -0.1)
    # a later rung worse than an earlier one: the first rung reaching 0.9 counts
    assert rb.needed_rank({0: 3.0, 1: 2.0, 2: 1.0, 4: 1.5, 64: 1.05}) == pytest.approx(2 ** (0 + 0.8))
    assert rb.needed_rank({0: 1.0, 1: 1.2, 4: 1.1}) is None  # nothing beats the head


def test_a_third_seed_where_the_r90_interval_spans_more_than_the_ratio():
    assert not rb.needs_third_seed({"interval": [1.0, 4.0]}, 4.0)
    assert rb.needs_third_seed({"interval": [1.0, 4.01]}, 4.0)
    assert rb.needs_third_seed({"interval": [None, None]}, 4.0)  # no resample beat the head: seeds cannot tell yet


def test_needed_rank_spread_over_the_kept_units_against_the_target():
    from loralab.experiments import rank_report

    summaries = {"a": {"kept": True, "needed_rank": 0.75}, "b": {"kept": True, "needed_rank": 12.0},
                 "c": {"kept": False, "needed_rank": 64.0}, "d": {"kept": True, "needed_rank": None}}
    spread = rb.needed_rank_spread(summaries)
    assert spread == {"lowest": ["a", 0.75], "highest": ["b", 12.0], "ratio": 16.0, "target": 16.0, "meets_target": True}
    assert rank_report.spread_line(spread) == (
        "Spread of the needed ranks: 16.0× (a 0.75 to b 12), which meets the target of 16×.")
    assert not rb.needed_rank_spread({"a": summaries["a"], "b": {"kept": True, "needed_rank": 11.9}})["meets_target"]


def test_monotone_curve_pools_a_noisy_dip_and_moves_r90_off_it():
    losses = {0: 1.0, 1: 0.5, 2: 0.5, 4: 0.48, 8: 0.44, 16: 0.34, 32: 0.40, 64: 0.43}
    fitted = rb.monotone_losses(losses)
    assert [fitted[r] for r in sorted(fitted)] == pytest.approx([1.0, 0.5, 0.5, 0.48, 0.44, 0.39, 0.39, 0.39])
    assert rb.needed_rank(losses) == pytest.approx(2 ** (3 + (0.9 - 0.56 / 0.66) / (1 - 0.56 / 0.66)))  # 8 to 16
    assert rb.needed_rank(fitted) == pytest.approx(2 ** (2 + (0.9 - 0.52 / 0.61) / (0.56 / 0.61 - 0.52 / 0.61)))  # 4 to 8


def test_sensitivity_tests_score_the_primary_against_each_alternative_response():
    primary = rp.PRIMARY
    units = {f"u{i}": {"kept": True, "sensitivity": {"r80": 2.0 ** i, "r95": 2.0 ** -i, "r90_monotone": None}}
             for i in range(5)}
    found = {u: {"task": {primary: float(i)}} for i, u in enumerate(units)}
    tested = rb.sensitivity_tests(units, found, primary)
    assert tested["r80"]["rho"] == pytest.approx(1.0) and tested["r80"]["p_value"] == pytest.approx(1 / 120, abs=2e-3)
    assert tested["r95"]["rho"] == pytest.approx(-1.0) and tested["r95"]["p_value"] == 1.0
    assert tested["r90_monotone"] == {"n": 0, "rho": None, "p_value": None}


def test_seed_agreement_bounds_what_a_predictor_can_reach():
    """Five units whose seed-1 r90 orders as seed 0's except one swap: ρ = 0.9, at 2 seeds R₂ = 2·0.9/1.9 = 0.947,
    ceiling √0.947 = 0.973. Reversed orders (ρ = −1): reliability 0, ceiling 0. A dropped unit does not count."""
    from loralab.experiments import rank_report

    def units(second: list[float]) -> dict:
        found = {f"u{i}": {"kept": True, "seeds": 2, "needed_rank_per_seed": {0: 2.0 ** i, 1: v}}
                 for i, v in enumerate(second)}
        found["dropped"] = {"kept": False, "seeds": 2, "needed_rank_per_seed": {0: 64.0, 1: 0.5}}
        return found

    agree = rb.seed_agreement(units([1.0, 4.0, 2.0, 8.0, 16.0]))
    assert agree["n"] == 5 and agree["rho"] == pytest.approx(0.9)
    assert agree["reliability_of_mean"] == pytest.approx(1.8 / 1.9) and agree["ceiling"] == pytest.approx(0.97333, abs=1e-5)
    reversed_ = rb.seed_agreement(units([16.0, 8.0, 4.0, 2.0, 1.0]))
    assert (reversed_["rho"], reversed_["ceiling"]) == (pytest.approx(-1.0), 0.0)
    assert rank_report.agreement_line({"seed_agreement": reversed_}) == (
        "Does the needed rank repeat across seeds? Spearman ρ of r90 from seed 0's ladder alone against seed 1's, over "
        "the 5 kept units: -1.00 (one-sided p = 1). At 2 seeds per unit that makes the measured r90 a reliability of "
        "0.00 (Spearman–Brown), so a predictor of the true needed rank could reach ρ ≤ 0.00 against it. (A diagnostic "
        "added after the ladders finished, beside the registered test.)")
    assert rb.per_seed_needed_rank({0: {0: 2.0, 1: 2.0}, 1: {0: 1.0, 1: 2.0}, 4: {0: 1.0, 1: 1.0}}) == {
        0: pytest.approx(2 ** -0.1), 1: pytest.approx(2 ** 1.8)}


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    per_seed = {0: {0: 2.0, 1: 2.1}, 1: {0: 1.6, 1: 1.4}, 4: {0: 1.0, 1: 1.1}, 16: {0: 1.0, 1: 0.95}}
    low, high = rb.bootstrap_needed_rank(per_seed, resamples=2000)
    point = rb.needed_rank(rb.seed_means(per_seed))
    assert low <= point <= high and (low, high) == rb.bootstrap_needed_rank(per_seed, resamples=2000)


def test_signal_rank_finds_planted_gradient_directions():
    """Batch gradients carrying k fixed input directions above label-noise gradients: parallel analysis against
    nulls without them counts k (k = 1, 3, 6 of 32)."""
    gen = torch.Generator().manual_seed(0)
    for k in (1, 3, 6):
        basis = torch.linalg.qr(torch.randn(32, 32, generator=gen, dtype=torch.float64))[0][:, :k]

        def moment(signal: bool):
            total = torch.zeros(32, 32, dtype=torch.float64)
            for _ in range(40):
                grad = torch.randn(16, 32, generator=gen, dtype=torch.float64)
                if signal:
                    grad = grad + 3.0 * torch.randn(16, k, generator=gen, dtype=torch.float64) @ basis.T
                total += grad.T @ grad
            return total

        assert rp.signal_rank(moment(True), [moment(False) for _ in range(3)]) == k


def test_effective_rank_of_known_spectra():
    """exp(entropy of σ²/Σσ²): 1 for rank one, n for n equal singular values, exp(ln 2) = 2 for two equal ones."""
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(20, 1, generator=gen, dtype=torch.float64)
    assert rp.effective_rank(u @ torch.randn(1, 30, generator=gen, dtype=torch.float64)) == pytest.approx(1.0, abs=1e-9)
    assert rp.effective_rank(torch.eye(7, dtype=torch.float64) * 3) == pytest.approx(7.0, abs=1e-9)
    assert rp.effective_rank(torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))) == pytest.approx(
        math.exp(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2))), abs=1e-9)


def test_twonn_on_a_known_dimension():
    gen = torch.Generator().manual_seed(1)
    plane = torch.randn(2000, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 20, generator=gen,
                                                                                   dtype=torch.float64)
    assert rp.twonn_dimension(plane) == pytest.approx(2.0, abs=0.25)


def test_cca_deficit_of_features_that_hold_the_labels_or_not():
    gen = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 4, (600,), generator=gen)
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    informative = torch.cat([onehot, torch.randn(600, 6, generator=gen, dtype=torch.float64)], 1)
    noise = torch.randn(600, 10, generator=gen, dtype=torch.float64)
    assert rp.cca_deficit(informative, labels, 4) < 0.3 < 2.7 < rp.cca_deficit(noise, labels, 4) <= 3.0
    wide = torch.randn(256, 384, generator=gen, dtype=torch.float64)  # fewer examples than features: held out, not fitted
    assert rp.cca_deficit(wide, labels[:256], 4) > 2.7


def test_permutation_test_against_an_exact_p():
    """n = 4 in perfect order: exactly 1 of the 4! = 24 pairings reaches ρ = 1, so p = 1/24."""
    found = stats.spearman_test([1, 2, 3, 4], [10, 20, 30, 40], permutations=200_000)
    assert found["rho"] == pytest.approx(1.0) and found["p_value"] == pytest.approx(1 / 24, abs=0.002)
    assert stats.spearman_test([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])["p_value"] == pytest.approx(1.0, abs=1e-4)
    assert 0.6 < stats.spearman_power(12, 0.8, 0.01, simulations=4000) < 0.9  # ≈ 0.77 (docs: power)


def test_granularity_units_group_fine_labels(tmp_path):
    unit = next(u for u in rank_units.units() if u.name == "trec-c4")
    path = rank_units.build(unit, tmp_path)
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["label"] for r in rows} == {"g0", "g1", "g2", "g3"} and len(rows) == 5381
    mapping = rank_units.grouping([f"L{i}" for i in range(50)], 4)
    sizes = sorted(list(mapping.values()).count(g) for g in set(mapping.values()))
    assert sizes == [12, 12, 13, 13] and mapping == rank_units.grouping([f"L{i}" for i in range(50)], 4)


@pytest.mark.slow
def test_the_benchmark_end_to_end_on_the_tiny_model(tiny, tmp_path, keep_threads):
    units = [rank_units.RankUnit("trec-c2", "trec-c2.csv", 48, "2 groups", 2, 24, 2),
             rank_units.RankUnit("trec-c8", "trec-c8.csv", 48, "8 groups", 8, 24, 8),
             rank_units.RankUnit("movie", tiny["data"], 48, "movie", 2, 24)]
    plan = rb.Plan(model=tiny["model"], units=units, rungs=(0, 1, 4), seeds=(0, 1), max_steps=6, min_steps=3,
                   eval_steps=3, max_eval=16, lr_units=("trec-c2",), lr_grids={"lora": (1e-3, 1e-2), "head": (1e-2,)},
                   allocation_units=2, predictor_examples=16)
    report = rb.run_rank_benchmark(tmp_path / "report", tmp_path / "runs", workers=2, plan=plan)
    assert {u["name"] for u in report["units"]} == {"trec-c2", "trec-c8", "movie"}
    assert report["primary"] == rp.PRIMARY and set(report["learning_rates"]) == {"lora", "head"}
    assert set(report["learning_rates"]["lora"]) == {"trec-c2", "trec-c8", "movie"}  # one LoRA lr per unit
    chosen = {u: v["chosen"] for u, v in report["learning_rates"]["lora"].items()}
    for u in units:  # the ladder's r = 4 seed-1 run used its unit's own lr, at s = α/r
        cfg = json.loads(next((tmp_path / "runs" / "runs").glob(f"{u.name}-r4-lr{chosen[u.name]:g}-s1-*/config.json"))
                         .read_text())
        assert cfg["lr"] == chosen[u.name] and cfg["lora"]["rslora"] is False and cfg["lora"]["alpha"] == rb.ALPHA
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "figures" / "gain_curves.png").exists()
    assert all(math.isfinite(float(v)) for u in report["units"] for v in u["mean_test_loss"].values())
    written = json.loads((tmp_path / "report" / "rank.json").read_text())
    probed = json.loads((tmp_path / "report" / "predictors" / "trec-c2.json").read_text())["task"]  # beside runs.jsonl
    assert 0.9 * 48 < probed["data_bits"] <= 48  # 48 training examples × H(2 near-balanced groups), not the split's size
    trained = list((tmp_path / "runs" / "runs").glob("*/result.json"))  # every run the benchmark used, once each
    assert written["compute"]["runs"] == len(trained) and written["compute"]["run_hours"] > 0
    assert written["compute"]["machines"] == {machine_kind(): len(trained)}  # from the archive beside the report
    assert rp.benchmark_score(written)["predictor"] == rp.PRIMARY and rp.benchmark_score(written)["n"] == report["n"]
    for u in report["units"]:  # a third seed exactly where two left r90's interval wide, and the progress view agrees
        third = list((tmp_path / "runs" / "runs").glob(f"{u['name']}-r*-s2-*/result.json"))
        two = {int(rung): {s: v for s, v in by_seed.items() if int(s) < 2} for rung, by_seed in u["test_loss"].items()}
        wide = rb.needs_third_seed({"interval": rb.bootstrap_needed_rank(two)}, plan.decisive_ratio)
        assert (u["seeds"], len(third)) == ((3, len(plan.rungs)) if wide else (2, 0))
    assert set(written["sensitivity"]) == {"r80", "r95", "r90_monotone"} and "## Sensitivity of the response" in (
        tmp_path / "report" / "report.md").read_text()
    assert written["spread"]["target"] == 16.0 and "Spread of the needed ranks" in (tmp_path / "report" / "report.md").read_text()
    progress = rb.interim(tmp_path / "runs", plan)["units"]
    assert {name: row["needed_rank"] for name, row in progress.items()} == {u["name"]: u["needed_rank"] for u in report["units"]}


def test_benchmark_score_quoted_by_probe_matches_the_committed_report():
    """`loralab probe` quotes BENCHMARK_SCORE; it must be exactly what docs/study/rank/rank.json (and v2.json, once
    benchmark v2 is read) says, and None while no report is committed (a score without its report, or a stale one,
    fails here)."""
    from loralab.analysis.rank_predictors import BENCHMARK_SCORE, benchmark_score

    committed = Path(__file__).resolve().parents[1] / "docs" / "study" / "rank" / "rank.json"
    v2 = committed.with_name("v2.json")
    if committed.exists():
        assert BENCHMARK_SCORE == benchmark_score(json.loads(committed.read_text()),
                                                  json.loads(v2.read_text()) if v2.exists() else None)
    else:
        assert BENCHMARK_SCORE is None


def test_benchmark_score_reads_the_primary_predictors_test():
    """ρ 0.83 at p 0.004 validates (p < 0.01); the needed ranks of the kept units only; the predicted allocation
    against uniform counted by mean and by interval (one seed has no interval)."""
    def against(mean, low, high, n=3):
        return {"allocations": {"predicted": {"minus_uniform": {"mean": mean, "low": low, "high": high, "n": n}}}}

    report = {"primary": "gradient_effective_rank", "spearman": 0.83, "p_value": 0.004, "n": 11,
              "power": {"alpha_0.01": 0.71, "alpha_0.05": 0.9},
              "units": [{"name": "a", "kept": True, "needed_rank": 1.5}, {"name": "b", "kept": True, "needed_rank": 6.0},
                        {"name": "c", "kept": True, "needed_rank": 2.0}, {"name": "d", "kept": False, "needed_rank": 64.0}],
              "allocation": {"a": against(-0.02, -0.03, -0.01), "b": against(0.01, 0.002, 0.02),
                             "c": against(-0.01, -0.02, 0.0), "d": against(-0.05, -0.05, -0.05, n=1)}}
    assert rp.benchmark_score(report) == {
        "predictor": "gradient_effective_rank", "rho": 0.83, "p_value": 0.004, "n": 11, "power_rho_0.8": 0.71,
        "validated": True, "needed_rank": {"units": 3, "median": 2.0, "lowest": ["a", 1.5], "highest": ["b", 6.0]},
        "allocation_vs_uniform": {"units": 4, "lower": 3, "interval_below_0": 1, "interval_above_0": 1},
        "test": "H1", "source": "docs/study/rank/rank.json"}
    assert not rp.benchmark_score({**report, "spearman": 0.83, "p_value": 0.011})["validated"]
    v2 = {"test": {"primary": "gradient_effective_rank", "spearman": -0.2, "p_value": 0.78, "n": 15,
                   "power_rho_0.8": {"alpha_0.01": 0.93, "alpha_0.05": 0.99}}}
    with_v2 = rp.benchmark_score(report, v2)  # H1-v2's test; the registered units' needed ranks and allocation
    assert {key: with_v2[key] for key in ("rho", "p_value", "n", "power_rho_0.8", "validated", "test", "source")} == {
        "rho": -0.2, "p_value": 0.78, "n": 15, "power_rho_0.8": 0.93, "validated": False, "test": "H1-v2",
        "source": "docs/study/rank/v2.json, rank.json"}
    assert with_v2["needed_rank"]["highest"] == ["b", 6.0] and with_v2["allocation_vs_uniform"]["lower"] == 3


def test_report_counts_allocations_against_uniform_and_states_compute():
    from loralab.experiments import rank_report

    def diff(mean, low, high, n=2):
        return {"minus_uniform": {"mean": mean, "low": low, "high": high, "n": n}}

    report = {"allocation": {"a": {"allocations": {"predicted": diff(-0.02, -0.03, -0.01), "eva": diff(0.01, -0.1, 0.12),
                                                   "random": diff(0.03, 0.01, 0.05)}},
                             "b": {"allocations": {"predicted": diff(-0.01, -0.2, 0.18), "eva": diff(-0.01, -0.01, -0.01, 1),
                                                   "random": diff(0.02, -0.3, 0.34)}}},
              "compute": {"runs": 283, "run_hours": 27.5, "workers": 2, "threads_per_run": 1}, "seconds": 7200.0}
    assert rank_report.allocation_summary(report) == (
        "Test loss against uniform: predicted lower on 2 of 2 units (interval below 0 on 1, above 0 on 0); "
        "eva lower on 1 of 2 units (interval below 0 on 0, above 0 on 0); "
        "random lower on 0 of 2 units (interval below 0 on 0, above 0 on 1).")
    assert rank_report.compute_line(report).startswith(
        "Compute: 283 runs, 27.5 h of run time (the sum of each run's own wall clock, 1 thread each; 2 at a time on "
        "this machine ≈ 13.8 h elapsed). This invocation: 2.00 h")
    report["compute"]["machines"] = {"AMD EPYC, no native bf16": 90, "Intel Xeon, native bf16": 193}
    assert rank_report.compute_line(report).endswith(
        " Runs trained on: Intel Xeon, native bf16 (193), AMD EPYC, no native bf16 (90).")


def test_planted_update_has_exactly_rank_k_with_a_flat_spectrum():
    weight = torch.randn(48, 32, generator=torch.Generator().manual_seed(0))
    delta = rank_units.planted_update(weight, 5, 0.5, torch.Generator().manual_seed(1))
    singular = torch.linalg.svdvals(delta.double())
    top = 0.5 * torch.linalg.matrix_norm(weight.double(), 2)
    assert torch.allclose(singular[:5], top.expand(5), rtol=1e-6) and singular[5:].max() < 1e-5 * top


def test_planted_labels_are_balanced_and_linear_in_the_teacher_features():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4000, 16, generator=generator)
    labels = rank_units.planted_labels(features, 4, torch.Generator().manual_seed(3))
    counts = torch.bincount(labels, minlength=4)
    assert counts.min() > 0.15 * 4000  # median-shifted scores: no class starves
    readout = torch.randn(4, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scores = (features.double() - features.double().mean(0)) @ readout.T
    assert torch.equal(labels, (scores - scores.median(0).values).argmax(1))  # a linear readout plus a bias


def test_planted_unit_on_the_tiny_model_writes_labels_and_its_per_layer_truth(tiny, tmp_path):
    unit = rank_units.RankUnit("planted-k2", "planted-k2.csv", 48, "planted", 4, 24, planted=2)
    path = Path(rank_units.build(unit, tmp_path, tiny["model"]))
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5381 and {r["label"] for r in rows} == {"c0", "c1", "c2", "c3"}
    truth = json.loads((tmp_path / "planted-k2.planted.json").read_text())
    assert truth["per_layer_rank"] == {"bert.encoder.layer.0.attention.self.query": 0,
                                       "bert.encoder.layer.0.attention.self.value": 2,
                                       "bert.encoder.layer.1.attention.self.query": 0,
                                       "bert.encoder.layer.1.attention.self.value": 2}
    assert rank_units.build(unit, tmp_path, tiny["model"]) == str(path)  # built once, then read back


def test_planted_truth_scores_each_per_layer_predictor_against_the_planted_layers(tiny, tmp_path):
    unit = rank_units.RankUnit("planted-k2", "planted-k2.csv", 48, "planted", 4, 24, planted=2)
    bench = rb.Bench(rb.Plan(model=tiny["model"], units=[unit]), tmp_path, rb.ReadOnly())
    paths = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]
    layers = {p: {"gradient_effective_rank": 5.0 if p.endswith("value") else 1.0, "activation_rank": float(i)}
              for i, p in enumerate(paths)}
    found = rb.planted_truth(bench, {"planted-k2": {"layers": layers}})["planted-k2"]
    assert found["k"] == 2 and found["per_layer"][paths[1]]["truth"] == 2 and found["per_layer"][paths[0]]["truth"] == 0
    assert found["predictors"]["gradient_effective_rank"] == {"rho": pytest.approx(1.0), "planted_minus_unplanted": 4.0}
    assert found["predictors"]["activation_rank"]["planted_minus_unplanted"] == 1.0  # (1 + 3)/2 − (0 + 2)/2


@pytest.mark.slow
def test_learning_rates_only_stops_before_any_ladder_rung(tiny, tmp_path, keep_threads):
    unit = rank_units.RankUnit("movie", tiny["data"], 48, "movie", 2, 24)
    plan = rb.Plan(model=tiny["model"], units=[unit], rungs=(0, 1, 4), seeds=(0, 1), max_steps=6, min_steps=3,
                   eval_steps=3, max_eval=16, lr_units=("movie",), lr_grids={"lora": (1e-3, 1e-2, 1e-1), "head": (1e-2,)})
    lrs = rb.run_rank_benchmark(tmp_path / "report", tmp_path / "runs", workers=2, plan=plan, learning_rates_only=True)
    assert set(lrs) == {"head", "lora"} and f"{lrs['lora']['movie']['chosen']:g}" in lrs["lora"]["movie"]["grid"]
    names = sorted(p.parent.name for p in (tmp_path / "runs" / "runs").glob("*/config.json"))
    assert all("-lrgrid-" in n or "-r8-" in n for n in names)  # no rung but r = 8
    assert [p.name for p in (tmp_path / "report").iterdir()] == ["runs.jsonl"]  # the runs' records; no report yet


def test_report_names_the_ladder_runs_still_improving_at_the_step_cap():
    from loralab.experiments import rank_report

    def run(best_step, loss):
        return SimpleNamespace(best_step=best_step, config={"max_steps": 2000}, steps=2000, test={"loss": loss})

    capped = rb.unit_summary({0: {0: run(2000, 1.0), 1: run(1400, 1.1)}, 1: {0: run(900, 0.5), 1: run(2000, 0.6)}})
    free = rb.unit_summary({0: {0: run(1900, 1.0), 1: run(1400, 1.1)}, 1: {0: run(900, 0.5), 1: run(None, 0.6)}})
    assert (capped["runs"], capped["at_step_cap"], free["at_step_cap"]) == (4, ["r0-s0", "r1-s1"], [])
    report = {"plan": {"max_steps": 2000}, "units": [{"name": "a", **capped}, {"name": "b", **free}]}
    assert rank_report.convergence_line(report) == (
        "Convergence: 2 of 8 ladder runs had their best validation loss at the 2,000-step cap (still improving when "
        "stopped; their losses may be high): a r0-s0, r1-s1.")
    report["units"] = report["units"][1:]
    assert rank_report.convergence_line(report) == (
        "Convergence: all 4 ladder runs had their best validation loss before the 2,000-step cap.")


def test_allocation_budget_leaves_rank_to_move():
    """Amendment 8: at one rank per layer every allocation is uniform (each layer keeps ≥ 1), so the budget is at
    least two per layer; above that it is the rung at or below r90."""
    layers = {f"l{i}": {rp.PRIMARY: float(i), "activation_rank": 10.0 + i} for i in range(4)}
    assert [rb.allocation_rank(r, 2) for r in (0.98, 1.7, 2.6, 9.3, 40.0)] == [2, 2, 2, 8, 32]
    assert all(set(ranks.values()) == {1} for ranks in rb.allocations(layers, 4).values())
    two = rb.allocations(layers, 8)
    assert two["uniform"] == {"l0": 2, "l1": 2, "l2": 2, "l3": 2}
    assert two["predicted"] == {"l0": 1, "l1": 2, "l2": 2, "l3": 3}  # ∝ signal rank + 0.5, largest remainders
    assert all(sum(ranks.values()) == 8 for ranks in two.values())


class AllocationRuns:
    """Stands in for `rank_benchmark.Bench` where only the allocation logic is under test: every unit's LoRA lr is
    1e-3; a run's validation loss is |log(lr / optimum[allocation])|, its test loss ``test(allocation, seed, lr)``."""

    def __init__(self, units, optimum, test):
        self.plan = rb.Plan(model="minilm", units=units, allocation_units=len(units))
        self.optimum, self.test, self.trained = optimum, test, []

    def lr(self, unit, rung):
        return 1e-3

    def data(self, unit):
        return unit.data

    def run(self, jobs, desc):
        out = {}
        for name, cfg in jobs:
            alloc = name.split("-alloc-")[1].split("-lr")[0]
            self.trained.append((name.split("-r")[0], alloc, cfg.seed, cfg.lr, cfg.lora.r))
            out[name] = SimpleNamespace(validation={"loss": abs(math.log(cfg.lr / self.optimum[alloc]))},
                                        test={"loss": self.test(alloc, cfg.seed, cfg.lr)})
        return out


TREC_C2 = rank_units.RankUnit("trec-c2", "trec-c2.csv", 48, "2 groups", 2, 24, 2)
TREC_C8 = rank_units.RankUnit("trec-c8", "trec-c8.csv", 48, "8 groups", 8, 24, 8)


def test_allocation_learning_rates_are_extended_past_an_edge():
    """Each allocation's grid (the unit's lr × 1/3, 1, 3) grows by ×3 while its best value is at an edge, at most
    twice; validation loss here is |log(lr / optimum)|, so the chosen lr and the values tried are known."""
    runs = AllocationRuns([TREC_C2], {"uniform": 1e-3, "predicted": 9e-3, "eva": 1.11e-4, "random": 1e-1},
                          lambda alloc, seed, lr: lr)
    table = rb.tune_allocations(runs, TREC_C2, {a: {"layer.0.attention.query": 2} for a in runs.optimum}, 2, seed=0)
    assert {a: (row["lr"], row["at_edge"]) for a, row in table.items()} == {
        "uniform": (1e-3, False), "predicted": (9e-3, False), "eva": (1.11e-4, False), "random": (2.7e-2, True)}
    tried = {a: {lr for _, alloc, _, lr, _ in runs.trained if alloc == a} for a in runs.optimum}
    assert tried["uniform"] == {3.33e-4, 1e-3, 3e-3} and tried["eva"] == {3.7e-5, 1.11e-4, 3.33e-4, 1e-3, 3e-3}
    assert tried["random"] == {3.33e-4, 1e-3, 3e-3, 9e-3, 2.7e-2} and table["random"]["test_loss"] == {0: 2.7e-2}


def test_allocation_reruns_the_tuned_lr_on_three_seeds_and_pairs_with_uniform():
    shift = {"uniform": 0.0, "predicted": -0.02, "eva": 0.01, "random": 0.03}
    runs = AllocationRuns([TREC_C2, TREC_C8], {"uniform": 1e-3, "predicted": 3e-3, "eva": 1e-3, "random": 3.33e-4},
                          lambda alloc, seed, lr: 0.5 + 0.01 * seed * seed + shift[alloc])
    layers = {f"layer.{i}.attention.query": {rp.PRIMARY: float(i), "activation_rank": 5.0 + i} for i in range(3)}
    summaries = {"trec-c2": {"kept": True, "needed_rank": 1.3}, "trec-c8": {"kept": True, "needed_rank": 9.0}}
    out = rb.allocation(runs, summaries, {u: {"layers": layers} for u in summaries})
    assert {u: (row["rank"], row["budget"]) for u, row in out.items()} == {"trec-c2": (2, 6), "trec-c8": (8, 24)}
    assert out["trec-c2"]["ranks"]["predicted"] == {"layer.0.attention.query": 1, "layer.1.attention.query": 2,
                                                    "layer.2.attention.query": 3}
    for row in out.values():
        a = row["allocations"]
        assert all(set(a[k]["test_loss"]) == {0, 1, 2} for k in rb.ALLOCATIONS)
        for k in ("predicted", "eva", "random"):
            diff = a[k]["minus_uniform"]
            assert diff["n"] == 3 and diff["mean"] == pytest.approx(shift[k], abs=1e-12) and diff["sd"] < 1e-12
            assert diff["power"]["unit"] == "seeds" and diff["power"]["n"] == 3
    reruns = {(u, alloc, lr) for u, alloc, seed, lr, _ in runs.trained if seed > 0}
    assert reruns == {(u, alloc, runs.optimum[alloc]) for u in summaries for alloc in rb.ALLOCATIONS}
    assert {r for *_, r in runs.trained} == {2, 8}  # every run at the unit's allocation rank


def test_allocation_table_gives_learning_rates_edges_and_what_the_interval_detects():
    from loralab.experiments import rank_report

    def arm(lr, losses, edge=False):
        return {"lr": lr, "at_edge": edge, "test_loss": dict(enumerate(losses))}

    table = {"uniform": arm(1e-3, [0.50, 0.52, 0.48]), "predicted": arm(3e-3, [0.47, 0.50, 0.47]),
             "eva": arm(1e-3, [0.55, 0.52, 0.50]), "random": arm(3.33e-4, [0.50, 0.53, 0.47], edge=True)}
    for name in ("predicted", "eva", "random"):
        diff = stats.paired(table[name]["test_loss"], table["uniform"]["test_loss"])
        table[name]["minus_uniform"] = {**diff, "power": {**stats.what_decides(diff, 0.0), "unit": "seeds"}}
    lines = rank_report.allocation_table({"allocation": {"trec-c4": {"budget": 48, "allocations": table}}})
    assert lines[2] == ("| trec-c4 | 48 | 0.5000 (0.001) | -0.0200 [-0.0448, +0.0048] (0.003) | "
                        "+0.0233 [-0.0392, +0.0858] (0.001) | +0.0000 [-0.0248, +0.0248] (0.000333, edge) |")
    ranks = {"uniform": {"q": 2, "v": 2}, "predicted": {"q": 3, "v": 1}, "eva": {"q": 2, "v": 2}, "random": {"q": 1, "v": 3}}
    same = rank_report.allocation_table({"allocation": {"trec-c4": {"budget": 4, "allocations": table, "ranks": ranks}}})
    assert same[2].split(" | ")[4] == "same ranks as uniform (0.001)"
    assert "eva lower on 0 of 1 units (interval below 0 on 0, above 0 on 0; the same ranks as uniform on 1)" in (
        rank_report.allocation_summary({"allocation": {"trec-c4": {"allocations": table, "ranks": ranks}}}))
    sd = table["predicted"]["minus_uniform"]["sd"]
    assert lines[4] == (f"What the predicted − uniform interval can detect with 80% power (paired t-test): trec-c4 "
                        f"(detects ±{stats.detectable_effect(sd, 3):.3f} at n = 3 seeds; n ≈ "
                        f"{stats.n_needed(sd, -0.02)} would decide it).")


def test_subspace_readout_reads_only_the_k_directions_the_update_moved():
    """Features that changed along 3 directions (plus nothing else): the readout's rows lie in those 3 directions,
    so its rank is 3 and it is blind to the orthogonal complement."""
    generator = torch.Generator().manual_seed(0)
    moved = torch.linalg.qr(torch.randn(20, 3, generator=generator, dtype=torch.float64))[0]  # hidden × 3
    change = torch.randn(500, 3, generator=generator, dtype=torch.float64) @ moved.T
    readout = rank_units.subspace_readout(change, 3, 8, torch.Generator().manual_seed(1))
    assert readout.shape == (8, 20) and torch.linalg.matrix_rank(readout) == 3
    outside = torch.eye(20, dtype=torch.float64) - moved @ moved.T
    assert (readout @ outside).abs().max() < 1e-10


def test_planted_subspace_unit_plants_in_the_last_value_layer_only(tiny, tmp_path):
    unit = rank_units.RankUnit("planted2-k2", "planted2-k2.csv", 48, "planted", 4, 24, planted=2, design="last-value")
    texts = rank_units.pooled_texts(("sms",))[:300]
    rank_units.build_planted_subspace(unit, tmp_path / unit.data, tiny["model"], texts=texts)
    with open(tmp_path / unit.data, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == texts and len({r["label"] for r in rows}) >= 3
    truth = json.loads((tmp_path / "planted2-k2.planted.json").read_text())
    assert truth["design"] == "last-value" and truth["per_layer_rank"] == {
        "bert.encoder.layer.0.attention.self.query": 0, "bert.encoder.layer.0.attention.self.value": 0,
        "bert.encoder.layer.1.attention.self.query": 0, "bert.encoder.layer.1.attention.self.value": 2}


def test_pooled_texts_are_distinct_and_seeded():
    texts = rank_units.pooled_texts(("sms", "tweets"))
    assert len(texts) == len(set(texts)) and texts == rank_units.pooled_texts(("sms", "tweets"))
    assert texts != rank_units.pooled_texts(("sms", "tweets"), seed=1)


def test_planted_pilot_verdict_reads_the_prediction_fixed_before_its_runs():
    """k = 16: head 2.0, r = 1 1.9, r = 16 1.5 → r = 16 gains 25% of the head's loss, r = 1 reaches 0.2 of it;
    k = 1: head 2.0, r = 1 1.54, r = 16 1.5 → r = 1 reaches 0.92: rank-sensitive. Were r = 1 on k = 16 as good as
    r = 16, it would not be."""
    from loralab.experiments import planted_pilot as pp

    high, low = pp.gain_share({0: 2.0, 1: 1.9, 16: 1.5}), pp.gain_share({0: 2.0, 1: 1.54, 16: 1.5})
    assert high == {"g_r1": pytest.approx(0.2), "gain_r16": pytest.approx(0.25)}
    assert low["g_r1"] == pytest.approx(0.92)
    assert pp.verdict({1: low, 16: high}) == "rank-sensitive"
    assert pp.verdict({1: low, 16: pp.gain_share({0: 2.0, 1: 1.52, 16: 1.5})}) == "not rank-sensitive"
    assert pp.verdict({1: low, 16: pp.gain_share({0: 2.0, 1: 1.99, 16: 1.98})}) == "not rank-sensitive"  # 1% gain
    assert [u.name for u in pp.pilot_units()] == ["planted2-k1", "planted2-k16"]
