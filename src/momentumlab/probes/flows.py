"""Heavy ball and the continuous flows that approximate it (Ghosh et al., ICLR 2023; SPEC §2).

For a loss E on a flat float64 parameter vector x:

- heavy ball:   x_{k+1} = x_k − h∇E(x_k) + β(x_k − x_{k−1}), from x_0 and x_{−1} (below);
- plain flow:   x' = −∇E(x)/(1 − β)                                   (O(h)-close, Kovachki & Stuart);
- IGR flow:     x' = −∇[E + (h/4)‖∇E‖²]                                 (GD, Barrett & Dherin);
- IGR-M flow:   x' = −(1/(1 − β)) ∇[E + (1 + β)h/(4(1 − β)²) ‖∇E‖²]   (O(h²)-close, Ghosh et al.).

Two starts (:data:`STARTS`):

- ``"rest"``: x_{−1} = x_0, so x_1 = x_0 − h∇E(x_0) (PyTorch's heavy ball). Heavy ball has not yet built
  up its velocity h∇E/(1 − β): while the momentum buffer fills (a few 1/(1 − β) steps) it falls behind
  the flow by the time lag τ = hβ/(1 − β) (exact for a constant gradient once β^k is negligible;
  :func:`momentum_time_lag`). So x_k ≈ x̃(kh − τ) to O(h²), and x_k − x̃(kh) ≈ −τ x̃'(kh) + O(h²): the
  distance at a fixed time is O(h²) only where the flow has (nearly) stopped moving, as on the toy loss
  at T = 1 where the flow has reached the valley of minima and only drifts along it at a speed of order h.
- ``"slow_manifold"``: x_{−1} = x_0 + h∇E(x_0)/(1 − β), so the first step already moves at the flow's
  velocity, x_1 = x_0 − h∇E(x_0)/(1 − β). The second-order recursion has a fast mode (decaying like β^k)
  and a slow one (the flow); this start puts heavy ball on the slow one to O(h²), so there is no lag and
  x_k − x̃(kh) = O(h²) on a fixed horizon, the setting of the O(h²) statement.

:func:`order_study` measures these distances over a range of step sizes, and :func:`fitted_order` the
order p of distance ∝ h^p from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

Loss = Callable[[Tensor], Tensor]  # flat parameter vector → scalar
Field = Callable[[Tensor], Tensor]  # flat parameter vector → velocity x'
Start = Literal["rest", "slow_manifold"]
STARTS: tuple[Start, ...] = ("rest", "slow_manifold")


def gradient(loss: Loss, point: Tensor) -> Tensor:
    """∇E at `point`, detached (a leaf copy is differentiated, so `point` itself needs no grad)."""
    with torch.enable_grad():
        leaf = point.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(leaf), leaf)
    return grad


def igr_m_strength(h: float, beta: float) -> float:
    """λ of IGR-M, (1 + β)h/(4(1 − β)²); β = 0 gives GD's IGR strength h/4."""
    return (1 + beta) * h / (4 * (1 - beta) ** 2)


def momentum_time_lag(h: float, beta: float) -> float:
    """τ = hβ/(1 − β): how far (in flow time) heavy ball from x_1 = x_0 − h∇E(x_0) trails the flow."""
    return h * beta / (1 - beta)


def start_lag(h: float, beta: float, start: Start) -> float:
    """The time lag of heavy ball started at `start`: τ at rest, 0 on the slow manifold."""
    _check_start(start)
    return momentum_time_lag(h, beta) if start == "rest" else 0.0


def _check_start(start: str) -> None:
    if start not in STARTS:
        raise ValueError(f"start = {start!r}: allowed are {', '.join(map(repr, STARTS))}")


