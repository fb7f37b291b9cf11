"""The diffusion probe against plain references and closed forms."""

from __future__ import annotations

import math
from itertools import count, islice, pairwise

import pytest
import torch

from momentumlab.probes.diffusion import (
    MEDIAN_ABS_NORMAL,
    StreamingPCA,
    euler_maruyama,
    first_passage,
    msgd,
    normalize,
    ode_alignment,
    pool,
    scheduled_msgd,
    sde,
    track,
)

TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _problem(*eigenvalues: float) -> StreamingPCA:
    return StreamingPCA(torch.tensor(eigenvalues or (1.0, 0.6, 0.3, 0.1), dtype=torch.float64))


def _reference_msgd(problem, start, schedule, generator):
    """θ_{k+1} = Π(θ_k + η_k x_k x_kᵀθ_k + μ_k(θ_k − θ_{k−1})) per run in plain Python arithmetic, with
    (η_k, μ_k) = schedule(k) and the same draws as the batched iteration; yields every run's θ_{k+1}."""
    runs = len(start)
    current = [[v / math.sqrt(sum(c * c for c in row)) for v in row] for row in start.tolist()]
    previous = [row[:] for row in current]
    for k in count():
        lr, momentum = schedule(k)
        x = problem.sample(runs, generator).tolist()
        for r in range(runs):
            projection = sum(a * b for a, b in zip(x[r], current[r]))  # xᵀθ
            step = [
                c + lr * xi * projection + momentum * (c - p)
                for c, xi, p in zip(current[r], x[r], previous[r])
            ]
            norm = math.sqrt(sum(v * v for v in step))
            previous[r], current[r] = current[r], [v / norm for v in step]
        yield torch.tensor(current, dtype=torch.float64)


