"""Small-sample statistics for the study: means with 95% t-intervals, paired differences, Spearman, verdicts.

With n seeds, the 95% interval of a mean is x̄ ± t_{0.975, n−1}·s/√n (Student's t). A ratio or
difference between two methods is taken per seed (paired: the same split, data order and head
initialisation) and then summarised the same way. A claim's verdict compares the interval with
the claim's threshold: entirely on the claimed side → "holds", entirely on the other side →
"does not hold", straddling it → "inconclusive at this n".
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import Optional, Sequence

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive at this n"


def t_quantile(dof: int, level: float = 0.975) -> float:
    """Student's t quantile (scipy); t_{0.975, dof} for a two-sided 95% interval."""
    from scipy import stats

    return float(stats.t.ppf(level, dof))


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

    rx, ry = _ranks(list(xs)), _ranks(list(ys))
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


# ----- tests with their power ---------------------------------------------------------------------
def spearman_test(xs: Sequence[float], ys: Sequence[float], permutations: int = 100_000, seed: int = 0) -> dict:
    """Spearman's ρ with a one-sided permutation p-value for ρ > 0: the share of ``permutations`` random pairings
    of the same values whose ρ is at least the observed one (with the observed pairing counted, so p > 0)."""
    import numpy as np

    x, y = np.asarray(_ranks(list(xs)), float), np.asarray(_ranks(list(ys)), float)
    x, y = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    rho = float((x * y).mean())
    rng = np.random.default_rng(seed)
    count, done, batch = 0, 0, 10_000
    while done < permutations:
        size = min(batch, permutations - done)
        shuffled = rng.permuted(np.broadcast_to(y, (size, len(y))).copy(), axis=1)
        count += int(((shuffled @ x) / len(x) >= rho - 1e-12).sum())
        done += size
    return {"rho": rho, "p_value": (count + 1) / (permutations + 1), "n": len(x), "permutations": permutations}


def kruskal_test(groups: dict[str, Sequence[float]], permutations: int = 100_000, seed: int = 0) -> dict:
    """Do the groups differ beyond their within-group spread? The Kruskal–Wallis statistic
    H = 12/(N(N + 1))·Σ_g R_g²/n_g − 3(N + 1) (R_g: group g's sum of ranks among all N values, ties averaged) with a
    permutation p: the share of ``permutations`` random reassignments of the values to groups of the same sizes whose
    H is at least the observed one (the observed assignment counted, so p > 0). Exact at any group size, where the
    χ² approximation is not (2–3 values per group)."""
    import numpy as np

    names = list(groups)
    values = [float(v) for g in names for v in groups[g]]
    sizes = np.array([len(groups[g]) for g in names])
    labels = np.repeat(np.arange(len(names)), sizes)
    ranks, n = np.asarray(_ranks(values), float) + 1.0, len(values)

    def statistic(assigned: "np.ndarray") -> "np.ndarray":  # (P, N) group of each value → (P,) H
        sums = np.stack([(ranks * (assigned == g)).sum(-1) for g in range(len(names))], -1)
        return 12.0 / (n * (n + 1)) * (sums ** 2 / sizes).sum(-1) - 3.0 * (n + 1)

    observed = float(statistic(labels[None])[0])
    rng = np.random.default_rng(seed)
    count, done, batch = 0, 0, 10_000
    while done < permutations:
        size = min(batch, permutations - done)
        shuffled = rng.permuted(np.broadcast_to(labels, (size, n)).copy(), axis=1)
        count += int((statistic(shuffled) >= observed - 1e-12).sum())
        done += size
    return {"statistic": observed, "p_value": (count + 1) / (permutations + 1), "n": n, "groups": len(names),
            "permutations": permutations}