def regularized_loss(loss: Loss, strength: float) -> Loss:
    """E_λ(x) = E(x) + λ‖∇E(x)‖², differentiable again (double backward)."""

    def penalized(x: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = x if x.requires_grad else x.detach().requires_grad_(True)
            value = loss(leaf)
            (grad,) = torch.autograd.grad(value, leaf, create_graph=True)
            return value + strength * grad.pow(2).sum()  # E + λ‖∇E‖²

    return penalized


def modified_flow(loss: Loss, strength: float, speed: float = 1.0) -> Field:
    """The vector field x' = −speed · ∇[E + λ‖∇E‖²] (λ = `strength`)."""
    target = regularized_loss(loss, strength) if strength else loss

    def field(x: Tensor) -> Tensor:
        return -speed * gradient(target, x)

    return field


def plain_flow(loss: Loss, beta: float) -> Field:
    """x' = −∇E(x)/(1 − β)."""
    return modified_flow(loss, 0.0, 1 / (1 - beta))


def igr_flow(loss: Loss, h: float) -> Field:
    """GD's modified flow x' = −∇[E + (h/4)‖∇E‖²]."""
    return modified_flow(loss, igr_m_strength(h, 0.0))


def igr_m_flow(loss: Loss, h: float, beta: float) -> Field:
    """Heavy ball's modified flow x' = −(1/(1 − β))∇[E + (1 + β)h/(4(1 − β)²)‖∇E‖²]."""
    return modified_flow(loss, igr_m_strength(h, beta), 1 / (1 - beta))


def heavy_ball_iterates(
    loss: Loss,
    x0: Tensor,
    h: float,
    beta: float,
    steps: int,
    record: Sequence[int] | None = None,
    start: Start = "rest",
) -> Tensor:
    """Heavy-ball iterates x_k for k in `record` (default 0, 1, …, steps), as rows of a (len, d) tensor,
    started at rest (x_{−1} = x_0) or on the slow manifold (x_{−1} = x_0 + h∇E(x_0)/(1 − β))."""
    _check_start(start)
    wanted = set(range(steps + 1) if record is None else record)
    if any(not 0 <= k <= steps for k in wanted):
        raise ValueError(f"record = {sorted(wanted)} must lie in [0, steps = {steps}]")
    current = x0.detach().to(torch.float64).clone()
    previous = current.clone()  # at rest: x_{−1} = x_0
    if start == "slow_manifold":
        previous += h * gradient(loss, current) / (1 - beta)  # x_{−1} = x_0 + h∇E(x_0)/(1 − β)
    rows = {}
    for k in range(steps + 1):
        if k in wanted:
            rows[k] = current.clone()
        if k == steps:
            break
        step = -h * gradient(loss, current) + beta * (current - previous)  # −h∇E(x_k) + β(x_k − x_{k−1})
        previous, current = current, current + step
    return torch.stack([rows[k] for k in sorted(wanted)])


def heavy_ball_paths(
    batched_gradient: Callable[[Tensor], Tensor], start: Tensor, h: Tensor, beta: Tensor, steps: int
) -> Tensor:
    """Heavy ball for a batch of runs at once, every iterate kept: start (B, d), h and β of shape (B, 1),
    `batched_gradient` maps (B, d) to the rows' ∇E → (steps + 1, B, d).

    The same recursion as :func:`heavy_ball_iterates` with a closed-form gradient instead of autograd,
    for many runs of a small problem; the two agree to rounding (they add the terms in another order).
    """
    path = torch.empty(steps + 1, *start.shape, dtype=start.dtype)
    path[0] = previous = start
    path[1] = current = start - h * batched_gradient(start)  # x_1 = x_0 − h∇E(x_0)
    for k in range(2, steps + 1):
        # x_{k+1} = x_k − h∇E(x_k) + β(x_k − x_{k−1})
        current, previous = current - h * batched_gradient(current) + beta * (current - previous), current
        path[k] = current
    return path


def integrate_flow(
    field: Field,
    x0: Tensor,
    times: Sequence[float],
    rtol: float = 1e-11,
    atol: float = 1e-12,
    method: str = "DOP853",
) -> Tensor:
    """The flow x̃(t) of x' = field(x), x̃(0) = x0, at increasing `times` ≥ 0, as rows of a (len, d) tensor.

    Adaptive Runge–Kutta (scipy's `solve_ivp`, DOP853 by default, dense output between steps). With the
    default tolerances, tightening them 100× moves the `heavy-ball-flow` flows by ~1e-13, far below the
    distances measured there.
    """
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0 or times[0] < 0 or np.any(np.diff(times) < 0):
        raise ValueError(f"times must be a non-empty increasing sequence ≥ 0, got {times}")
    start = x0.detach().to(torch.float64).cpu().numpy()
    if times[-1] == 0:
        return torch.from_numpy(np.tile(start, (times.size, 1)))

    def velocity(_t: float, x: np.ndarray) -> np.ndarray:
        return field(torch.from_numpy(x)).detach().numpy()

    solution = solve_ivp(velocity, (0.0, times[-1]), start, method=method, t_eval=times, rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"integrate_flow: {method} failed: {solution.message}")
    return torch.from_numpy(solution.y.T.copy())


@dataclass(frozen=True)
class FlowDistance:
    """‖x_k − x̃(kh)‖ at the recorded steps k (the last one is the horizon T = k h)."""

    steps: Tensor
    distances: Tensor

    @property
    def max(self) -> float:
        """max_k ‖x_k − x̃(kh)‖ over the recorded steps."""
        return self.distances.max().item()

    @property
    def horizon(self) -> float:
        """‖x_K − x̃(T)‖ at the last recorded step K = T/h."""
        return self.distances[-1].item()


@dataclass(frozen=True)
class StepSizeDistances:
    """Heavy ball at one step size h against its flows, over the horizon T = Kh."""

    h: float
    steps: int  # K
    igr_m_horizon: float  # ‖x_K − x̃(T)‖ to the IGR-M flow
    plain_horizon: float  # ‖x_K − x̃(T)‖ to the plain flow
    igr_m_max: float  # max over k ≤ K of ‖x_k − x̃(kh)‖, IGR-M flow
    plain_max: float  # the same for the plain flow
    igr_m_lagged: float  # ‖x_K − x̃(T − τ)‖ to the IGR-M flow, τ the start's time lag (0 on the manifold)
    lag_term: float  # τ‖x̃'(T)‖, the lag's predicted share of igr_m_horizon (velocity taken at x_K)
    start: Start  # heavy ball's start: at rest or on the slow manifold


def order_study(
    loss: Loss,
    start: Tensor,
    step_sizes: Sequence[float],
    horizon: float,
    beta: float,
    rtol: float = 1e-11,
    atol: float = 1e-12,
    heavy_ball_starts: Sequence[Start] = ("rest",),
) -> list[StepSizeDistances]:
    """Heavy ball (h, β) from `start` for K = round(T/h) steps against the IGR-M and plain flows, one row
    per heavy-ball start (at rest, on the slow manifold) and h in `step_sizes`; the flows are integrated
    once per h, with tolerances `rtol` and `atol`."""
    rows = []
    for h in step_sizes:
        steps = round(horizon / h)
        times = [k * h for k in range(steps + 1)]
        igr_m, plain = igr_m_flow(loss, h, beta), plain_flow(loss, beta)
        igr_m_path = integrate_flow(igr_m, start, times, rtol, atol)  # x̃(kh), k = 0..K
        plain_path = integrate_flow(plain, start, times, rtol, atol)
        for heavy_ball_start in heavy_ball_starts:
            iterates = heavy_ball_iterates(loss, start, h, beta, steps, start=heavy_ball_start)
            to_igr_m = FlowDistance(torch.arange(steps + 1), (iterates - igr_m_path).norm(dim=1))
            to_plain = FlowDistance(torch.arange(steps + 1), (iterates - plain_path).norm(dim=1))
            lag = start_lag(h, beta, heavy_ball_start)  # τ = hβ/(1 − β) at rest, 0 on the slow manifold
            lagged = integrate_flow(igr_m, start, [steps * h - lag], rtol, atol)[0]
            rows.append(
                StepSizeDistances(
                    h=h,
                    steps=steps,
                    igr_m_horizon=to_igr_m.horizon,
                    plain_horizon=to_plain.horizon,
                    igr_m_max=to_igr_m.max,
                    plain_max=to_plain.max,
                    igr_m_lagged=(iterates[-1] - lagged).norm().item(),
                    lag_term=lag * igr_m(iterates[-1]).norm().item(),
                    start=heavy_ball_start,
                )
            )
    return rows


def fitted_order(step_sizes: Sequence[float], distances: Sequence[float]) -> float:
    """The order p of distance ∝ h^p: the least-squares slope of log(distance) against log(h)."""
    return float(np.polyfit(np.log(step_sizes), np.log(distances), 1)[0])


def solver_error(
    loss: Loss, start: Tensor, h: float, horizon: float, beta: float, rtol: float = 1e-11, atol: float = 1e-12
) -> float:
    """‖x̃(T) − x̃_tight(T)‖ for the IGR-M flow, the second with tolerances 100× tighter: the share of the
    ODE solver in a distance measured with `rtol` and `atol`."""
    field = igr_m_flow(loss, h, beta)
    default = integrate_flow(field, start, [horizon], rtol, atol)
    tight = integrate_flow(field, start, [horizon], rtol / 100, atol / 100)
    return (default - tight).norm().item()
