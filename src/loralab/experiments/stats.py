"""Small-sample statistics for the study: means with 95% t-intervals, paired differences, Spearman, verdicts.

With n seeds, the 95% interval of a mean is x̄ ± t_{0.975, n−1}·s/√n (Student's t). A ratio or
difference between two methods is taken per seed (paired: the same split, data order and head
initialisation) and then summarised the same way. A claim's verdict compares the interval with
the claim's threshold: entirely on the claimed side → "holds", entirely on the other side →
"does not hold", straddling it → "inconclusive at this n".
"""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive at this n"
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile(dof: int) -> float:
    """t_{0.975, dof} (two-sided 95%); nearest tabulated dof below, 1.96 beyond 30."""
    if dof > 30:
        return 1.96
    return T_975[max(k for k in T_975 if k <= dof)]


def mean_ci(values: Sequence[float]) -> dict:
    """{"mean", "low", "high", "n", "sd"}: the 95% t-interval (a single value has a zero-width interval)."""
    values = [float(v) for v in values]
    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else 0.0
    half = t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "sd": sd}


def paired(a: dict[int, float], b: dict[int, float], op: str = "diff") -> dict:
    """Per-seed a − b (or a / b) over the seeds both have, summarised by `mean_ci`."""
    seeds = sorted(set(a) & set(b))
    values = [a[s] - b[s] if op == "diff" else a[s] / b[s] for s in seeds]
    return {**mean_ci(values), "seeds": seeds, "values": values}


def verdict(interval: dict, threshold: float, above: bool = True) -> str:
    """Whether the interval lies above (or below) ``threshold``."""
    low, high = interval["low"], interval["high"]
    if above:
        return HOLDS if low >= threshold else (FAILS if high < threshold else INCONCLUSIVE)
    return HOLDS if high <= threshold else (FAILS if low > threshold else INCONCLUSIVE)


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """All hold → holds; any fails → does not hold; otherwise inconclusive."""
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == FAILS for v in verdicts):
        return FAILS
    return INCONCLUSIVE


def spearman(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Spearman's ρ with average ranks for ties; None below 3 points or for a constant series."""
    if len(xs) < 3:
        return None

    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out, i = [0.0] * len(values), 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(list(xs)), ranks(list(ys))
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm else None


def pearson(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    if len(xs) < 3:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    cov = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    norm = math.sqrt(sum((a - mx) ** 2 for a in xs) * sum((b - my) ** 2 for b in ys))
    return cov / norm if norm else None


def binomial_tail(successes: int, n: int, p: float) -> float:
    """P(X ≥ successes) for X ~ Binomial(n, p): the one-sided exact test of a rate above ``p`` (in log
    space, so a test split of thousands does not overflow)."""
    if successes <= 0 or p >= 1:
        return 1.0
    if p <= 0:
        return 0.0
    def log_pmf(k: int) -> float:
        return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                + k * math.log(p) + (n - k) * math.log1p(-p))
    return min(1.0, sum(math.exp(log_pmf(k)) for k in range(successes, n + 1)))


def majority_rate(labels: Sequence) -> float:
    """Accuracy of always answering the most frequent label: the chance level of a classification test."""
    return max(labels.count(label) for label in set(labels)) / len(labels)