def spearman_critical(n: int, alpha: float, permutations: int = 100_000, seed: int = 1) -> float:
    """The ρ a permutation test at level ``alpha`` (one-sided) needs with ``n`` points (distinct ranks)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ranks = np.arange(n, dtype=float)
    z = (ranks - ranks.mean()) / ranks.std()
    null = (rng.permuted(np.broadcast_to(z, (permutations, n)).copy(), axis=1) @ z) / n
    return float(np.quantile(null, 1 - alpha))


def spearman_power(n: int, rho: float = 0.8, alpha: float = 0.01, simulations: int = 20_000, seed: int = 2) -> float:
    """The power of `spearman_test` at level ``alpha`` against a population Spearman ρ: the share of samples of
    ``n`` points from a bivariate normal whose Pearson r = 2·sin(π·ρ/6) (that population's Spearman ρ) reaching
    the test's critical ρ."""
    import numpy as np

    rng = np.random.default_rng(seed)
    r = 2 * math.sin(math.pi * rho / 6)
    a = rng.standard_normal((simulations, n))
    b = r * a + math.sqrt(1 - r * r) * rng.standard_normal((simulations, n))
    ra, rb = a.argsort(1).argsort(1).astype(float), b.argsort(1).argsort(1).astype(float)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    sample = (ra * rb).sum(1) / np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    return float((sample >= spearman_critical(n, alpha) - 1e-12).mean())


def partial_spearman(xs: Sequence[float], ys: Sequence[float], zs: Sequence[float]) -> Optional[float]:
    """Spearman ρ of x and y with z held fixed: the Pearson correlation of the rank residuals of x and y on z."""
    import numpy as np

    rx, ry, rz = (np.asarray(_ranks(list(v)), float) for v in (xs, ys, zs))

    def residual(a):
        design = np.column_stack([np.ones_like(rz), rz])
        return a - design @ np.linalg.lstsq(design, a, rcond=None)[0]

    ex, ey = residual(rx), residual(ry)
    norm = math.sqrt(float(ex @ ex) * float(ey @ ey))
    return float(ex @ ey) / norm if norm > 1e-12 else None


def bootstrap_interval(values: Sequence, statistic, resamples: int = 10_000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(sample)`` over resamples (with replacement) of ``values``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = list(values)
    draws = [statistic([values[i] for i in rng.integers(0, len(values), len(values))]) for _ in range(resamples)]
    draws = [d for d in draws if d is not None]
    tail = (1 - level) / 2
    return float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))


def expected_noise_range(arms: int, se: float, draws: int = 200_000, seed: int = 3) -> float:
    """E[max − min] of ``arms`` means that differ only by noise of standard error ``se`` (se × d_k, d_2 = 1.128,
    d_3 = 1.693, d_4 = 2.059): the spread a family of arms shows with no effect at all — more arms, more spread."""
    return se * range_constant(arms, draws, seed) if arms >= 2 and se > 0 else 0.0


@functools.lru_cache(maxsize=None)
def range_constant(arms: int, draws: int = 200_000, seed: int = 3) -> float:
    """d_k = E[max − min] of k standard normals (Monte Carlo, seeded)."""
    import numpy as np

    sample = np.random.default_rng(seed).standard_normal((draws, arms))
    return float((sample.max(1) - sample.min(1)).mean())


def excess_spread(arms: dict) -> dict:
    """The spread of arm means beyond what noise alone gives: range of the means − `expected_noise_range` at the
    pooled standard error of a mean. ``arms``: {arm: [per-seed values]}."""
    means = [statistics.fmean(v) for v in arms.values()]
    pooled = [x - statistics.fmean(v) for v in arms.values() for x in v]
    dof = sum(len(v) - 1 for v in arms.values())
    per_seed_sd = math.sqrt(sum(d * d for d in pooled) / dof) if dof > 0 else 0.0
    se = per_seed_sd / math.sqrt(statistics.fmean(len(v) for v in arms.values()))
    spread = max(means) - min(means)
    noise = expected_noise_range(len(arms), se)
    return {"range": spread, "noise_range": noise, "excess": spread - noise, "se": se}


