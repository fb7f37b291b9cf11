"""The momentum buffer's noise statistics against a stored history, the stationary EMA variance and the
fixed-point identity."""

from __future__ import annotations

import pytest
import torch

from momentumlab.data.landscapes import NoisyQuadratic
from momentumlab.probes.buffer_noise import BufferStatistics, ema_variance_ratio, simulate_buffers


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
