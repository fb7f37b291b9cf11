"""Search-direction noise, gradient statistics and the theory's δ, against hand-computed numbers and plain
autograd loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from momentumlab.data.digits import load_digits_dataset
from momentumlab.models.conv import SmallCNN
from momentumlab.optim import GD, EMAMomentum, HeavyBall
from momentumlab.probes.noise import (
    finite_population_noise,
    flat_model_loss,
    full_gradient,
    gradient_statistics,
    minibatch_noise_norms,
    momentum_factor,
    per_sample_gradients,
    search_direction,
    search_noise,
    smoothing_degree,
)

A = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # f(x) = ½ xᵀAx, ∇f = Ax
START = torch.tensor([1.0, -2.0], dtype=torch.float64)
NOISE = [torch.tensor([0.5, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)]
LR, BETA = 0.1, 0.5


def _two_steps(method: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(d_0, d_1) and (ω_0, ω_1) on the quadratic with g_t = Ax_t + ξ_t and x_{t+1} = x_t − η d_t."""
    x, buffer, directions, noises = START, torch.zeros(2, dtype=torch.float64), [], []
    for xi in NOISE:
        direction = search_direction(method, BETA, buffer, A @ x + xi)
        directions.append(direction)
        noises.append(search_noise(direction, A @ x))
        x, buffer = x - LR * direction, direction
    return directions, noises


# By hand: ∇f(x_0) = (2, −2), g_0 = (2.5, −2).
#   SGD:  d_0 = (2.5, −2), x_1 = (0.75, −1.8), ∇f(x_1) = (1.5, −1.8), d_1 = g_1 = (1.5, −0.8).
#   SHB:  d_0 = (2.5, −2), x_1 = (0.75, −1.8), d_1 = 0.5·(2.5, −2) + (1.5, −0.8) = (2.75, −1.8).
#   NSHB: d_0 = 0.5·(2.5, −2) = (1.25, −1), x_1 = (0.875, −1.9), ∇f(x_1) = (1.75, −1.9),
#         g_1 = (1.75, −0.9), d_1 = 0.5·(1.25, −1) + 0.5·(1.75, −0.9) = (1.5, −0.95).
HAND = {
    "sgd": ([(2.5, -2.0), (1.5, -0.8)], [(0.5, 0.0), (0.0, 1.0)]),
    "shb": ([(2.5, -2.0), (2.75, -1.8)], [(0.5, 0.0), (1.25, 0.0)]),
    "nshb": ([(1.25, -1.0), (1.5, -0.95)], [(-0.75, 1.0), (-0.25, 0.95)]),
}


@pytest.mark.parametrize("method", ["sgd", "shb", "nshb"])
def test_search_direction_and_noise_by_hand(method):
    directions, noises = _two_steps(method)
    expected_directions, expected_noises = HAND[method]
    for got, want in zip(directions + noises, expected_directions + expected_noises):
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("method", "optimizer"),
    [
        ("sgd", lambda p: GD(p, lr=LR)),
        ("shb", lambda p: HeavyBall(p, LR, BETA)),
        ("nshb", lambda p: EMAMomentum(p, LR, BETA)),
    ],
)
def test_search_direction_steps_equal_the_optimizers(method, optimizer):
    """x_{t+1} = x_t − η d_t with the probe's d_t gives GD's, HeavyBall's and EMAMomentum's iterates."""
    parameter = torch.nn.Parameter(START.clone())
    rule = optimizer([parameter])
    x, buffer = START, torch.zeros(2, dtype=torch.float64)
    for xi in NOISE * 3:
        parameter.grad = A @ parameter.detach() + xi
        rule.step()
        buffer = search_direction(method, BETA, buffer, A @ x + xi)
        x = x - LR * buffer
        torch.testing.assert_close(parameter.detach(), x, rtol=0, atol=1e-12)


def _digits_problem(count: int = 40):
    data = load_digits_dataset()
    model = SmallCNN(width=4, generator=torch.Generator().manual_seed(0))
    loss, point = flat_model_loss(model, F.cross_entropy)
    return model, loss, point, data.train.inputs[:count], data.train.labels[:count]


def test_chunked_full_gradient_equals_autograd_on_the_whole_set():
    model, loss, point, inputs, labels = _digits_problem()
    F.cross_entropy(model(inputs), labels).backward()
    reference = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    whole = full_gradient(loss, point, inputs, labels)
    torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-7)
    for chunk_size in (7, 16, 40, 100):  # uneven last chunk, even chunks, one chunk, larger than the data
        torch.testing.assert_close(
            full_gradient(loss, point, inputs, labels, chunk_size), whole, rtol=1e-5, atol=1e-7
        )