def spread_difference(first: dict, second: dict, resamples: int = 2000, seed: int = 0) -> dict:
    """Whether ``first``'s arms differ more than ``second``'s, each beyond its own noise (`excess_spread`): the
    difference of excess spreads with a bootstrap interval (seeds resampled within each arm)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def resample(arms: dict) -> dict:
        return {k: [v[i] for i in rng.integers(0, len(v), len(v))] for k, v in arms.items()}

    observed = excess_spread(first)["excess"] - excess_spread(second)["excess"]
    draws = [excess_spread(resample(first))["excess"] - excess_spread(resample(second))["excess"]
             for _ in range(resamples)]
    low, high = float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))
    return {"difference": observed, "low": low, "high": high, "first": excess_spread(first),
            "second": excess_spread(second)}


def paired_power(sd: float, n: int, effect: float, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test with ``n`` pairs whose differences have standard deviation ``sd`` to
    detect a mean difference ``effect`` (noncentral t)."""
    from scipy import stats

    if n < 2 or sd <= 0:
        return float("nan")
    dof, shift = n - 1, abs(effect) / (sd / math.sqrt(n))
    crit = stats.t.ppf(1 - alpha / 2, dof)
    return float(stats.nct.sf(crit, dof, shift) + stats.nct.cdf(-crit, dof, shift))


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest mean paired difference a two-sided t-test detects with ``power`` at ``n`` pairs of sd ``sd``."""
    if n < 2 or sd <= 0:
        return float("nan")
    low, high = 0.0, 10 * sd
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if paired_power(sd, n, mid, alpha) < power else (low, mid)
    return high


def n_needed(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8, limit: int = 100_000) -> Optional[int]:
    """Pairs a two-sided paired t-test needs to detect ``effect`` with ``power`` (None beyond ``limit``)."""
    if sd <= 0 or effect == 0:
        return None
    n = 2
    while n <= limit and paired_power(sd, n, effect, alpha) < power:
        n = n + 1 if n < 50 else int(n * 1.1)
    return n if n <= limit else None


def two_stage_error(first: int, total: int, power: float = 0.8, simulations: int = 200_000, seed: int = 0) -> dict:
    """The one-sided error rate of "holds" under claim 1's two-stage rule, when the true mean sits exactly at the
    threshold (the rate is scale-free, so the paired values are simulated as N(0, 1) against 0): stage 1 takes
    ``first`` values and holds when its 95% t-interval starts at or above 0; a straddling interval whose n_needed
    (`n_needed`: two-sided paired t-test, 80% power at stage 1's sd and mean) is at most ``total`` — equivalently,
    whose power at ``total`` is ≥ ``power`` — goes to stage 2, which holds on all ``total`` values' interval.
    Returns {"nominal": 0.025 (one stage), "two_stage", "second_stage_share" (how often stage 2 runs)}."""
    import numpy as np
    from scipy import stats

    draws = np.random.default_rng(seed).standard_normal((simulations, total))

    def interval(values):
        n = values.shape[1]
        mean, sd = values.mean(1), values.std(1, ddof=1)
        half = t_quantile(n - 1) * sd / math.sqrt(n)
        return mean, sd, mean - half, mean + half

    mean, sd, low, high = interval(draws[:, :first])
    shift, crit = np.abs(mean) / (sd / math.sqrt(total)), t_quantile(total - 1)
    reaches = stats.nct.sf(crit, total - 1, shift) + stats.nct.cdf(-crit, total - 1, shift) >= power
    extended = (low < 0) & (high > 0) & reaches
    holds = (low >= 0) | (extended & (interval(draws)[2] >= 0))
    return {"nominal": 0.025, "two_stage": float(holds.mean()), "second_stage_share": float(extended.mean()),
            "first": first, "total": total, "simulations": simulations}


def what_decides(interval: dict, threshold: float) -> dict:
    """What a t-interval (`mean_ci`) over n paired values can decide against ``threshold``: the smallest
    difference from it the test detects with 80% power at this n, and — when the interval straddles the threshold —
    the n that would decide the observed difference (None: no spread to judge by, or beyond 100,000)."""
    sd, n, gap = interval.get("sd", 0.0), interval.get("n", 0), interval["mean"] - threshold
    straddles = interval["low"] < threshold < interval["high"]
    return {"detectable_difference": detectable_effect(sd, n), "n": n,
            "n_needed": n_needed(sd, gap) if straddles and gap != 0 else None}


Z_95, Z_POWER = 1.959964, 0.841621  # two-sided 95% and 80% power quantiles of the standard normal


def interval_decides(estimate: float, low: float, high: float, n: int, threshold: float, unit: str) -> dict:
    """What a bootstrap (or any near-normal) 95% interval over ``n`` resampled ``unit``s can decide against
    ``threshold``, in `what_decides`' form. With se ≈ (high − low)/(2·1.96): the smallest distance from the threshold
    detected with 80% power is (1.96 + 0.84)·se; when the interval straddles the threshold, the n that would decide
    the observed distance is n·((1.96 + 0.84)·se / |estimate − threshold|)², taking se ∝ 1/√n."""
    se, gap = (high - low) / (2 * Z_95), estimate - threshold
    straddles = low < threshold < high
    needed = math.ceil(n * ((Z_95 + Z_POWER) * se / gap) ** 2) if straddles and gap != 0 and se > 0 else None
    return {"detectable_difference": (Z_95 + Z_POWER) * se, "n": n, "n_needed": needed, "unit": unit}


def binomial_interval(accuracy: float, examples: int) -> tuple[float, float]:
    """The normal 95% interval of one run's accuracy on ``examples`` held-out examples: p ± 1.96·√(p(1 − p)/n)."""
    se = math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / examples)
    return accuracy - Z_95 * se, accuracy + Z_95 * se


def binomial_decides(accuracy: float, examples: int, threshold: float) -> dict:
    """What one run's accuracy on ``examples`` held-out examples can decide against ``threshold`` when only the
    examples vary (seed noise unmeasured): `interval_decides` of `binomial_interval`."""
    return interval_decides(accuracy, *binomial_interval(accuracy, examples), examples, threshold, "held-out examples")


def decides_text(power: dict) -> str:
    """' (detects ±x at n = k; n = m would decide)' — what the test could tell at its size."""
    unit = f" {power['unit']}" if power.get("unit") else ""
    text = f" (detects ±{power['detectable_difference']:.3f} at n = {power['n']}{unit}"
    return text + (f"; n ≈ {power['n_needed']} would decide it)" if power["n_needed"] else ")")


def _ranks(values: list) -> list[float]:
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
