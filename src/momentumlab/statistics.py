"""Uncertainty of a comparison over seeds: paired differences with a percentile-bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
    """Mean of `values` with a percentile-bootstrap interval (resampling the values with replacement).

    NaN values are dropped (a diverged seed has no value); with fewer than two values the interval is
    the single value itself when n = 1 and NaN when n = 0.

    References: Efron & Tibshirani, An Introduction to the Bootstrap (1993), §13.3 — the percentile
    interval [q_{α/2}, q_{1−α/2}] of the resampled means.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence = {confidence!r}: must lie in (0, 1)")
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, confidence)
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2  # α/2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size), confidence)


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
