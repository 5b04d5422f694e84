"""Verdict rules of the full study's claims on known inputs: no training, the claim's own arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from loralab.experiments.claims_geometry import shared_directions_verdict
from loralab.experiments.claims_training import claim_2
from loralab.experiments.context import Context
from loralab.experiments.stats import FAILS, HOLDS, INCONCLUSIVE


def with_benchmark(units: list[tuple[str, float, list]]) -> Context:
    """A study whose claim 9 (the rank benchmark) has already given these (name, r90, interval) units, 2 seeds each."""
    found = [{"name": n, "needed_rank": r, "interval": i, "kept": True, "seeds": 2, "predicted": {}} for n, r, i in units]
    found.append({"name": "dropped", "needed_rank": 64.0, "interval": [40.0, 64.0], "kept": False, "seeds": 2,
                  "predicted": {}})
    return Context(tasks=("movie",), seeds=(0, 1), root=Path("unused"), out=Path("unused"), executor=None,
                   outcomes={9: {"units": found}})


def test_claim_2_needs_two_intervals_apart_and_names_the_seeds_for_an_interval_across_8():
    """c2 [0.8, 1.2] and c4 [6, 12] are apart: task-dependent holds. c4 straddles 8 at r90 = 9: small is undecided;
    its log half-width ln(2)/2 = 0.347 must shrink below ln(9/8) = 0.118, so 2·(0.347/0.118)² = 17.3 → 18 seeds.
    The unit the benchmark dropped (r90 64) counts for nothing."""
    c = claim_2(with_benchmark([("c2", 1.0, [0.8, 1.2]), ("c4", 9.0, [6.0, 12.0]), ("c8", 2.5, [2.0, 3.0])]))
    assert (c["task_dependent"], c["small"], c["verdict"]) == (HOLDS, INCONCLUSIVE, INCONCLUSIVE)
    assert c["power"]["n_needed_small"] == 18 and c["power"]["n_needed_task_dependent"] is None
    assert [r["unit"] for r in c["rows"]] == ["c2", "c8", "c4"] and c["spread"] == pytest.approx(9.0)


def test_claim_2_fails_task_dependence_when_narrow_intervals_share_a_rank():
    """Intervals 1.5× and 1.43× wide (median under 2×) that overlap: the ladder could have told the units apart, and
    did not. Every interval ends at ≤ 8: small holds."""
    c = claim_2(with_benchmark([("a", 3.7, [3.0, 4.5]), ("b", 4.2, [3.5, 5.0])]))
    assert (c["small"], c["task_dependent"], c["verdict"]) == (HOLDS, FAILS, FAILS)
    assert c["power"]["median_interval_ratio"] == pytest.approx((1.5 + 5 / 3.5) / 2)


def test_claim_2_wide_overlapping_intervals_are_inconclusive_with_the_seeds_that_would_decide():
    """[1, 8] and [2, 16] overlap and are 8× wide: undecided. The extremes' half-widths ln 8/2 + ln 8/2 = ln 8 must
    fall below ln(8/2.8) (the observed spread): 2·(ln 8 / ln 2.857)² = 7.86 → 8 seeds. An open interval ([9, None])
    starting above 8 makes small fail."""
    c = claim_2(with_benchmark([("low", 2.8, [1.0, 8.0]), ("high", 8.0, [2.0, 16.0])]))
    assert c["task_dependent"] == INCONCLUSIVE and c["power"]["n_needed_task_dependent"] == 8
    c = claim_2(with_benchmark([("low", 2.8, [1.0, 4.0]), ("open", 20.0, [9.0, None])]))
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
