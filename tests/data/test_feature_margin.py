"""The feature–margin distribution (D): structure checked exactly, statistics with generous bounds."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from momentumlab.data.feature_margin import FeatureMarginDataConfig, make_feature_margin_data

SMALL = {
    "n_train": 200,
    "n_test": 50,
    "dim": 8,
    "patches": 3,
    "beta_margin": 0.2,
    "noise_std": 0.5,
    "small_margin_fraction": 0.3,
}


@pytest.fixture(scope="module")
def small_data():
    return make_feature_margin_data(FeatureMarginDataConfig(**SMALL), seed=11)


@pytest.fixture(scope="module")
def large_data():
    """N = 4000 for the statistical checks (σ = 0.7, μ = 0.3)."""
    config = FeatureMarginDataConfig(
        n_train=4000, n_test=10, dim=8, patches=3, noise_std=0.7, small_margin_fraction=0.3
    )
    return config, make_feature_margin_data(config, seed=3)


def _splits(data):
    return [("train", data.train), ("test", data.test)]


def test_shapes_and_dtypes(small_data):
    assert small_data.feature.shape == (8,)
    for name, split in _splits(small_data):
        n = 200 if name == "train" else 50
        assert len(split) == n
        assert split.inputs.shape == (n, 3, 8)
        assert split.labels.shape == (n,)
        assert split.is_small_margin.shape == (n,) and split.is_small_margin.dtype == torch.bool
        assert split.signal_position.shape == (n,) and split.signal_position.dtype == torch.long
        assert split.inputs.dtype == torch.float64
        assert int(split.signal_position.min()) >= 0 and int(split.signal_position.max()) <= 2


def test_labels_are_plus_minus_one(small_data):
    for _, split in _splits(small_data):
        assert set(split.labels.tolist()) == {-1.0, 1.0}


def test_feature_is_unit_vector(small_data):
    assert small_data.feature.norm().item() == pytest.approx(1.0, abs=1e-12)


def _signal_loop_max_error(data, alpha: float, beta: float) -> float:
    """max over examples of ‖X_i[p] − c_i w*‖_∞ with c_i = α y_i or β y_i, computed in a Python loop."""
    worst = 0.0
    feature = data.feature.tolist()
    for _, split in _splits(data):
        for i in range(len(split)):
            p = int(split.signal_position[i])
            y = split.labels[i].item()
            c = (beta if bool(split.is_small_margin[i]) else alpha) * y
            patch = split.inputs[i, p].tolist()
            worst = max(worst, max(abs(x - c * w) for x, w in zip(patch, feature)))
    return worst


def test_signal_patch_is_margin_times_feature(small_data):
    """X[p] = c·w* with c = α y (α = d^0.49 = 8^0.49 by default) or β y, checked example by example."""
    assert _signal_loop_max_error(small_data, alpha=8**0.49, beta=0.2) < 1e-12
    # a wrong margin (e.g. α and β swapped, or α = √d) is far off
    assert _signal_loop_max_error(small_data, alpha=0.2, beta=8**0.49) > 0.1
    assert _signal_loop_max_error(small_data, alpha=8**0.5, beta=0.2) > 1e-2
    # both margin kinds occur in both splits, so both branches were exercised
    for _, split in _splits(small_data):
        assert split.is_small_margin.any() and (~split.is_small_margin).any()


def test_signal_patch_is_exact_in_float64(small_data):
    """The data are float64, so X[p] = c·w* should hold to 1e-12 (c = 8^0.49 or 0.2 exactly)."""
    assert _signal_loop_max_error(small_data, alpha=8**0.49, beta=0.2) < 1e-12


def test_explicit_alpha_is_used():
    """With alpha = 1.5 set, large-margin signal patches are ±1.5 w* and small-margin ones ±0.2 w*."""
    config = FeatureMarginDataConfig(**{**SMALL, "alpha": 1.5})
    data = make_feature_margin_data(config, seed=0)
    split = data.train
    signal = split.inputs[torch.arange(len(split)), split.signal_position] @ data.feature
    expected = (
        torch.tensor([0.2 if small else 1.5 for small in split.is_small_margin.tolist()], dtype=torch.float64)
        * split.labels
    )
    torch.testing.assert_close(signal, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        signal[~split.is_small_margin].abs(),
        torch.full_like(signal[~split.is_small_margin], 1.5),
        rtol=0,
        atol=1e-12,
    )


def test_default_alpha_is_d_to_the_0_49():
    assert FeatureMarginDataConfig(dim=30).large_margin == pytest.approx(30**0.49, rel=1e-15)
    assert FeatureMarginDataConfig(dim=30, alpha=7.0).large_margin == 7.0


def test_noise_patches_are_orthogonal_to_feature(small_data):
    """|⟨X[j], w*⟩| < 1e-10 at every j ≠ p, and noise patches are not zero."""
    for _, split in _splits(small_data):
        for i in range(len(split)):
            for j in range(split.inputs.shape[1]):
                if j == int(split.signal_position[i]):
                    continue
                assert abs(float(split.inputs[i, j] @ small_data.feature)) < 1e-10
                assert split.inputs[i, j].norm() > 1e-3


def test_noise_covariance_is_sigma_squared_on_the_complement(large_data):
    """Empirical covariance of the noise patches ≈ σ²(I − w*w*ᵀ); each of the d−1 orthogonal
    directions has std ≈ σ (8000 patches: relative std error ≈ 0.8%, tolerance 5%); mean ≈ 0."""
    config, data = large_data
    sigma, d = config.noise_std, config.dim
    noise = data.train.inputs[data.train.noise_patch_mask()]  # (N(P−1), d)
    assert noise.shape == (4000 * 2, d)
    feature = data.feature
    # orthonormal basis of the complement of w*
    q, _ = torch.linalg.qr(torch.cat([feature[:, None], torch.eye(d, dtype=torch.float64)], dim=1))
    basis = q[:, 1:d]
    torch.testing.assert_close(basis.T @ feature, torch.zeros(d - 1, dtype=torch.float64), rtol=0, atol=1e-12)
    coordinates = noise @ basis
    stds = coordinates.std(dim=0)
    torch.testing.assert_close(stds, torch.full((d - 1,), sigma, dtype=torch.float64), rtol=0.05, atol=0)
    covariance = noise.T @ noise / noise.shape[0]
    expected = sigma**2 * (torch.eye(d, dtype=torch.float64) - torch.outer(feature, feature))
    # entry std ≈ σ²/√8000 ≈ 0.0055; tolerance ≈ 7 standard errors
    torch.testing.assert_close(covariance, expected, rtol=0, atol=0.04)
    torch.testing.assert_close(noise.mean(dim=0), torch.zeros(d, dtype=torch.float64), rtol=0, atol=0.03)


def test_zero_noise_std_gives_zero_noise_patches():
    config = FeatureMarginDataConfig(**{**SMALL, "noise_std": 0.0})
    data = make_feature_margin_data(config, seed=1)
    mask = data.train.noise_patch_mask()
    assert torch.count_nonzero(data.train.inputs[mask]) == 0


def test_small_margin_fraction_close_to_mu(large_data):
    """#small / N within 4 binomial standard deviations of μ = 0.3."""
    config, data = large_data
    n, mu = config.n_train, config.small_margin_fraction
    fraction = data.train.is_small_margin.double().mean().item()
    assert abs(fraction - mu) < 4 * math.sqrt(mu * (1 - mu) / n)


