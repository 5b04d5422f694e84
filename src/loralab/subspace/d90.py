"""d90: the smallest subspace dimension reaching 90% of full fine-tuning (Aghajanyan et al. 2021, §4).

`find_d90` is the search alone: it measures every d of a grid, then bisects (at geometric
midpoints) between the last grid point that misses the threshold and the first that reaches
it. Training a model at a given d is the caller's ``measure`` (the sweep experiment,
`loralab.experiments.d90_sweep`, trains SAID/DID runs over seeds there).
"""

from __future__ import annotations

import math
from typing import Callable, Optional


def find_d90(measure: Callable[[int], float], grid: list[int], threshold: float,
             refine: int = 1) -> tuple[Optional[int], Optional[int]]:
    """(d90, largest d known to miss the threshold); d90 is None when no d of the grid reaches it.

    Args:
        measure: d → the metric at d (e.g. mean validation accuracy over seeds); called once per d.
        grid: The d values to try first.
        threshold: The metric d90 must reach (e.g. 0.9 × full fine-tuning's).
        refine: Bisection steps between the bracketing grid points.
    """
    grid = sorted(set(grid))
    values = {d: measure(d) for d in grid}
    passing = [d for d in grid if values[d] >= threshold]
    if not passing:
        return None, grid[-1]
    hi = passing[0]
    below = [d for d in grid if d < hi]
    lo = below[-1] if below else None
    for _ in range(refine if lo else 0):
        mid = round(math.sqrt(lo * hi))
        if mid in (lo, hi):
            break
        if measure(mid) >= threshold:
            hi = mid
        else:
            lo = mid
    return hi, lo
