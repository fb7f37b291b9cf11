"""The `flatness-toy` and `momentum-variance` reproductions: their fast paths against plain references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from momentumlab.data.landscapes import NoisyQuadratic, scalar_product_gradient, scalar_product_sharpness
from momentumlab.experiments import flatness_toy, momentum_variance
from momentumlab.experiments.base import ReproductionOptions
from momentumlab.optim import HeavyBall
from momentumlab.store import RunStore

TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _toy_gradient(w: torch.Tensor) -> torch.Tensor:
    return scalar_product_gradient(w, flatness_toy.INPUT, flatness_toy.TARGET)


def test_heavy_ball_paths_equal_heavy_ball_optimizer_steps():
    """The batched Polyak recursion of the toy, every β at once, equals HeavyBall(h, μ = β) run per β."""
    betas = flatness_toy.BETAS
    beta = torch.tensor(betas, dtype=torch.float64).unsqueeze(1)
    step = flatness_toy.EFFECTIVE_STEP * (1 - beta)
    start = torch.tensor(flatness_toy.START, dtype=torch.float64).expand(len(betas), 2)
    steps = 120
    paths = flatness_toy.heavy_ball_paths(_toy_gradient, start, step, beta, steps)
    assert paths.shape == (steps + 1, len(betas), 2)
    for index, momentum in enumerate(betas):
        parameter = torch.nn.Parameter(start[index].clone())
        optimizer = HeavyBall([parameter], lr=float(step[index]), momentum=momentum)
        iterates = [parameter.detach().clone()]
        for _ in range(steps):
            parameter.grad = _toy_gradient(parameter.detach())
            optimizer.step()
            iterates.append(parameter.detach().clone())
        torch.testing.assert_close(paths[:, index], torch.stack(iterates), **TIGHT)


def test_gradient_flow_sharpness_uses_the_conserved_imbalance():
    """w1² − w2² is constant along x' = −∇E (⟨∇(w1² − w2²), ∇E⟩ = 0), and the formula is λ_max at the
    point of the hyperbola with the start's imbalance."""
    points = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    imbalance_gradient = 2 * points * torch.tensor([1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(
        (imbalance_gradient * _toy_gradient(points)).sum(-1), torch.zeros(8, dtype=torch.float64), **TIGHT
    )
    start = torch.tensor(flatness_toy.START, dtype=torch.float64)
    imbalance, product = float(start[0] ** 2 - start[1] ** 2), flatness_toy.TARGET / flatness_toy.INPUT
    w1 = math.sqrt((imbalance + math.sqrt(imbalance**2 + 4 * product**2)) / 2)
    minimum = torch.tensor([w1, product / w1], dtype=torch.float64)
    assert float(minimum[0] ** 2 - minimum[1] ** 2) == pytest.approx(imbalance, rel=1e-12)
    assert flatness_toy.gradient_flow_sharpness(start) == pytest.approx(
        float(scalar_product_sharpness(minimum, flatness_toy.INPUT)), rel=1e-12
    )


def _small_problem() -> NoisyQuadratic:
    generator = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    return NoisyQuadratic.from_spectra(
        torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
        torch.tensor([0.2, 1.0, 5.0], dtype=torch.float64),
        basis,
    )


def test_ema_of_iid_noise_has_stationary_variance_ratio():
    """β = 0.9, 400 chains × 400 steps after 100 burn-in: tr(Σ⁻¹C)/d within 3% (and 4 SE) of 1/19."""
    problem, beta = _small_problem(), 0.9
    start = torch.ones(problem.dim, dtype=torch.float64)
    statistics = momentum_variance.simulate(
        problem,
        (beta,),
        0.0,
        start,
        chains=400,
        burn_in=100,
        steps=400,
        generator=torch.Generator().manual_seed(0),
    )["buffer"]
    predicted = momentum_variance.predicted_ratio(beta)
    assert predicted == pytest.approx(1 / 19)
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
    result = momentum_variance.simulate(
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


def test_noise_part_equals_buffer_at_a_fixed_point():
    """With η = 0 the buffer differs from the EMA of ξ by (1 − β^k)Ax0, the same in every chain."""
    problem = _small_problem()
    start = torch.ones(problem.dim, dtype=torch.float64)
    result = momentum_variance.simulate(problem, (0.5, 0.9), 0.0, start, 20, 10, 10, torch.Generator())
    torch.testing.assert_close(result["buffer"].per_chain, result["noise part"].per_chain, rtol=1e-9, atol=0)


def _assert_outputs(out_dir: Path, result, figures: set[str], claim_ids: set[str]) -> None:
    assert {path.name for path in result.figures} == figures
    for name in figures:
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({result.name}/{name})" in result.section
    stored = json.loads((out_dir / "claims.json").read_text())
    assert {claim["id"] for claim in stored} == claim_ids
    assert [claim["passed"] for claim in stored] == [claim.passed for claim in result.claims]


def test_flatness_toy_smoke(tmp_path: Path):
    """2 000 steps (of 50 000): the end points are not yet minima, but the ordering and the probe hold."""
    out_dir = tmp_path / flatness_toy.NAME
    result = flatness_toy.run(RunStore(tmp_path / "store"), out_dir, ReproductionOptions(), steps=2000)
    _assert_outputs(
        out_dir,
        result,
        {"trajectories.png", "sharpness.png"},
        {"runs-reach-minima", "sharpness-decreases-with-beta", "probe-matches-closed-form"},
    )
    claims = {claim.id: claim for claim in result.claims}
    assert claims["sharpness-decreases-with-beta"].passed
    assert "(1+β)/(1−β) = 1, 3, 9, 19" in result.section


def test_momentum_variance_smoke(tmp_path: Path):
    out_dir = tmp_path / momentum_variance.NAME
    result = momentum_variance.run(
        RunStore(tmp_path / "store"),
        out_dir,
        ReproductionOptions(seeds=(0, 1)),
        chains=40,
        burn_in=300,
        steps=200,
    )
    _assert_outputs(
        out_dir,
        result,
        {"variance_ratio.png"},
        {"buffer-covariance-fixed-point", "noise-part-covariance-trajectory"},
    )
    assert all(claim.passed for claim in result.claims)
    detail = result.claims[0].detail["0.5"]
    assert detail["ratio"] == pytest.approx(1 / 3, rel=0.1)