def test_gradient_statistics_equal_a_loop_over_examples():
    """∇f and C² from vmapped per-sample gradients, in chunks of 16, against one backward per example."""
    model, loss, point, inputs, labels = _digits_problem()
    per_example = []
    for image, label in zip(inputs, labels):
        model.zero_grad()
        F.cross_entropy(model(image[None]), label[None]).backward()
        per_example.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    per_example = torch.stack(per_example)
    mean = per_example.mean(0)
    variance = ((per_example - mean) ** 2).sum(1).mean().item()  # (1/N) Σ ‖∇f_i − ∇f‖²
    statistics = gradient_statistics(loss, point, inputs, labels, chunk_size=16)
    torch.testing.assert_close(
        per_sample_gradients(loss, point, inputs, labels, chunk_size=16), per_example, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(statistics.full_gradient, mean.float(), rtol=1e-5, atol=1e-7)
    assert statistics.variance == pytest.approx(variance, rel=1e-5)
    assert statistics.gradient_norm == pytest.approx(mean.norm().item(), rel=1e-5)
    assert variance > 10 * mean.norm().item() ** 2  # the test is not dominated by the mean


def test_minibatch_noise_averages_to_the_finite_population_variance():
    """Over all C(N, b) minibatches without replacement, mean ‖g_B − ∇f‖² = C²/b · (N − b)/(N − 1)."""
    _, loss, point, inputs, labels = _digits_problem(count=8)
    statistics = gradient_statistics(loss, point, inputs, labels)
    b, count = 3, 8
    squared = [
        search_noise(
            full_gradient(loss, point, inputs[list(batch)], labels[list(batch)]), statistics.full_gradient
        )
        .double()
        .pow(2)
        .sum()
        .item()
        for batch in itertools.combinations(range(count), b)
    ]
    expected = statistics.variance / b * (count - b) / (count - 1)
    assert sum(squared) / len(squared) == pytest.approx(expected, rel=1e-4)
    assert finite_population_noise(statistics.variance, b, count) == pytest.approx(expected, rel=1e-12)
    # drawn minibatches: the mean of ‖ω‖² over 4000 draws is within 3 standard errors of the exact mean
    gradients = per_sample_gradients(loss, point, inputs, labels)
    norms = minibatch_noise_norms(gradients, b, 4000, torch.Generator().manual_seed(0))
    squares = norms**2
    assert abs(squares.mean().item() - expected) < 3 * squares.std().item() / math.sqrt(len(squares))
    # b = N is the full batch: no noise; b = 1 without replacement gives C²
    assert minibatch_noise_norms(gradients, count, 3, torch.Generator()).max().item() < 1e-6
    assert finite_population_noise(statistics.variance, 1, count) == pytest.approx(statistics.variance)
    with pytest.raises(ValueError, match="batch_size=9"):
        minibatch_noise_norms(gradients, 9, 3, torch.Generator())


def test_subset_variance_is_unbiased_for_the_full_set():
    """With population=N, the subset's C² estimate (N−1)/N · s² averages, over all C(N, n) subsets, to the
    full set's C² exactly; a subset of all N examples gives the full set's value; bad sizes are refused."""
    _, loss, point, inputs, labels = _digits_problem(count=8)
    statistics = gradient_statistics(loss, point, inputs, labels)
    estimates = [
        gradient_statistics(loss, point, inputs[list(subset)], labels[list(subset)], population=8).variance
        for subset in itertools.combinations(range(8), 3)
    ]
    assert sum(estimates) / len(estimates) == pytest.approx(statistics.variance, rel=1e-4)
    assert max(estimates) > 1.1 * min(estimates)  # the subsets differ: the average is not trivially equal
    same = gradient_statistics(loss, point, inputs, labels, population=8)
    assert same.variance == statistics.variance
    with pytest.raises(ValueError, match="population=5"):
        gradient_statistics(loss, point, inputs, labels, population=5)


def test_smoothing_degree_by_hand():
    """η = 0.1, b = 4, C² = 16, K = 3: C²/b = 4, C²/b + K² = 13."""
    assert smoothing_degree("sgd", 0.1, 4, 0.0, 16.0, 3.0) == pytest.approx(0.2)  # 0.1·√4
    assert momentum_factor(0.5) == pytest.approx(1.5)  # 0.5·0.75/0.25
    assert smoothing_degree("shb", 0.1, 4, 0.5, 16.0, 3.0) == pytest.approx(0.1 * math.sqrt(4 + 1.5 * 13))
    assert smoothing_degree("nshb", 0.1, 4, 0.5, 16.0, 3.0) == pytest.approx(0.1 * math.sqrt(4 + 1.0 * 13))
    assert momentum_factor(0.9) == pytest.approx(0.9 * 0.91 / 0.01)
    for method in ("shb", "nshb"):  # β = 0 is SGD
        assert smoothing_degree(method, 0.1, 4, 0.0, 16.0, 3.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="momentum=1"):
        smoothing_degree("shb", 0.1, 4, 1.0, 16.0, 3.0)
    with pytest.raises(ValueError, match="method='adam'"):
        smoothing_degree("adam", 0.1, 4, 0.5, 16.0, 3.0)
