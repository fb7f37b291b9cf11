"""Update rules of momentumlab.optim against hand-computed steps, plain loops and torch.optim.SGD."""

from __future__ import annotations

import math

import pytest
import torch

from momentumlab.optim import (
    GD,
    EMAMomentum,
    HeavyBall,
    Nesterov,
    build_optimizer,
    ema_to_heavy_ball,
    heavy_ball_to_ema,
)
from momentumlab.optim.momentum import OptimizerConfig

TIGHT = {"rtol": 1e-12, "atol": 1e-12}

# Fixed gradient sequence for the hand-computed checks (scalar parameter, x0 = 1).
X0 = 1.0
GRADIENTS = [0.5, 0.2, -0.3]
LR = 0.1
GAMMA = 0.9


def _f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _run_fixed_gradients(optimizer_type, **kwargs) -> tuple[list[float], torch.nn.Parameter, object]:
    """Run 3 steps with p.grad set to GRADIENTS[k]; return the iterates x1, x2, x3."""
    parameter = torch.nn.Parameter(torch.tensor([X0], dtype=torch.float64))
    optimizer = optimizer_type([parameter], **kwargs)
    iterates = []
    for g in GRADIENTS:
        parameter.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        iterates.append(parameter.item())
    return iterates, parameter, optimizer


def _random_quadratic(d: int = 5, seed: int = 0):
    """E(x) = ½ xᵀAx − bᵀx with A symmetric positive definite; returns (A, b, x0)."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(d, d, generator=generator, dtype=torch.float64)
    a = q @ q.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, generator=generator, dtype=torch.float64)
    x0 = torch.randn(d, generator=generator, dtype=torch.float64)
    return a, b, x0


def _quadratic_gradient(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return a @ x - b


def _trajectory(make_optimizer, a, b, x0, steps: int) -> list[torch.Tensor]:
    """Iterates of an optimizer on E via autograd (the gradient is recomputed at every x_k)."""
    parameter = torch.nn.Parameter(x0.clone())
    optimizer = make_optimizer([parameter])
    iterates = [parameter.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * parameter @ a @ parameter - b @ parameter
        loss.backward()
        optimizer.step()
        iterates.append(parameter.detach().clone())
    return iterates


# ---------------------------------------------------------------------------------------------
# First three steps, written out by hand (lr = 0.1, γ = μ = 0.9, g = 0.5, 0.2, −0.3, x0 = 1).
# ---------------------------------------------------------------------------------------------


def test_gd_first_three_steps_by_hand():
    """GD: x1 = 1 − 0.1·0.5 = 0.95, x2 = 0.95 − 0.02 = 0.93, x3 = 0.93 + 0.03 = 0.96."""
    iterates, _, _ = _run_fixed_gradients(GD, lr=LR)
    # plain-Python recurrence
    x, expected = X0, []
    for g in GRADIENTS:
        x = x - LR * g
        expected.append(x)
    assert expected == pytest.approx([0.95, 0.93, 0.96], abs=1e-15)
    torch.testing.assert_close(_f64(iterates), _f64(expected), **TIGHT)


def test_ema_momentum_first_three_steps_by_hand():
    """EMA: m1 = 0.05, x1 = 0.995; m2 = 0.065, x2 = 0.9885; m3 = 0.0285, x3 = 0.98565."""
    iterates, parameter, optimizer = _run_fixed_gradients(EMAMomentum, lr=LR, momentum=GAMMA)
    x, m, expected = X0, 0.0, []
    for g in GRADIENTS:
        m = GAMMA * m + (1 - GAMMA) * g
        x = x - LR * m
        expected.append(x)
    assert expected == pytest.approx([0.995, 0.9885, 0.98565], abs=1e-14)
    torch.testing.assert_close(_f64(iterates), _f64(expected), **TIGHT)
    # buffer after three steps is the EMA m3 = 0.0285
    torch.testing.assert_close(
        optimizer.state[parameter]["momentum_buffer"], torch.tensor([0.0285], dtype=torch.float64), **TIGHT
    )


def test_heavy_ball_first_three_steps_by_hand():
    """Heavy ball: b = 0.5, 0.65, 0.285; x = 0.95, 0.885, 0.8565."""
    iterates, parameter, optimizer = _run_fixed_gradients(HeavyBall, lr=LR, momentum=GAMMA)
    x, buf, expected = X0, 0.0, []
    for g in GRADIENTS:
        buf = GAMMA * buf + g
        x = x - LR * buf
        expected.append(x)
    assert expected == pytest.approx([0.95, 0.885, 0.8565], abs=1e-14)
    torch.testing.assert_close(_f64(iterates), _f64(expected), **TIGHT)
    torch.testing.assert_close(
        optimizer.state[parameter]["momentum_buffer"], torch.tensor([0.285], dtype=torch.float64), **TIGHT
    )


def test_nesterov_first_three_steps_by_hand():
    """Nesterov: x1 = 1 − 0.1(0.5 + 0.45) = 0.905, x2 = 0.905 − 0.1(0.2 + 0.585) = 0.8265,
    x3 = 0.8265 − 0.1(−0.3 + 0.2565) = 0.83085."""
    iterates, _, _ = _run_fixed_gradients(Nesterov, lr=LR, momentum=GAMMA)
    x, buf, expected = X0, 0.0, []
    for g in GRADIENTS:
        buf = GAMMA * buf + g
        x = x - LR * (g + GAMMA * buf)
        expected.append(x)
    assert expected == pytest.approx([0.905, 0.8265, 0.83085], abs=1e-14)
    torch.testing.assert_close(_f64(iterates), _f64(expected), **TIGHT)


def test_ema_buffer_starts_at_zero():
    """After one step the EMA buffer is γ·0 + (1−γ)g = (1−γ)g, and x1 = x0 − η(1−γ)g (vector case)."""
    x0 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([0.4, -1.5, 2.0], dtype=torch.float64)
    eta, gamma = 0.3, 0.8
    parameter = torch.nn.Parameter(x0.clone())
    optimizer = EMAMomentum([parameter], lr=eta, momentum=gamma)
    parameter.grad = g.clone()
    optimizer.step()
    expected_buffer = torch.tensor([0.2 * 0.4, 0.2 * -1.5, 0.2 * 2.0], dtype=torch.float64)
    torch.testing.assert_close(optimizer.state[parameter]["momentum_buffer"], expected_buffer, **TIGHT)
    expected_x = torch.tensor([1.0 - 0.3 * 0.08, -2.0 - 0.3 * -0.3, 3.0 - 0.3 * 0.4], dtype=torch.float64)
    torch.testing.assert_close(parameter.detach(), expected_x, **TIGHT)


def test_heavy_ball_buffer_starts_at_zero():
    """Heavy ball's first buffer is μ·0 + g = g."""
    g = torch.tensor([0.4, -1.5], dtype=torch.float64)
    parameter = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = HeavyBall([parameter], lr=0.1, momentum=0.7)
    parameter.grad = g.clone()
    optimizer.step()
    torch.testing.assert_close(optimizer.state[parameter]["momentum_buffer"], g, **TIGHT)
    torch.testing.assert_close(parameter.detach(), -0.1 * g, **TIGHT)


