"""Ball smoothing, along a line and as a lift at a point, against closed forms: for a quadratic every
antithetic pair averages to f(x) + (δ²/2)·uᵀAu exactly, and in expectation f̂_δ = f + δ² tr(A)/(2(d+2))."""

from __future__ import annotations

import pytest
import torch

from momentumlab.probes.smoothing import (
    quadratic_lift,
    smoothed_line,
    smoothed_loss,
    smoothing_lift,
    unit_ball,
)


def test_unit_ball_is_uniform():
    """P(‖u‖ ≤ r) = r^d, E‖u‖² = d/(d+2), and the mean is 0."""
    dim, count = 5, 20000
    ball = unit_ball(count, dim, torch.Generator().manual_seed(0))
    radii = ball.norm(dim=1)
    assert radii.max() <= 1
    assert (radii <= 0.8).double().mean().item() == pytest.approx(0.8**dim, abs=0.01)
    assert (radii**2).mean().item() == pytest.approx(dim / (dim + 2), abs=0.01)
    assert ball.mean(0).abs().max() < 0.02


@pytest.mark.parametrize("dim", [2, 50])
@pytest.mark.parametrize("antithetic", [False, True])
def test_smoothed_quadratic_matches_the_closed_form(dim, antithetic):
    """f = ½‖x‖²: f̂_δ(x) = ½‖x‖² + δ²·d/(2(d+2)); within 4 standard errors and 2% of the offset."""
    point = torch.full((dim,), 0.3, dtype=torch.float64)
    delta = 2.0
    ball = unit_ball(4000, dim, torch.Generator().manual_seed(1))
    value = smoothed_loss(lambda x: 0.5 * (x**2).sum(), point, delta, ball, antithetic)
    offset = delta**2 * dim / (2 * (dim + 2))
    expected = 0.5 * (point**2).sum().item() + offset
    assert abs(value.mean - expected) < 4 * value.standard_error
    assert abs(value.mean - expected) < 0.02 * offset
    assert value.samples == 8000 if antithetic else 4000


def test_antithetic_pairs_remove_the_linear_term():
    """f = ⟨a, x⟩: every pair (f(x − δu) + f(x + δu))/2 equals f(x) exactly, so the error is zero."""
    a = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    point = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    ball = unit_ball(50, 3, torch.Generator().manual_seed(2))
    value = smoothed_loss(lambda x: a @ x, point, 0.7, ball, antithetic=True)
    assert value.mean == pytest.approx(2.0, abs=1e-12)
    assert value.standard_error < 1e-12
    plain = smoothed_loss(lambda x: a @ x, point, 0.7, ball)
    assert plain.standard_error > 0.05


def _quadratic(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense symmetric positive definite A (f = ½ xᵀAx) and a point x."""
    generator = torch.Generator().manual_seed(3)
    factor = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return factor @ factor.T / dim + torch.eye(dim, dtype=torch.float64), torch.randn(
        dim, generator=generator, dtype=torch.float64
    )


def test_quadratic_lift_by_hand():
    """δ = 0.5, tr(H) = 12, d = 4: 0.25·12/(2·6) = 0.25."""
    assert quadratic_lift(0.5, 12.0, 4) == pytest.approx(0.25)


def test_smoothed_line_on_a_quadratic_is_f_plus_the_pairs_curvature():
    """At every y = x + s·v: each pair gives f(y) + (δ²/2)uᵀAu, so the mean is f(y) + (δ²/2)·mean(uᵀAu) and
    the standard error (δ²/2)·std(uᵀAu)/√S, the same at every point of the line."""
    dim, delta = 6, 0.7
    matrix, point = _quadratic(dim)
    direction = torch.nn.functional.normalize(torch.ones(dim, dtype=torch.float64), dim=0)
    ball = unit_ball(40, dim, torch.Generator().manual_seed(4))
    curvature = torch.einsum("si,ij,sj->s", ball, matrix, ball).numpy()  # uᵀAu per draw
    offsets = [-1.5, 0.0, 0.25, 2.0]
    values = smoothed_line(lambda x: 0.5 * x @ matrix @ x, point, direction, offsets, delta, ball)
    for offset, value in zip(offsets, values):
        y = point + offset * direction
        assert value.mean == pytest.approx(
            (0.5 * y @ matrix @ y).item() + delta**2 / 2 * curvature.mean(), rel=1e-12
        )
        assert value.standard_error == pytest.approx(delta**2 / 2 * curvature.std(ddof=1) / 40**0.5, rel=1e-9)
        assert value.samples == 80


def test_smoothing_lift_on_a_quadratic_matches_the_closed_form():
    """The lift is exactly (δ²/2)·mean(uᵀAu) for the draws, and within 4 standard errors and 3% of
    δ² tr(A)/(2(d+2)); δ = 0 lifts nothing (up to rounding)."""
    dim = 20
    matrix, point = _quadratic(dim)
    ball = unit_ball(3000, dim, torch.Generator().manual_seed(5))
    curvature = torch.einsum("si,ij,sj->s", ball, matrix, ball)
    deltas = [0.0, 0.1, 1.0, 3.0]
    lifts = smoothing_lift(lambda x: 0.5 * x @ matrix @ x, point, deltas, ball)
    assert lifts[0].mean == pytest.approx(0.0, abs=1e-12) and lifts[0].standard_error < 1e-12
    for delta, lift in zip(deltas[1:], lifts[1:]):
        assert lift.mean == pytest.approx(delta**2 / 2 * curvature.mean().item(), rel=1e-9)
        expected = quadratic_lift(delta, torch.trace(matrix).item(), dim)
        assert abs(lift.mean - expected) < 4 * lift.standard_error
        assert lift.mean == pytest.approx(expected, rel=0.03)


def test_smoothing_lift_of_a_linear_function_is_zero():
    """Antithetic pairs cancel ⟨a, u⟩ exactly, so a linear function is not lifted at any δ."""
    a = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    ball = unit_ball(30, 3, torch.Generator().manual_seed(6))
    for lift in smoothing_lift(
        lambda x: a @ x, torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64), [0.1, 2.0], ball
    ):
        assert lift.mean == pytest.approx(0.0, abs=1e-12)
        assert lift.standard_error < 1e-12