def test_batched_msgd_equals_a_per_run_loop():
    """Every run of the batched iteration is θ_{k+1} = Π(θ_k + η x_k x_kᵀθ_k + μ(θ_k − θ_{k−1})) in plain
    Python arithmetic, with the same draws."""
    problem, runs, steps, lr, momentum = _problem(), 3, 30, 0.05, 0.7
    start = torch.randn(runs, problem.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batched = torch.stack(
        list(islice(msgd(problem, start, lr, momentum, torch.Generator().manual_seed(2)), steps))
    )
    reference = _reference_msgd(problem, start, lambda k: (lr, momentum), torch.Generator().manual_seed(2))
    for k, iterate in zip(range(steps), reference):
        torch.testing.assert_close(batched[k], iterate, **TIGHT)


def test_scheduled_msgd_equals_a_per_run_loop_through_the_anneal():
    """(η, μ) = (0.05, 0.7) for steps 0–4, then (0.02, 0.0): the batched iterates are the plain loop's, the
    velocity θ_k − θ_{k−1} carried into the anneal (and dropped by μ = 0)."""
    problem, runs, steps = _problem(), 2, 12
    schedule = lambda k: (0.05, 0.7) if k < 5 else (0.02, 0.0)
    start = torch.randn(runs, problem.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    batched = torch.stack(
        list(islice(scheduled_msgd(problem, start, schedule, torch.Generator().manual_seed(4)), steps))
    )
    reference = _reference_msgd(problem, start, schedule, torch.Generator().manual_seed(4))
    for k, iterate in zip(range(steps), reference):
        torch.testing.assert_close(batched[k], iterate, **TIGHT)


def test_gradient_noise_has_the_covariance_of_the_stochastic_gradient():
    """Isserlis: Cov(x xᵀθ) = (θᵀΣθ)Σ + ΣθθᵀΣ; both the Gaussian surrogate and the true per-sample
    gradients have it (200 000 draws, tolerance ~6 standard errors)."""
    problem, draws = _problem(), 200_000
    theta = normalize(torch.tensor([0.6, 0.5, -0.4, 0.3], dtype=torch.float64))
    sigma = torch.diag(problem.eigenvalues)
    expected = (theta @ sigma @ theta) * sigma + torch.outer(sigma @ theta, sigma @ theta)
    generator = torch.Generator().manual_seed(0)
    thetas = theta.expand(draws, -1)
    samples = problem.stochastic_gradient(thetas, problem.sample(draws, generator))
    torch.testing.assert_close(samples.mean(0), problem.gradient(theta), rtol=0, atol=0.02)
    for draw in (samples, problem.gradient_noise(thetas, generator)):
        torch.testing.assert_close(torch.cov(draw.T), expected, rtol=0, atol=0.02)


def _ornstein_uhlenbeck(rate: float, scale: float, start: torch.Tensor, dt: float, steps: int, seed: int):
    """X after `steps` Euler–Maruyama steps of dX = −aX dt + s dW."""
    states = euler_maruyama(
        lambda x: -rate * x,
        lambda x, g: scale * torch.randn(x.shape, generator=g, dtype=x.dtype),
        start,
        dt,
        torch.Generator().manual_seed(seed),
    )
    return next(islice(states, steps - 1, None))


def test_euler_maruyama_ornstein_uhlenbeck_mean_and_stationary_variance():
    """dX = −aX dt + s dW, a = 2, s = 1.5: E[X_t] = X_0 e^{−at}; Var → s²/(2a) (bias of dt = 0.005: 0.5%)."""
    rate, scale, dt, samples = 2.0, 1.5, 0.005, 20_000
    start = torch.ones(samples, dtype=torch.float64)
    at_half = _ornstein_uhlenbeck(rate, scale, start, dt, 100, seed=0)  # t = 0.5
    variance_half = scale**2 / (2 * rate) * (1 - math.exp(-2 * rate * 0.5))
    assert float(at_half.mean()) == pytest.approx(
        math.exp(-rate * 0.5), abs=4 * math.sqrt(variance_half / samples)
    )
    stationary = _ornstein_uhlenbeck(rate, scale, start, dt, 1000, seed=1)  # t = 5: e^{−2at} ≈ 2e-9
    expected = scale**2 / (2 * rate)
    assert float(stationary.mean()) == pytest.approx(0.0, abs=4 * math.sqrt(expected / samples))
    assert float(stationary.var()) == pytest.approx(expected, rel=0.04)  # SE 1%, bias 0.5%


def test_euler_maruyama_has_weak_order_one():
    """E[X_T²] of dX = −X dt + dW from 0 is (1 − e^{−2T})/2; the error halves with dt (fitted order ≈ 1)."""
    samples, horizon = 1_000_000, 1.0
    exact = (1 - math.exp(-2 * horizon)) / 2
    errors = []
    for index, dt in enumerate((0.2, 0.1, 0.05)):
        steps = round(horizon / dt)
        end = _ornstein_uhlenbeck(1.0, 1.0, torch.zeros(samples, dtype=torch.float64), dt, steps, seed=index)
        errors.append(float((end**2).mean()) - exact)  # EM's bias: +0.064, +0.030, +0.015; SE 6e-4
    orders = [math.log2(a / b) for a, b in pairwise(errors)]
    assert all(0.8 < order < 1.3 for order in orders), (errors, orders)


def test_ode_alignment_matches_the_closed_form():
    """θ' = (Σθ − (θᵀΣθ)θ)/(1−μ) is solved by Π(exp(Σt/(1−μ))θ0)."""
    problem, momentum = _problem(), 0.5
    start = torch.tensor([0.05, 0.9, 0.3, -0.2], dtype=torch.float64)
    times = torch.linspace(0, 6, 13, dtype=torch.float64)
    linear = start * torch.exp(problem.eigenvalues * times[:, None] / (1 - momentum))  # exp(Σt/(1−μ))θ0
    expected = problem.alignment(linear)
    torch.testing.assert_close(
        ode_alignment(problem, start, momentum, times), expected, rtol=1e-8, atol=1e-10
    )


def test_median_escape_prediction_is_the_ode_crossing_from_median_z():
    """`median_escape_step`'s closed form is the ODE's first passage of a = ½ from u0 = median |Z|."""
    problem, lr, momentum = _problem(), 1e-3, 0.5
    assert MEDIAN_ABS_NORMAL == pytest.approx(math.sqrt(2) * torch.erfinv(torch.tensor(0.5)).item())
    u0 = MEDIAN_ABS_NORMAL * problem.escape_scale(lr, momentum)
    start = problem.ode_escape_start(lr, momentum)
    torch.testing.assert_close(
        start, torch.tensor([u0, math.sqrt(1 - u0**2), 0, 0], dtype=torch.float64), **TIGHT
    )
    steps = torch.arange(0, 10_000, 2, dtype=torch.float64)
    crossing = float(first_passage(ode_alignment(problem, start, momentum, steps * lr))) * 2
    assert problem.median_escape_step(lr, momentum) == pytest.approx(crossing, abs=2)


def test_first_passage_on_hand_made_sequences():
    alignment = torch.tensor(
        [
            [0.1, 0.6, 0.0, 0.2],
            [0.4, 0.7, 0.1, 0.5],
            [0.5, 0.2, 0.2, 0.9],
            [0.3, 0.9, 0.49, 0.1],
        ]
    )
    torch.testing.assert_close(
        first_passage(alignment), torch.tensor([2, 0, math.inf, 1], dtype=torch.float64)
    )
    torch.testing.assert_close(
        first_passage(alignment, 0.65), torch.tensor([math.inf, 1, math.inf, 2]).double()
    )


def test_track_equals_first_passage_on_the_full_history():
    """Records every 5th step and escape steps checked at every step, as from the stored history."""
    problem, runs, steps = _problem(1.0, 0.4, 0.2), 50, 200
    start = problem.eigenvector(1).expand(runs, -1)
    tracked = track(
        problem, start, msgd(problem, start, 0.05, 0.5, torch.Generator().manual_seed(0)), steps, 5
    )
    history = torch.stack(
        [start, *islice(msgd(problem, start, 0.05, 0.5, torch.Generator().manual_seed(0)), steps)]
    )
    alignment = problem.alignment(history)
    torch.testing.assert_close(tracked.alignment, alignment[::5], **TIGHT)
    torch.testing.assert_close(tracked.escape, first_passage(alignment))
    assert torch.isfinite(tracked.escape).sum() > 10  # the test exercises real escapes
    with pytest.raises(ValueError, match="multiple of record_every"):
        track(problem, start, iter(()), 7, 5)


def test_streaming_pca_rejects_a_degenerate_top_eigenvalue():
    with pytest.raises(ValueError, match="λ1 > λ2"):
        _problem(1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="λ1 > λ2"):
        _problem(1.0, 0.5, 0.7)


def test_msgd_and_sde_match_the_predictions_in_two_dimensions():
    """λ = (1, 0.5), η = 0.01, μ = 0.5, 1 000 runs. Median escape step from e2, MSGD and SDE, within 15% of
    the linearized prediction (measured 286 and 276 against 269: at this large η the first-order
    prediction runs a few per cent low); E[1 − a] near e1 within 5% (measured 0.0101)."""
    problem, lr, momentum, runs = _problem(1.0, 0.5), 0.01, 0.5, 1000
    generator = torch.Generator().manual_seed(0)
    saddle, optimum = problem.eigenvector(1).expand(runs, -1), problem.eigenvector(0).expand(runs, -1)
    escape = track(problem, saddle, msgd(problem, saddle, lr, momentum, generator), 1200, 10).escape
    assert float(escape.median()) == pytest.approx(problem.median_escape_step(lr, momentum), rel=0.15)
    dt = 0.005
    sde_escape = track(problem, saddle, sde(problem, saddle, lr, momentum, dt, generator), 2400, 10).escape
    assert float(sde_escape.median()) * dt / lr == pytest.approx(
        problem.median_escape_step(lr, momentum), rel=0.1
    )
    spread = track(problem, optimum, msgd(problem, optimum, lr, momentum, generator), 1000, 5).spread(250)
    assert problem.stationary_spread(lr, momentum) == pytest.approx(0.01)  # ηλ1λ2/(2(λ1−λ2)(1−μ))
    assert float(spread.mean()) == pytest.approx(0.01, rel=0.05)


def test_pool_equals_tracking_all_runs_at_once():
    """Tracking runs in two groups and pooling them is tracking all runs together (a fixed history)."""
    problem, steps, every = _problem(), 12, 3
    history = normalize(
        torch.randn(steps + 1, 7, problem.dim, generator=torch.Generator().manual_seed(3)).double()
    )

    def tracked(runs: slice):
        return track(problem, history[0, runs], iter(history[1:, runs]), steps, every, threshold=0.2)

    pooled, together = pool([tracked(slice(0, 3)), tracked(slice(3, 7))]), tracked(slice(0, 7))
    torch.testing.assert_close(pooled.alignment, together.alignment, **TIGHT)
    torch.testing.assert_close(pooled.escape, together.escape)
    assert pooled.record_every == every and torch.isfinite(pooled.escape).any()
    with pytest.raises(ValueError, match="one record grid"):
        pool([tracked(slice(0, 3)), track(problem, history[0], iter(history[1:]), steps, 4)])
