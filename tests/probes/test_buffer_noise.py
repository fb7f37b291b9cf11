"""The momentum buffer's noise statistics against a stored history, the stationary EMA variance and the
fixed-point identity."""

from __future__ import annotations

import pytest
import torch

from momentumlab.data.landscapes import NoisyQuadratic
from momentumlab.probes.buffer_noise import (
    BufferStatistics,
    ema_variance_ratio,
    simulate_buffers,
    start_bias,
    start_transient,
    start_variance_ratio,
)


def _small_problem() -> NoisyQuadratic:
    generator = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    return NoisyQuadratic.from_spectra(
        torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
        torch.tensor([0.2, 1.0, 5.0], dtype=torch.float64),
        basis,
    )


def test_ema_variance_ratio_is_the_sum_of_squared_weights():
    """(1−β)/(1+β) = Σ_r ((1−β)β^r)², the variance of the EMA of unit-variance i.i.d. noise."""
    for beta in (0.0, 0.5, 0.9, 0.99):
        weights = (1 - beta) * beta ** torch.arange(20_000, dtype=torch.float64)
        assert ema_variance_ratio(beta) == pytest.approx(float((weights**2).sum()), rel=1e-12)
    assert ema_variance_ratio(0.9) == pytest.approx(1 / 19)


def test_ema_of_iid_noise_has_stationary_variance_ratio():
    """β = 0.9, 400 chains × 400 steps after 100 burn-in: tr(Σ⁻¹C)/d within 3% (and 4 SE) of 1/19."""
    problem, beta = _small_problem(), 0.9
    start = torch.ones(problem.dim, dtype=torch.float64)
    statistics = simulate_buffers(
        problem,
        (beta,),
        0.0,
        start,
        chains=400,
        burn_in=100,
        steps=400,
        generator=torch.Generator().manual_seed(0),
    )["buffer"]
    predicted = ema_variance_ratio(beta)
    ratio, error = float(statistics.ratio[0]), float(statistics.standard_error[0])
    assert error < 0.01 * predicted
    assert abs(ratio - predicted) < min(0.03 * predicted, 4 * error)
    eigenvalues = statistics.whitened_eigenvalues[0] / predicted
    assert eigenvalues.min() > 0.9 and eigenvalues.max() < 1.1


