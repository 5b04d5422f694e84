"""The study's statistics against known values: expected noise ranges, excess spreads and their difference."""

from __future__ import annotations

import random

import pytest

from loralab.experiments import stats


def test_expected_range_of_normal_means_matches_the_tabulated_constants():
    """E[range] of k standard normals: d_2 = 1.128, d_3 = 1.693, d_4 = 2.059 (quality-control tables)."""
    for arms, constant in ((2, 1.128), (3, 1.693), (4, 2.059)):
        assert stats.expected_noise_range(arms, 0.5) == pytest.approx(0.5 * constant, abs=0.005)
    assert stats.expected_noise_range(1, 0.5) == 0.0


def test_a_spread_of_pure_noise_is_not_an_effect_and_a_real_one_is():
    rng = random.Random(0)
    noise = {arm: [rng.gauss(0.8, 0.01) for _ in range(3)] for arm in "abcd"}
    fewer = {arm: [rng.gauss(0.8, 0.01) for _ in range(3)] for arm in "xyz"}
    test = stats.spread_difference(noise, fewer)
    assert test["low"] < 0 < test["high"]  # four noisy arms spread more than three, but not beyond noise
    real = {arm: [rng.gauss(0.8 + 0.05 * i, 0.01) for _ in range(3)] for i, arm in enumerate("abcd")}
    test = stats.spread_difference(real, fewer)
    assert test["low"] > 0 and test["first"]["excess"] == pytest.approx(0.15, abs=0.03)


def test_interval_decides_from_a_bootstrap_interval():
    """se = width / (2·1.96) = 0.0204; detects (1.96 + 0.84)·se = 0.0572; the observed 0.02 needs n·(0.0572/0.02)²
    = 24.5 → 25 units. An interval clear of the threshold names no n."""
    found = stats.interval_decides(0.02, -0.02, 0.06, 3, 0.0, "seeds")
    assert found["detectable_difference"] == pytest.approx(0.057175, abs=1e-5)
    assert found["n_needed"] == 25 and found["n"] == 3 and found["unit"] == "seeds"
    assert stats.interval_decides(0.08, 0.04, 0.12, 3, 0.0, "seeds")["n_needed"] is None
    assert stats.decides_text(found) == " (detects ±0.057 at n = 3 seeds; n ≈ 25 would decide it)"


def test_binomial_decides_counts_held_out_examples():
    """Accuracy 0.9 on 1,000 examples: se 0.00949, detects 0.0266; 0.005 from the threshold needs 28,256 examples
    (at which 2.80·√(0.09/n) = 0.005)."""
    assert stats.binomial_decides(0.9, 1000, 0.88)["n_needed"] is None
    close = stats.binomial_decides(0.9, 1000, 0.895)
    assert close["detectable_difference"] == pytest.approx(0.026578, abs=1e-5) and close["n_needed"] == 28256


def test_what_decides_an_interval():
    """sd 0.01 over n = 3: the smallest difference a paired t-test detects with 80% power; an interval straddling
    the threshold names the n that would decide its mean difference (0.005 at sd 0.01: about 34 pairs)."""
    interval = {**stats.mean_ci([0.975, 0.985, 0.995])}  # mean 0.985, sd 0.01
    decided = stats.what_decides(interval, 0.98)
    assert decided["n"] == 3 and decided["detectable_difference"] == pytest.approx(stats.detectable_effect(0.01, 3))
    assert decided["n_needed"] == stats.n_needed(0.01, 0.005) and 30 < decided["n_needed"] < 40
    clear = stats.what_decides(stats.mean_ci([0.90, 0.91, 0.92]), 0.98)
    assert clear["n_needed"] is None


def test_kruskal_test_statistic_and_exact_permutation_p():
    """Three groups of three that separate completely: H = 7.2 (as scipy's, no ties) and p = 3!/(9!/(3!)³) = 6/1680
    (each of the 3! orderings of the groups is as extreme). Groups that interleave: H = 0.286, p near 1."""
    from scipy.stats import kruskal

    apart = {"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0], "c": [7.0, 8.0, 9.0]}
    found = stats.kruskal_test(apart, permutations=50_000)
    assert found["statistic"] == pytest.approx(kruskal(*apart.values()).statistic) == pytest.approx(7.2)
    assert found["p_value"] == pytest.approx(6 / 1680, abs=1e-3) and (found["n"], found["groups"]) == (9, 3)
    mixed = stats.kruskal_test({"a": [1.0, 5.0], "b": [2.0, 6.0], "c": [3.0, 4.0]}, permutations=20_000)
    assert mixed["statistic"] == pytest.approx(2 / 7) and mixed["p_value"] > 0.9


def test_two_stage_rule_raises_the_one_sided_error_of_holds_from_2_5_to_about_3_2_percent():
    """Under the null (true mean at the threshold), one stage's 95% t-interval says "holds" 2.5% of the time; claim
    1's second stage (3 → 6 seeds when that would decide it) adds the runs that hold only at 6 seeds."""
    never_extends = stats.two_stage_error(3, 6, power=1.1, simulations=100_000)
    assert never_extends["second_stage_share"] == 0.0
    assert never_extends["two_stage"] == pytest.approx(0.025, abs=0.0015)  # the t-interval is calibrated
    found = stats.two_stage_error(3, 6)
    assert found["two_stage"] == pytest.approx(0.0321, abs=0.0005)
    assert found["second_stage_share"] == pytest.approx(0.080, abs=0.002)