def test_mu_zero_and_one():
    """μ = 0 gives no small-margin example, μ = 1 only small-margin examples (β = 0.2 on the signal)."""
    none = make_feature_margin_data(
        FeatureMarginDataConfig(**{**SMALL, "small_margin_fraction": 0.0}), seed=2
    )
    assert not none.train.is_small_margin.any()
    every = make_feature_margin_data(
        FeatureMarginDataConfig(**{**SMALL, "small_margin_fraction": 1.0}), seed=2
    )
    assert every.train.is_small_margin.all()
    signal = every.train.inputs[torch.arange(200), every.train.signal_position] @ every.feature
    torch.testing.assert_close(signal.abs(), torch.full((200,), 0.2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_labels_and_signal_positions_roughly_uniform(large_data):
    """Each of the P = 3 positions has count within 4 binomial std of N/3; labels within 4 std of N/2."""
    config, data = large_data
    n, patches = config.n_train, config.patches
    counts = [int((data.train.signal_position == k).sum()) for k in range(patches)]
    std = math.sqrt(n * (1 / patches) * (1 - 1 / patches))
    for count in counts:
        assert abs(count - n / patches) < 4 * std
    positives = int((data.train.labels > 0).sum())
    assert abs(positives - n / 2) < 4 * math.sqrt(n / 4)


def test_same_seed_same_data_different_seed_different_data():
    config = FeatureMarginDataConfig(**SMALL)
    first = make_feature_margin_data(config, seed=5)
    again = make_feature_margin_data(config, seed=5)
    other = make_feature_margin_data(config, seed=6)
    assert torch.equal(first.feature, again.feature)
    for a, b in [(first.train, again.train), (first.test, again.test)]:
        assert torch.equal(a.inputs, b.inputs)
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.is_small_margin, b.is_small_margin)
        assert torch.equal(a.signal_position, b.signal_position)
    assert not torch.allclose(first.feature, other.feature)
    assert not torch.allclose(first.train.inputs, other.train.inputs)
    # train and test are different draws
    assert not torch.allclose(first.train.inputs[:50], first.test.inputs)


def test_noise_patch_mask_false_exactly_at_signal_position(small_data):
    """mask[i, j] is False iff j == p(X_i), checked in a loop."""
    for _, split in _splits(small_data):
        mask = split.noise_patch_mask()
        assert mask.shape == (len(split), 3) and mask.dtype == torch.bool
        for i in range(len(split)):
            p = int(split.signal_position[i])
            assert mask[i].tolist() == [j != p for j in range(3)]


def test_to_converts_dtype_and_keeps_values(small_data):
    converted = small_data.to("cpu", torch.float32)
    assert converted.feature.dtype == torch.float32
    assert converted.train.inputs.dtype == torch.float32 and converted.train.labels.dtype == torch.float32
    assert converted.train.is_small_margin.dtype == torch.bool
    assert converted.train.signal_position.dtype == torch.long
    torch.testing.assert_close(converted.train.inputs.double(), small_data.train.inputs, rtol=1e-6, atol=1e-6)
    assert torch.equal(converted.test.signal_position, small_data.test.signal_position)


@pytest.mark.parametrize(
    "overrides",
    [
        {"dim": 8, "beta_margin": 3.0},  # default α = 8^0.49 ≈ 2.77 < 3
        {"dim": 8, "beta_margin": 8**0.49},  # equal is rejected too
        {"alpha": 1.0, "beta_margin": 1.0},
        {"alpha": 0.5, "beta_margin": 0.6},
    ],
)
def test_config_rejects_beta_not_below_alpha(overrides):
    with pytest.raises(ValidationError, match="beta_margin"):
        FeatureMarginDataConfig(**overrides)


def test_config_accepts_beta_just_below_alpha():
    config = FeatureMarginDataConfig(dim=8, beta_margin=2.7)  # α = 8^0.49 ≈ 2.770
    assert config.beta_margin < config.large_margin
