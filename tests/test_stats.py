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
