"""feature_margin_measurements and its helpers against plain Python loops on a tiny dataset."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from momentumlab.data.feature_margin import FeatureMarginDataConfig, make_feature_margin_data
from momentumlab.optim.momentum import OptimizerConfig, build_optimizer
from momentumlab.probes.projections import (
    MEMORIZATION_THRESHOLD,
    ema_scale,
    feature_margin_measurements,
    group_accuracies,
    in_ema_scale,
    total_noise,
)
from momentumlab.runs.feature_margin import FeatureMarginRunConfig
from momentumlab.train.feature_margin import train_feature_margin

M, D, P = 4, 8, 3
CONFIG = FeatureMarginDataConfig(
    n_train=60, n_test=40, dim=D, patches=P, beta_margin=0.2, noise_std=1.0, small_margin_fraction=0.3
)
TIGHT = {"rel": 1e-10, "abs": 1e-12}


@pytest.fixture(scope="module")
def setup():
    """Data, weights (std 0.5 so noise terms are O(1)), a random gradient and momentum buffer."""
    data = make_feature_margin_data(CONFIG, seed=6)
    generator = torch.Generator().manual_seed(123)
    weight = torch.randn(M, D, generator=generator, dtype=torch.float64) * 0.5
    gradient = torch.randn(M, D, generator=generator, dtype=torch.float64)
    buffer = torch.randn(M, D, generator=generator, dtype=torch.float64)
    for split in (data.train, data.test):
        assert split.is_small_margin.any() and (~split.is_small_margin).any()
    return data, weight, gradient, buffer


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _loop_outputs(weight, split) -> list[float]:
    w = weight.tolist()
    return [sum(_dot(w_r, patch) ** 3 for w_r in w for patch in example) for example in split.inputs.tolist()]


def _loop_total_noise(weight, split) -> tuple[list[float], float]:
    """Ξ_i = Σ_r Σ_{j≠p} ⟨w_r, X_i[j]⟩³ and max |⟨w_r, X_i[j]⟩| over j ≠ p, with loops."""
    w = weight.tolist()
    totals, largest = [], 0.0
    for i, example in enumerate(split.inputs.tolist()):
        p = int(split.signal_position[i])
        total = 0.0
        for j, patch in enumerate(example):
            if j == p:
                continue
            for w_r in w:
                xi = _dot(w_r, patch)
                total += xi**3
                largest = max(largest, abs(xi))
        totals.append(total)
    return totals, largest


def _loop_accuracies(outputs, split) -> tuple[float, float, float]:
    labels = split.labels.tolist()
    small = split.is_small_margin.tolist()
    correct = [f * y > 0 for f, y in zip(outputs, labels)]
    overall = sum(correct) / len(correct)
    large_group = [c for c, s in zip(correct, small) if not s]
    small_group = [c for c, s in zip(correct, small) if s]
    return overall, sum(large_group) / len(large_group), sum(small_group) / len(small_group)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_signal_gradient_and_momentum_projections(setup):
    """signal_max = max_r ⟨w_r, w*⟩; gradient/momentum signals at r_max; per-neuron columns."""
    data, weight, gradient, buffer = setup
    feature = data.feature.tolist()
    signals = [_dot(w_r, feature) for w_r in weight.tolist()]
    gradient_signals = [_dot(g_r, feature) for g_r in gradient.tolist()]
    buffer_signals = [_dot(b_r, feature) for b_r in buffer.tolist()]
    best = max(range(M), key=lambda r: signals[r])
    # r_max is not neuron 0 and not the argmax of the gradient projections, so a wrong index shows up
    assert best != 0
    assert best != max(range(M), key=lambda r: gradient_signals[r])

    row = feature_margin_measurements(weight, data, gradient, buffer)
    assert row["signal_max"] == pytest.approx(signals[best], **TIGHT)
    assert row["gradient_signal"] == pytest.approx(gradient_signals[best], **TIGHT)
    assert row["momentum_signal"] == pytest.approx(buffer_signals[best], **TIGHT)
    for r in range(M):
        assert row[f"signal_r{r}"] == pytest.approx(signals[r], **TIGHT)
        assert row[f"gradient_signal_r{r}"] == pytest.approx(gradient_signals[r], **TIGHT)
        assert row[f"momentum_signal_r{r}"] == pytest.approx(buffer_signals[r], **TIGHT)
    assert f"signal_r{M}" not in row
    norm = math.sqrt(sum(v * v for row_ in gradient.tolist() for v in row_))
    assert row["gradient_norm"] == pytest.approx(norm, **TIGHT)


def test_momentum_buffer_none_gives_zero_momentum_signal(setup):
    data, weight, gradient, _ = setup
    row = feature_margin_measurements(weight, data, gradient, None)
    assert row["momentum_signal"] == 0.0
    assert all(row[f"momentum_signal_r{r}"] == 0.0 for r in range(M))


def test_total_noise_equals_loop(setup):
    """total_noise returns Ξ_i per example and max |Ξ_{i,j,r}| over noise patches (Python loops)."""
    data, weight, _, _ = setup
    totals, largest = _loop_total_noise(weight, data.train)
    noise, noise_max = total_noise(weight, data.train)
    torch.testing.assert_close(noise, torch.tensor(totals, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert noise_max.item() == pytest.approx(largest, **TIGHT)
    # the signal patch is excluded: including it would change Ξ_i noticeably
    outputs = _loop_outputs(weight, data.train)
    assert max(abs(f - t) for f, t in zip(outputs, totals)) > 1e-2


def test_noise_memorization_and_memorized_fraction(setup):
    """noise_memorization_small = mean_{i∈Z_2} y_i Ξ_i; memorized_fraction_small = fraction with
    y_i Ξ_i ≥ 1; noise_correlation_max = max |Ξ_{i,j,r}| (all on train, Python loops)."""
    data, weight, gradient, buffer = setup
    totals, largest = _loop_total_noise(weight, data.train)
    labels = data.train.labels.tolist()
    small = data.train.is_small_margin.tolist()
    memorization = [y * xi for y, xi, s in zip(labels, totals, small) if s]
    expected_mean = sum(memorization) / len(memorization)
    expected_fraction = sum(1 for v in memorization if v >= 1.0) / len(memorization)
    # the test data make the fraction informative: neither 0 nor 1, and some y_i Ξ_i lie in (0, 1)
    # so that the threshold 1 (not 0) matters
    assert 0 < expected_fraction < 1
    assert any(0 < v < 1 for v in memorization)
    assert MEMORIZATION_THRESHOLD == 1.0

    row = feature_margin_measurements(weight, data, gradient, buffer)
    # the implementation averages in float32 (_mean_or_nan calls .float()), hence rel 1e-6
    assert row["noise_memorization_small"] == pytest.approx(expected_mean, rel=1e-12)
    assert row["memorized_fraction_small"] == pytest.approx(expected_fraction, rel=1e-12)
    assert row["noise_correlation_max"] == pytest.approx(largest, **TIGHT)
    # it is a max of |Ξ|: with −W every Ξ flips sign and the value is unchanged
    flipped = feature_margin_measurements(-weight, data, gradient, buffer)
    assert flipped["noise_correlation_max"] == pytest.approx(largest, **TIGHT)
    assert flipped["noise_memorization_small"] == pytest.approx(-expected_mean, rel=1e-12)
    # the mean over all train examples (not just Z_2) is a different number
    all_mean = sum(y * xi for y, xi in zip(labels, totals)) / len(totals)
    assert abs(all_mean - expected_mean) > 1e-3


def test_loss_derivative_sums_nu(setup):
    """ν_1 = (1/N) Σ_{i∈Z_1} σ(−y_i f_i), ν_2 = (1/N) Σ_{i∈Z_2} σ(−y_i f_i), N = all train examples."""
    data, weight, gradient, buffer = setup
    outputs = _loop_outputs(weight, data.train)
    labels = data.train.labels.tolist()
    small = data.train.is_small_margin.tolist()
    n = len(labels)
    nu_large = sum(_sigmoid(-y * f) for y, f, s in zip(labels, outputs, small) if not s) / n
    nu_small = sum(_sigmoid(-y * f) for y, f, s in zip(labels, outputs, small) if s) / n
    row = feature_margin_measurements(weight, data, gradient, buffer)
    assert row["nu_large"] == pytest.approx(nu_large, **TIGHT)
    assert row["nu_small"] == pytest.approx(nu_small, **TIGHT)
    assert nu_small > 1e-3 and nu_large > 1e-3


def test_accuracies_per_margin_group(setup):
    """train/test accuracy overall, on large- and on small-margin examples: loops over sign(y f)."""
    data, weight, gradient, buffer = setup
    row = feature_margin_measurements(weight, data, gradient, buffer)
    for prefix, split in (("train", data.train), ("test", data.test)):
        overall, large, small = _loop_accuracies(_loop_outputs(weight, split), split)
        assert row[f"{prefix}_accuracy"] == pytest.approx(overall, rel=1e-12)
        assert row[f"{prefix}_accuracy_large"] == pytest.approx(large, rel=1e-12)
        assert row[f"{prefix}_accuracy_small"] == pytest.approx(small, rel=1e-12)
        # random weights: accuracies are strictly between 0 and 1, so the check is informative
        assert 0 < overall < 1


def test_group_accuracies_by_hand():
    """Five examples with hand-chosen outputs: overall 3/5, large 2/3, small 1/2."""
    data = make_feature_margin_data(CONFIG, seed=4).test
    labels = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    small = torch.tensor([False, False, True, True, False])
    split = type(data)(
        inputs=data.inputs[:5], labels=labels, is_small_margin=small, signal_position=data.signal_position[:5]
    )
    outputs = torch.tensor([2.0, 1.0, 0.5, -3.0, -0.1], dtype=torch.float64)
    # correct: yes, no, yes, yes, no → overall 3/5, large (0, 1, 4) 1/3, small (2, 3) 2/2
    result = group_accuracies(outputs, split, "x")
    assert result == pytest.approx(
        {"x_accuracy": 0.6, "x_accuracy_large": 1 / 3, "x_accuracy_small": 1.0}, rel=1e-12
    )


def test_group_accuracies_empty_group_is_nan():
    data = make_feature_margin_data(CONFIG.model_copy(update={"small_margin_fraction": 0.0}), seed=4).train
    assert not data.is_small_margin.any()
    result = group_accuracies(torch.ones(len(data), dtype=torch.float64), data, "t")
    assert math.isnan(result["t_accuracy_small"])
    expected = (data.labels > 0).double().mean().item()
    assert result["t_accuracy"] == pytest.approx(expected, rel=1e-12)


def test_means_are_float64_exact(setup):
    """With float64 inputs the Z_2 mean of y_i Ξ_i and the accuracies should match loops to 1e-12."""
    data, weight, gradient, buffer = setup
    totals, _ = _loop_total_noise(weight, data.train)
    memorization = [
        y * xi
        for y, xi, s in zip(data.train.labels.tolist(), totals, data.train.is_small_margin.tolist())
        if s
    ]
    row = feature_margin_measurements(weight, data, gradient, buffer)
    overall, _, _ = _loop_accuracies(_loop_outputs(weight, data.train), data.train)
    assert row["noise_memorization_small"] == pytest.approx(sum(memorization) / len(memorization), rel=1e-12)
    assert row["train_accuracy"] == pytest.approx(overall, rel=1e-12)


@pytest.mark.parametrize("name", ["heavy_ball", "nesterov"])
def test_in_ema_scale_turns_a_summed_buffer_into_the_ema_buffer(setup, name):
    """Two steps with gradients ∇1, ∇2: the rule's buffer b = γ∇1 + ∇2 is logged as is; in EMA scale it is
    g = (1−γ)(γ∇1 + ∇2), the EMA optimizer's buffer after the same gradients, computed by hand."""
    data, weight, gradient, _ = setup
    gamma, second = 0.9, gradient.flip(0)
    rows = {}
    for rule in ("ema_momentum", name):
        config = OptimizerConfig(name=rule, lr=0.1, momentum=gamma)
        parameter = torch.nn.Parameter(weight.clone())
        optimizer = build_optimizer(config, [parameter])
        for step_gradient in (gradient, second):
            parameter.grad = step_gradient.clone()
            optimizer.step()
        buffer = optimizer.state[parameter]["momentum_buffer"]
        row = feature_margin_measurements(weight, data, second, buffer)
        rows[rule] = in_ema_scale(pd.DataFrame([row]), config).iloc[0]
    feature = data.feature
    by_hand = [
        (1 - gamma) * (gamma * _dot(g1, feature.tolist()) + _dot(g2, feature.tolist()))
        for g1, g2 in zip(gradient.tolist(), second.tolist())
    ]
    best = int((weight @ feature).argmax())
    assert rows[name]["momentum_signal"] == pytest.approx(by_hand[best], **TIGHT)
    assert rows["ema_momentum"]["momentum_signal"] == pytest.approx(by_hand[best], **TIGHT)
    for r in range(M):
        assert rows[name][f"momentum_signal_r{r}"] == pytest.approx(by_hand[r], **TIGHT)
    assert rows[name]["gradient_signal"] == rows["ema_momentum"]["gradient_signal"]  # only Ĝ is rescaled