# ---------------------------------------------------------------------------------------------
# Equivalences on a random quadratic.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta,gamma", [(0.3, 0.9), (0.5, 0.5), (0.2, 0.99)])
def test_ema_equals_heavy_ball_and_torch_sgd(eta, gamma):
    """EMA(η, γ) = HeavyBall(η(1−γ), γ) = torch SGD(lr=η(1−γ), momentum=γ) over 20 steps,
    and the buffers satisfy b = g/(1−γ) at every step."""
    a, b, x0 = _random_quadratic()
    h, mu = ema_to_heavy_ball(eta, gamma)
    assert h == pytest.approx(eta * (1 - gamma), rel=1e-15)
    assert mu == gamma

    ema_param = torch.nn.Parameter(x0.clone())
    hb_param = torch.nn.Parameter(x0.clone())
    sgd_param = torch.nn.Parameter(x0.clone())
    ema = EMAMomentum([ema_param], lr=eta, momentum=gamma)
    hb = HeavyBall([hb_param], lr=h, momentum=mu)
    sgd = torch.optim.SGD([sgd_param], lr=h, momentum=mu)
    for _ in range(20):
        for parameter in (ema_param, hb_param, sgd_param):
            parameter.grad = _quadratic_gradient(a, b, parameter.detach())
        ema.step()
        hb.step()
        sgd.step()
        torch.testing.assert_close(ema_param.detach(), hb_param.detach(), rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(sgd_param.detach(), hb_param.detach(), rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(
            ema.state[ema_param]["momentum_buffer"] / (1 - gamma),
            hb.state[hb_param]["momentum_buffer"],
            rtol=1e-10,
            atol=1e-10,
        )
    # the trajectory actually moved (the comparison is not between constants)
    assert (ema_param.detach() - x0).norm() > 1e-2


def test_heavy_ball_to_ema_inverts_ema_to_heavy_ball():
    """Round trips (η, γ) → (h, μ) → (η, γ) and back; explicit value η=0.5, γ=0.99 → h=0.005."""
    h, mu = ema_to_heavy_ball(0.5, 0.99)
    assert h == pytest.approx(0.005, rel=1e-12)
    assert mu == 0.99
    eta, gamma = heavy_ball_to_ema(0.005, 0.99)
    assert eta == pytest.approx(0.5, rel=1e-12)
    assert gamma == 0.99
    for eta, gamma in [(0.1, 0.0), (0.5, 0.9), (2.0, 0.3), (1e-3, 0.999)]:
        assert heavy_ball_to_ema(*ema_to_heavy_ball(eta, gamma)) == pytest.approx((eta, gamma), rel=1e-12)
        assert ema_to_heavy_ball(*heavy_ball_to_ema(eta, gamma)) == pytest.approx((eta, gamma), rel=1e-12)


def test_ema_differs_from_torch_sgd_with_dampening():
    """torch SGD(lr=η, momentum=γ, dampening=γ) takes a first step of η∇ (full gradient in the
    buffer); EMA momentum takes η(1−γ)∇. The steps differ by the factor 1/(1−γ), and so do later iterates."""
    eta, gamma = 0.2, 0.9
    a, b, x0 = _random_quadratic(seed=1)
    g0 = _quadratic_gradient(a, b, x0)

    ema_param = torch.nn.Parameter(x0.clone())
    torch_param = torch.nn.Parameter(x0.clone())
    ema = EMAMomentum([ema_param], lr=eta, momentum=gamma)
    sgd = torch.optim.SGD([torch_param], lr=eta, momentum=gamma, dampening=gamma)
    ema_param.grad = g0.clone()
    torch_param.grad = g0.clone()
    ema.step()
    sgd.step()

    ema_step = x0 - ema_param.detach()
    torch_step = x0 - torch_param.detach()
    torch.testing.assert_close(ema_step, eta * (1 - gamma) * g0, **TIGHT)
    torch.testing.assert_close(torch_step, eta * g0, **TIGHT)
    torch.testing.assert_close(torch_step, ema_step / (1 - gamma), rtol=1e-10, atol=1e-12)
    assert (torch_step - ema_step).norm() > 0.5 * torch_step.norm()

    for _ in range(5):
        ema_param.grad = _quadratic_gradient(a, b, ema_param.detach())
        torch_param.grad = _quadratic_gradient(a, b, torch_param.detach())
        ema.step()
        sgd.step()
    assert (ema_param.detach() - torch_param.detach()).norm() > 1e-2


def test_heavy_ball_matches_polyak_form():
    """HeavyBall(h, β) = Polyak's x_{k+1} = x_k − h∇E(x_k) + β(x_k − x_{k−1}), x_1 = x_0 − h∇E(x_0),
    written as a plain loop, for 20 steps."""
    h, beta = 0.05, 0.8
    a, b, x0 = _random_quadratic(seed=2)
    iterates = _trajectory(lambda params: HeavyBall(params, lr=h, momentum=beta), a, b, x0, steps=20)

    polyak = [x0.clone(), x0 - h * _quadratic_gradient(a, b, x0)]
    for _ in range(19):
        x_k, x_prev = polyak[-1], polyak[-2]
        polyak.append(x_k - h * _quadratic_gradient(a, b, x_k) + beta * (x_k - x_prev))
    torch.testing.assert_close(torch.stack(iterates), torch.stack(polyak), rtol=1e-11, atol=1e-11)


def test_nesterov_matches_torch_sgd_nesterov():
    """Nesterov(h, μ) equals torch.optim.SGD(lr=h, momentum=μ, nesterov=True) over 20 steps."""
    a, b, x0 = _random_quadratic(seed=3)
    ours = _trajectory(lambda params: Nesterov(params, lr=0.07, momentum=0.85), a, b, x0, steps=20)
    reference = _trajectory(
        lambda params: torch.optim.SGD(params, lr=0.07, momentum=0.85, nesterov=True), a, b, x0, steps=20
    )
    torch.testing.assert_close(torch.stack(ours), torch.stack(reference), rtol=1e-11, atol=1e-11)
    # Nesterov is not heavy ball with the same (h, μ)
    heavy = _trajectory(lambda params: HeavyBall(params, lr=0.07, momentum=0.85), a, b, x0, steps=20)
    assert (ours[-1] - heavy[-1]).norm() > 1e-3


def test_gd_matches_plain_loop_on_quadratic():
    """GD on the quadratic equals x_{k+1} = x_k − η(Ax_k − b) as a plain loop."""
    a, b, x0 = _random_quadratic(seed=4)
    ours = _trajectory(lambda params: GD(params, lr=0.1), a, b, x0, steps=20)
    x, reference = x0.clone(), [x0.clone()]
    for _ in range(20):
        x = x - 0.1 * _quadratic_gradient(a, b, x)
        reference.append(x)
    torch.testing.assert_close(torch.stack(ours), torch.stack(reference), rtol=1e-12, atol=1e-12)


def test_parameters_without_grad_are_untouched_and_closure_is_returned():
    """A parameter whose grad is None does not move; step(closure) returns the closure's loss."""
    moving = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    frozen = torch.nn.Parameter(torch.tensor([5.0], dtype=torch.float64))
    optimizer = EMAMomentum([moving, frozen], lr=0.5, momentum=0.5)

    def closure():
        optimizer.zero_grad()
        loss = (moving**2).sum()  # ∇ = 2x = (2, 4)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == pytest.approx(5.0)
    # x1 = x0 − 0.5·0.5·(2, 4) = (0.5, 1.0)
    torch.testing.assert_close(moving.detach(), torch.tensor([0.5, 1.0], dtype=torch.float64), **TIGHT)
    torch.testing.assert_close(frozen.detach(), torch.tensor([5.0], dtype=torch.float64), **TIGHT)
    assert frozen not in optimizer.state or "momentum_buffer" not in optimizer.state[frozen]


# ---------------------------------------------------------------------------------------------
# build_optimizer and validation.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,momentum,expected_type",
    [
        ("gd", 0.0, GD),
        ("ema_momentum", 0.9, EMAMomentum),
        ("heavy_ball", 0.8, HeavyBall),
        ("nesterov", 0.7, Nesterov),
    ],
)
def test_build_optimizer_from_config(name, momentum, expected_type):
    """build_optimizer returns exactly the named class with the config's lr and momentum."""
    config = OptimizerConfig(name=name, lr=0.25, momentum=momentum)
    parameter = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = build_optimizer(config, [parameter])
    assert type(optimizer) is expected_type
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["lr"] == 0.25
    assert optimizer.param_groups[0]["momentum"] == momentum
    assert optimizer.param_groups[0]["params"] == [parameter]


def test_build_optimizer_steps_with_config_values():
    """The built EMA optimizer takes the hand-computed first step x1 = x0 − η(1−γ)g = 1 − 0.25·0.1·2."""
    parameter = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = build_optimizer(OptimizerConfig(name="ema_momentum", lr=0.25, momentum=0.9), [parameter])
    parameter.grad = torch.tensor([2.0], dtype=torch.float64)
    optimizer.step()
    assert parameter.item() == pytest.approx(1.0 - 0.25 * 0.1 * 2.0, abs=1e-14)


@pytest.mark.parametrize("lr", [0.0, -0.1, math.nan])
@pytest.mark.parametrize("optimizer_type", [EMAMomentum, HeavyBall, Nesterov])
def test_invalid_lr_raises(optimizer_type, lr):
    parameter = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="lr"):
        optimizer_type([parameter], lr=lr, momentum=0.5)


@pytest.mark.parametrize("lr", [0.0, -1.0])
def test_gd_invalid_lr_raises(lr):
    with pytest.raises(ValueError, match="lr"):
        GD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, math.nan])
@pytest.mark.parametrize("optimizer_type", [EMAMomentum, HeavyBall, Nesterov])
def test_invalid_momentum_raises(optimizer_type, momentum):
    parameter = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="momentum"):
        optimizer_type([parameter], lr=0.1, momentum=momentum)


@pytest.mark.parametrize("optimizer_type", [EMAMomentum, HeavyBall, Nesterov])
def test_boundary_momentum_zero_is_gd(optimizer_type):
    """momentum = 0 is allowed and reduces every rule to GD: x1 = x0 − η g, x2 = x1 − η g2."""
    iterates, _, _ = _run_fixed_gradients(optimizer_type, lr=LR, momentum=0.0)
    torch.testing.assert_close(_f64(iterates), _f64([0.95, 0.93, 0.96]), **TIGHT)
