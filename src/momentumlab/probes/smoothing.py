"""Monte-Carlo smoothing over a ball: f̂_δ(x) = E_{u ~ unit ball} f(x − δu) (Sato & Iiduka, SPEC §3).

In d dimensions almost all of the unit ball's volume lies near its surface (E‖u‖² = d/(d+2)), and a
random direction meets the curvature of f on average: for a quadratic, f̂_δ = f + δ² tr(H)/(2(d+2))
(:func:`quadratic_lift`). Two views of the smoothing around a point: f̂_δ along a line through it
(:func:`smoothed_line`) and the lift f̂_δ(x) − f(x) against δ (:func:`smoothing_lift`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def unit_ball(
    count: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """`count` points uniform in the d-dimensional unit ball, as rows: a direction uniform on the sphere
    (a normalized Gaussian) times a radius U^{1/d}, U uniform on [0, 1]."""
    if count < 1 or dim < 1:
        raise ValueError(f"count={count}, dim={dim}: both must be at least 1")
    directions = torch.randn(count, dim, generator=generator, dtype=dtype)
    directions /= directions.norm(dim=1, keepdim=True)
    radii = torch.rand(count, 1, generator=generator, dtype=dtype) ** (1 / dim)  # U^{1/d}
    return directions * radii


@dataclass(frozen=True)
class SmoothedValue:
    """A Monte-Carlo estimate of f̂_δ(x) with its standard error."""

    mean: float
    standard_error: float
    samples: int


def smoothed_loss(
    loss: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    delta: float,
    ball: torch.Tensor,
    antithetic: bool = False,
) -> SmoothedValue:
    """f̂_δ(x) ≈ (1/S) Σ_s f(x − δ u_s) over the S rows u_s of `ball` (from :func:`unit_ball`).

    With `antithetic`, each u_s is used with −u_s too (the ball is symmetric, so the estimate stays
    unbiased): a pair's mean cancels the odd terms ±δ⟨∇f, u⟩ + O(δ³) of the expansion, and the standard
    error is that of the S pair means. Reusing one `ball` for every point of a line or plane (common random
    numbers) makes the estimated curve smooth and its differences far more precise than its level.
    """
    if delta < 0:
        raise ValueError(f"delta={delta}: must be non-negative")
    if ball.shape[0] < 2:
        raise ValueError(f"ball of {ball.shape[0]} samples: need at least 2 for a standard error")
    signs = (1.0, -1.0) if antithetic else (1.0,)
    values = torch.tensor(
        [[float(loss(point - sign * delta * u.to(point))) for sign in signs] for u in ball],
        dtype=torch.float64,
    ).mean(1)
    return SmoothedValue(
        values.mean().item(), values.std().item() / math.sqrt(len(values)), len(values) * len(signs)
    )


def smoothed_line(
    loss: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    direction: torch.Tensor,
    offsets: Sequence[float],
    delta: float,
    ball: torch.Tensor,
) -> list[SmoothedValue]:
    """f̂_δ(x + s·v) for each offset s along the direction v, with antithetic pairs ±u of `ball`.

    The same draws serve every point (common random numbers), so the curve's shape is far more precise
    than its level.
    """
    return [
        smoothed_loss(loss, point + float(offset) * direction, delta, ball, antithetic=True)
        for offset in offsets
    ]


def smoothing_lift(
    loss: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    deltas: Sequence[float],
    ball: torch.Tensor,
) -> list[SmoothedValue]:
    """f̂_δ(x) − f(x) for each δ (antithetic pairs ±u of `ball`), with the standard error of f̂_δ(x).

    The pairs cancel the first-order term δ⟨∇f, u⟩, so what remains is the curvature's lift: about
    :func:`quadratic_lift` near a minimum.
    """
    at_point = float(loss(point))
    lifts = []
    for delta in deltas:
        value = smoothed_loss(loss, point, float(delta), ball, antithetic=True)
        lifts.append(SmoothedValue(value.mean - at_point, value.standard_error, value.samples))
    return lifts


def quadratic_lift(delta: float, trace: float, dim: int) -> float:
    """f̂_δ(x) − f(x) = δ² tr(H)/(2(d+2)) for a quadratic f with Hessian H in d dimensions."""
    return delta**2 * trace / (2 * (dim + 2))
