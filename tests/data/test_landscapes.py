"""Toy losses of momentumlab.data.landscapes against autograd, dense eigensolvers and sample statistics."""

from __future__ import annotations

import math

import pytest
import torch

from momentumlab.data.landscapes import (
    NoisyQuadratic,
    scalar_product_flow_sharpness,
    scalar_product_gradient,
    scalar_product_hessian,
    scalar_product_loss,
    scalar_product_sharpness,
)
from momentumlab.probes.flows import integrate_flow, plain_flow

TIGHT = {"rtol": 1e-12, "atol": 1e-12}
X, Y = 1.5, 0.6  # x ≠ 1 so that a missing x or x² shows


def _points(count: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(count, 2, generator=generator, dtype=torch.float64)


def _minima(x: float = X, y: float = Y) -> torch.Tensor:
    """Points of the hyperbola w1 w2 = y/x, balanced and unbalanced, in several quadrants."""
    w1 = torch.tensor([0.2, 0.5, math.sqrt(y / x), 1.3, 3.0, -0.7], dtype=torch.float64)
    return torch.stack([w1, y / x / w1], -1)


def test_scalar_product_loss_values_and_batching():
    loss = scalar_product_loss(X, Y)
    w = torch.tensor([[2.0, 3.0], [0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(loss(w), torch.tensor([0.5 * (0.6 - 9.0) ** 2, 0.18], dtype=torch.float64))
    assert loss(w[0]).shape == ()


def test_scalar_product_gradient_matches_autograd():
    loss = scalar_product_loss(X, Y)
    for point in _points():
        expected = torch.func.grad(loss)(point)
        torch.testing.assert_close(scalar_product_gradient(point, X, Y), expected, **TIGHT)
    torch.testing.assert_close(
        scalar_product_gradient(_points(), X, Y), torch.func.vmap(torch.func.grad(loss))(_points()), **TIGHT
    )


def test_scalar_product_hessian_matches_autograd():
    loss = scalar_product_loss(X, Y)
    points = _points()
    expected = torch.stack([torch.autograd.functional.hessian(loss, point) for point in points])
    torch.testing.assert_close(scalar_product_hessian(points, X, Y), expected, **TIGHT)


def test_sharpness_formula_is_top_hessian_eigenvalue_at_minima():
    minima = _minima()
    loss = scalar_product_loss(X, Y)
    assert loss(minima).abs().max() < 1e-28
    dense = torch.stack([torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, w)) for w in minima])
    torch.testing.assert_close(scalar_product_sharpness(minima, X), dense[:, -1], **TIGHT)
    # rank one at a minimum: the other eigenvalue vanishes
    torch.testing.assert_close(dense[:, 0], torch.zeros(len(minima), dtype=torch.float64), rtol=0, atol=1e-12)
    # the flattest minimum w1 = w2 = √(y/x) has λ_max = 2xy
    flattest = torch.full((2,), math.sqrt(Y / X), dtype=torch.float64)
    assert float(scalar_product_sharpness(flattest, X)) == pytest.approx(2 * X * Y, rel=1e-14)
    assert float(scalar_product_sharpness(minima, X).min()) == pytest.approx(2 * X * Y, rel=1e-14)


def test_gradient_flow_conserves_the_imbalance():
    """⟨∇(w1² − w2²), ∇E⟩ = 0 at any point: gradient flow keeps w1² − w2² (the closed form's premise)."""
    points = _points(8)
    imbalance_gradient = 2 * points * torch.tensor([1.0, -1.0], dtype=torch.float64)
    inner = (imbalance_gradient * scalar_product_gradient(points, X, Y)).sum(-1)
    torch.testing.assert_close(inner, torch.zeros(8, dtype=torch.float64), **TIGHT)


@pytest.mark.parametrize("start", [(2.8, 3.4), (0.3, 2.0), (1.5, 0.2), (1.0, 1.0)])
def test_flow_sharpness_is_where_the_integrated_flow_ends(start):
    """The closed form against gradient flow itself, integrated (DOP853) until it has converged."""
    start = torch.tensor(start, dtype=torch.float64)
    end = integrate_flow(plain_flow(scalar_product_loss(X, Y), 0.0), start, [60.0], rtol=1e-12, atol=1e-14)[0]
    assert float(scalar_product_loss(X, Y)(end)) < 1e-24
    expected = float(scalar_product_sharpness(end, X))
    assert float(scalar_product_flow_sharpness(start, X, Y)) == pytest.approx(expected, rel=1e-9)
    batch = torch.stack([start, start.flip(0)])  # a batch; swapping w1 and w2 keeps λ_max
    torch.testing.assert_close(
        scalar_product_flow_sharpness(batch, X, Y),
        torch.full((2,), expected, dtype=torch.float64),
        rtol=1e-9,
        atol=0,
    )


def _quadratic(dim: int = 4) -> NoisyQuadratic:
    generator = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    curvatures = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)
    variances = torch.logspace(-1, 1, dim, dtype=torch.float64)
    return NoisyQuadratic.from_spectra(curvatures, variances, basis)


def test_noisy_quadratic_loss_and_gradient_match_autograd():
    problem = _quadratic()
    points = torch.randn(5, problem.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = torch.func.vmap(torch.func.grad(problem.loss))(points)
    torch.testing.assert_close(problem.gradient(points), expected, **TIGHT)
    expected_loss = 0.5 * points[0] @ problem.hessian @ points[0]
    torch.testing.assert_close(problem.loss(points[0]), expected_loss, **TIGHT)


def test_noisy_quadratic_spectra_and_noise_factor():
    problem = _quadratic()
    torch.testing.assert_close(
        torch.linalg.eigvalsh(problem.noise_covariance),
        torch.logspace(-1, 1, problem.dim, dtype=torch.float64),
        **TIGHT,
    )
    assert not torch.allclose(problem.noise_covariance, torch.diag(problem.noise_covariance.diagonal()))
    factor = problem.noise_factor
    torch.testing.assert_close(factor @ factor.T, problem.noise_covariance, **TIGHT)


def test_noise_has_requested_covariance():
    """Whitened sample covariance of 200 000 draws is I to within 5 standard errors (≈ 5·√(2/N))."""
    problem = _quadratic()
    samples = 200_000
    noise = problem.noise((samples,), torch.Generator().manual_seed(3))
    assert noise.shape == (samples, problem.dim)
    whitened = torch.linalg.solve_triangular(problem.noise_factor, noise.T, upper=False).T
    covariance = whitened.T @ whitened / samples
    tolerance = 5 * math.sqrt(2 / samples)
    assert (covariance - torch.eye(problem.dim, dtype=torch.float64)).abs().max() < tolerance
    assert whitened.mean(0).abs().max() < 5 / math.sqrt(samples)


def test_noise_is_independent_across_a_batch():
    """Draws at different batch indices are uncorrelated: the cross-covariance of two halves is ≈ 0."""
    problem = _quadratic()
    samples = 100_000
    noise = problem.noise((samples, 2), torch.Generator().manual_seed(4))
    cross = noise[:, 0].T @ noise[:, 1] / samples
    scale = problem.noise_covariance.diagonal().sqrt()
    assert (cross / scale[:, None] / scale[None, :]).abs().max() < 5 / math.sqrt(samples)


def test_stochastic_gradient_is_gradient_plus_noise():
    problem = _quadratic()
    x = torch.randn(3, 7, problem.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    stochastic = problem.stochastic_gradient(x, torch.Generator().manual_seed(6))
    noise = problem.noise((3, 7), torch.Generator().manual_seed(6))
    torch.testing.assert_close(stochastic, problem.gradient(x) + noise, **TIGHT)


@pytest.mark.parametrize(
    "hessian, covariance, message",
    [
        (torch.eye(3), torch.eye(2), "noise_covariance has shape"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.eye(2), "hessian must be symmetric"),
        (torch.eye(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "positive definite"),
    ],
)
def test_noisy_quadratic_rejects_bad_matrices(hessian, covariance, message):
    with pytest.raises(ValueError, match=message):
        NoisyQuadratic(hessian.double(), covariance.double())