def test_ema_scale_of_each_rule():
    assert ema_scale(OptimizerConfig(name="gd", lr=0.1)) == 1.0
    assert ema_scale(OptimizerConfig(name="ema_momentum", lr=0.1, momentum=0.99)) == 1.0
    assert ema_scale(OptimizerConfig(name="heavy_ball", lr=0.1, momentum=0.99)) == pytest.approx(0.01)
    assert ema_scale(OptimizerConfig(name="nesterov", lr=0.1, momentum=0.9)) == pytest.approx(0.1)


def test_heavy_ball_run_in_ema_scale_logs_the_equivalent_ema_runs_projection():
    """Heavy ball (h = η(1−γ), μ = γ) and EMA momentum (η, γ) take identical steps; their logged Ĝ differ
    by 1/(1−γ) and agree once the heavy-ball rows are put in the EMA scale."""
    lr, gamma = 0.5, 0.9
    base = {"data": {"n_train": 40, "n_test": 10, "n_val": 0}, "train": {"steps": 6, "log_every": 2}}
    ema = FeatureMarginRunConfig.model_validate(
        {**base, "optimizer": {"name": "ema_momentum", "lr": lr, "momentum": gamma}}
    )
    heavy = FeatureMarginRunConfig.model_validate(
        {**base, "optimizer": {"name": "heavy_ball", "lr": lr * (1 - gamma), "momentum": gamma}}
    )
    ema_rows = train_feature_margin(ema).metrics()
    heavy_rows = train_feature_margin(heavy).metrics()
    assert heavy_rows["signal_max"].tolist() == pytest.approx(ema_rows["signal_max"].tolist(), rel=1e-5)
    assert abs(heavy_rows["momentum_signal"].iloc[-1]) > 5 * abs(ema_rows["momentum_signal"].iloc[-1])
    rescaled = in_ema_scale(heavy_rows, heavy.optimizer)
    for column in ["momentum_signal", *(f"momentum_signal_r{r}" for r in range(5))]:
        assert rescaled[column].tolist() == pytest.approx(ema_rows[column].tolist(), rel=1e-4, abs=1e-9)
