"""Uncertainty of a comparison over seeds: paired differences with a percentile-bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """A mean over n paired seeds with its bootstrap interval [low, high] at `confidence`."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float


def bootstrap_mean(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> Estimate:
    """Mean of `values` with an expanded percentile-bootstrap interval (resampling with replacement).

    The plain percentile interval of the resampled means is too narrow for the few seeds a
    reproduction has (its spread is that of a z-interval with the biased variance); the expanded
    interval takes the quantiles at α′/2 = Φ(−√(n/(n−1)) · t_{n−1, 1−α/2}) instead of α/2, which makes
    its width match a Student-t interval's for normal data while keeping the bootstrap's shape.
    NaN values are dropped (a diverged seed has no value); n = 1 gives the value itself as the interval
    and n = 0 gives NaN.

    References: Efron & Tibshirani, An Introduction to the Bootstrap (1993), §13.3 — the percentile
    interval; Hesterberg, What Teachers Should Know About the Bootstrap (2015), §5.2 — the expanded
    percentile interval for small samples.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence = {confidence!r}: must lie in (0, 1)")
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, confidence)
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = _expanded_tail(1 - confidence, x.size)  # α′/2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size), confidence)


def _expanded_tail(alpha: float, n: int) -> float:
    """α′/2 = Φ(−√(n/(n−1)) · t_{n−1, 1−α/2}), the expanded percentile interval's tail (n ≥ 2)."""
    if n < 2:
        return alpha / 2
    return float(stats.norm.cdf(-np.sqrt(n / (n - 1)) * stats.t.ppf(1 - alpha / 2, n - 1)))


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> Estimate:
    """Mean of a_s − b_s over seeds s paired by position, with its bootstrap interval.

    A pair with a NaN on either side is dropped (n counts the pairs kept).
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    return bootstrap_mean(
        np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), confidence, resamples, seed
    )
