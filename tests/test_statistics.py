import math

import numpy as np
import pytest
from scipy import stats

from momentumlab.statistics import bootstrap_mean, paired_difference


def test_bootstrap_mean_equals_an_explicit_resampling_loop():
    values = [0.3, 1.7, -0.4, 2.2, 0.9]
    rng = np.random.default_rng(0)
    means = []
    for _ in range(2000):  # the reference: draw each resample's indices, average, one at a time
        draw = rng.integers(0, len(values), size=(1, len(values)))[0]
        means.append(sum(values[i] for i in draw) / len(values))
    means.sort()
    tail = stats.norm.cdf(-math.sqrt(5 / 4) * stats.t.ppf(0.975, 4))  # the expanded interval's α′/2
    estimate = bootstrap_mean(values, resamples=2000, seed=0)
    assert estimate.mean == pytest.approx(sum(values) / 5)
    assert estimate.low == pytest.approx(np.quantile(means, tail))
    assert estimate.high == pytest.approx(np.quantile(means, 1 - tail))
    assert estimate.n == 5


def test_width_matches_the_student_t_interval_for_few_normal_seeds():
    rng = np.random.default_rng(3)
    ratios = []
    for trial in range(50):
        sample = rng.normal(0.0, 1.0, size=6)
        estimate = bootstrap_mean(sample, resamples=4000, seed=trial)
        t_width = 2 * stats.t.ppf(0.975, 5) * sample.std(ddof=1) / math.sqrt(6)
        ratios.append((estimate.high - estimate.low) / t_width)
    assert 0.85 <= np.median(ratios) <= 1.1  # the plain percentile interval gives about 0.65 here


def test_two_values_give_the_closed_form_interval():
    # Resampled means of {0, 1} are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1];
    # at 20% the expanded tail is Φ(−√2·t_{1, 0.6}) = 0.32 > 1/4, so both ends are 1/2.
    estimate = bootstrap_mean([0.0, 1.0])
    assert (estimate.low, estimate.mean, estimate.high) == (0.0, 0.5, 1.0)
    narrow = bootstrap_mean([0.0, 1.0], confidence=0.2)
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_interval_covers_the_true_mean_at_about_its_confidence():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(300):
        sample = rng.normal(3.0, 1.0, size=20)
        estimate = bootstrap_mean(sample, resamples=2000, seed=trial)
        hits += estimate.low <= 3.0 <= estimate.high
    assert 0.88 <= hits / 300 <= 0.98  # the percentile interval undercovers slightly at n = 20


def test_paired_difference_drops_pairs_with_a_nan_and_pairs_by_position():
    a = [1.0, 2.0, float("nan"), 4.0]
    b = [0.5, 1.0, 3.0, 1.0]
    estimate = paired_difference(a, b, resamples=500)
    assert estimate.n == 3
    assert estimate.mean == pytest.approx((0.5 + 1.0 + 3.0) / 3)
    assert 0.5 <= estimate.low <= estimate.mean <= estimate.high <= 3.0


def test_empty_and_bad_inputs():
    assert bootstrap_mean([float("nan")]).n == 0 and math.isnan(bootstrap_mean([]).mean)
    single = bootstrap_mean([2.5])
    assert (single.low, single.high) == (2.5, 2.5)
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence = 1.5"):
        bootstrap_mean([1.0], confidence=1.5)