def test_simulate_matches_a_recorded_history():
    """The running statistics equal those computed from the full stored history of g (same noise draws)."""
    problem, betas = _small_problem(), (0.5, 0.8)
    chains, burn_in, steps, learning_rate = 30, 7, 25, 0.1
    start = torch.ones(problem.dim, dtype=torch.float64)
    result = simulate_buffers(
        problem, betas, learning_rate, start, chains, burn_in, steps, torch.Generator().manual_seed(3)
    )
    generator = torch.Generator().manual_seed(3)
    beta = torch.tensor(betas, dtype=torch.float64)[:, None, None]
    x = start.expand(len(betas), chains, problem.dim).clone()
    buffer, history = torch.zeros_like(x), {"buffer": [], "noise part": []}
    noise_sum = torch.zeros_like(x)
    for k in range(burn_in + steps):
        noise = problem.noise((len(betas), chains), generator)
        buffer = beta * buffer + (1 - beta) * problem.gradient(x) + (1 - beta) * noise
        noise_sum = beta * noise_sum + (1 - beta) * noise
        x = x - learning_rate * buffer
        if k >= burn_in:
            history["buffer"].append(buffer)
            history["noise part"].append(noise_sum)
    precision = torch.linalg.inv(problem.noise_covariance)  # Σ⁻¹
    for key, values in history.items():
        stacked = torch.stack(values)  # (steps, B, chains, d)
        centred = stacked - stacked.mean(2, keepdim=True)
        quadratic = torch.einsum("tbci,ij,tbcj->bc", centred, precision, centred)
        per_chain = quadratic / (steps * problem.dim) * chains / (chains - 1)
        torch.testing.assert_close(result[key].per_chain, per_chain, rtol=1e-10, atol=0)
        covariance = torch.einsum("tbci,tbcj->bij", centred, centred) / (steps * (chains - 1))
        # Σ⁻¹C is similar to Σ^{-1/2}CΣ^{-1/2}: same (real) eigenvalues, though not symmetric itself
        similar = torch.linalg.solve(problem.noise_covariance, covariance)
        expected = torch.linalg.eigvals(similar).real.sort().values
        torch.testing.assert_close(result[key].whitened_eigenvalues, expected, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(result[key].ratio, per_chain.mean(1), rtol=1e-12, atol=0)
        torch.testing.assert_close(
            result[key].standard_error, per_chain.std(1) / chains**0.5, rtol=1e-12, atol=0
        )


def test_noise_part_equals_buffer_at_a_fixed_point():
    """With η = 0 the buffer differs from the EMA of ξ by (1 − β^k)Ax0, the same in every chain."""
    problem = _small_problem()
    start = torch.ones(problem.dim, dtype=torch.float64)
    result = simulate_buffers(problem, (0.5, 0.9), 0.0, start, 20, 10, 10, torch.Generator())
    torch.testing.assert_close(result["buffer"].per_chain, result["noise part"].per_chain, rtol=1e-9, atol=0)


def test_pool_concatenates_chains_and_averages_covariances():
    generator = torch.Generator().manual_seed(0)
    parts = [
        BufferStatistics(
            torch.rand(2, 5, generator=generator, dtype=torch.float64),
            torch.rand(2, 3, 3, generator=generator, dtype=torch.float64),
        )
        for _ in range(3)
    ]
    pooled = BufferStatistics.pool(parts)
    assert pooled.per_chain.shape == (2, 15)
    torch.testing.assert_close(pooled.ratio, torch.cat([p.per_chain for p in parts], 1).mean(1))
    torch.testing.assert_close(pooled.whitened_covariance, sum(p.whitened_covariance for p in parts) / 3)


def test_simulate_refuses_a_single_chain():
    problem = _small_problem()
    with pytest.raises(ValueError, match="chains = 1"):
        simulate_buffers(problem, (0.5,), 0.0, torch.ones(3, dtype=torch.float64), 1, 0, 5, torch.Generator())


def test_first_gradient_start_is_torch_sgd_with_dampening():
    """`torch.optim.SGD(momentum=β, dampening=β)` sets its buffer to the first gradient, then averages like
    the EMA: the recursion behind the "first gradient" start. The EMA from zero is (1−β)·PyTorch's
    undamped heavy-ball buffer, and the two starts differ by β^{t+1}ĝ_0."""
    beta, gradients = 0.8, torch.randn(5, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    parameter = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    damped = torch.optim.SGD([parameter], lr=0.1, momentum=beta, dampening=beta)
    first, zero = None, torch.zeros(4, dtype=torch.float64)
    for t, gradient in enumerate(gradients):
        parameter.grad = gradient.clone()
        damped.step()
        first = gradient.clone() if first is None else beta * first + (1 - beta) * gradient
        zero = beta * zero + (1 - beta) * gradient
        torch.testing.assert_close(damped.state[parameter]["momentum_buffer"], first, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(first - zero, beta ** (t + 1) * gradients[0], rtol=1e-12, atol=1e-14)


def test_start_closed_forms_are_the_weighted_sums():
    """Bias and Cov/Σ of each start from the explicit weights of g_t on ĝ_0 … ĝ_t."""
    for beta in (0.5, 0.9):
        for t in (0, 1, 7, 30):
            weights = (1 - beta) * beta ** torch.arange(t, -1, -1, dtype=torch.float64)  # on ĝ_0 … ĝ_t
            assert start_bias(beta, t, "zero") == pytest.approx(1 - float(weights.sum()), rel=1e-12)
            assert start_variance_ratio(beta, t, "zero") == pytest.approx(
                float((weights**2).sum()), rel=1e-12
            )
            weights[0] = beta**t  # g_0 = ĝ_0 carries β^t at step t
            assert start_bias(beta, t, "first gradient") == 0.0 and float(weights.sum()) == pytest.approx(1.0)
            assert start_variance_ratio(beta, t, "first gradient") == pytest.approx(
                float((weights**2).sum()), rel=1e-12
            )


def test_start_transient_matches_a_recorded_history_and_the_closed_forms():
    """The statistics from a hand-run history of both buffers on the same draws; with 4000 chains, the
    zero start's bias and both variances within sampling error of the closed forms."""
    problem, betas, chains, steps = _small_problem(), (0.5, 0.9), 5, 4
    point = torch.ones(problem.dim, dtype=torch.float64)
    result = start_transient(problem, betas, point, chains, steps, torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(2)
    mean_gradient = problem.gradient(point)
    whitening = torch.linalg.inv(problem.noise_factor)
    history: dict[tuple[str, int], torch.Tensor] = {}  # (start, β index) → that buffer, (chains, d)
    for t in range(steps):
        gradient = mean_gradient + problem.noise((len(betas), chains), generator)  # ĝ_t, same draw order
        for i, beta in enumerate(betas):
            if t == 0:
                history["zero", i], history["first gradient", i] = (1 - beta) * gradient[i], gradient[i]
            else:
                for start in ("zero", "first gradient"):
                    history[start, i] = beta * history[start, i] + (1 - beta) * gradient[i]
            for start in ("zero", "first gradient"):
                buffer, (bias, variance) = history[start, i], result[start]
                expected_bias = (buffer.mean(0) - mean_gradient).norm() / mean_gradient.norm()
                whitened = (buffer - buffer.mean(0)) @ whitening.T
                expected_variance = torch.trace(whitened.T @ whitened) / ((chains - 1) * problem.dim)
                assert float(bias[i, t]) == pytest.approx(float(expected_bias), rel=1e-12)
                assert float(variance[i, t]) == pytest.approx(float(expected_variance), rel=1e-12)
    large = start_transient(problem, (0.9,), point, 4000, 12, torch.Generator().manual_seed(0))
    for start in ("zero", "first gradient"):
        bias, variance = (values[0] for values in large[start])
        predicted = torch.tensor(
            [start_variance_ratio(0.9, t, start) for t in range(12)], dtype=torch.float64
        )
        assert ((variance / predicted - 1).abs() < 0.08).all()  # sd of a variance from 4000 chains: ~2%
    # the mean over chains of g_t misses E[g_t] by ~√(tr Cov(g_t)/chains) = √(r_t tr Σ/4000): the noise floor
    trace, norm = float(torch.trace(problem.noise_covariance)), float(problem.gradient(point).norm())
    for start in ("zero", "first gradient"):
        ratios = torch.tensor([start_variance_ratio(0.9, t, start) for t in range(12)], dtype=torch.float64)
        floor = (ratios * trace / 4000).sqrt() / norm
        predicted = torch.tensor([start_bias(0.9, t, start) for t in range(12)], dtype=torch.float64)
        assert ((large[start][0][0] - predicted).abs() < 4 * floor).all()
    assert float(large["zero"][0][0, 0]) == pytest.approx(0.9, abs=0.01)  # the zero start's bias β at t = 0
