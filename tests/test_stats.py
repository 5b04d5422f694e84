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


def test_what_decides_an_interval():
    """sd 0.01 over n = 3: the smallest difference a paired t-test detects with 80% power; an interval straddling
    the threshold names the n that would decide its mean difference (0.005 at sd 0.01: about 34 pairs)."""
    interval = {**stats.mean_ci([0.975, 0.985, 0.995])}  # mean 0.985, sd 0.01
    decided = stats.what_decides(interval, 0.98)
    assert decided["n"] == 3 and decided["detectable_difference"] == pytest.approx(stats.detectable_effect(0.01, 3))
    assert decided["n_needed"] == stats.n_needed(0.01, 0.005) and 30 < decided["n_needed"] < 40
    clear = stats.what_decides(stats.mean_ci([0.90, 0.91, 0.92]), 0.98)
    assert clear["n_needed"] is None
