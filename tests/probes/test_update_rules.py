"""Update rules read from optimizers: directions hand-computed for every rule, and x_{t+1} = x_t − η d_t
against the optimizer's actual step."""

from __future__ import annotations

import pytest
import torch

from momentumlab.optim import GD, EMAMomentum, HeavyBall, Nesterov
from momentumlab.probes.update_rules import UpdateRule, update_rules

GRADIENTS = [1.0, 2.0, -1.0]  # g_0, g_1, g_2 at a scalar parameter

# d_t by hand for g = (1, 2, −1):
HAND = {
    # heavy ball β=0.9: m = 1, 2.9, 1.61; d = m
    "heavy_ball": (lambda p: HeavyBall(p, lr=0.1, momentum=0.9), [1.0, 2.9, 1.61]),
    "torch_sgd_momentum": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), [1.0, 2.9, 1.61]),
    # EMA β=0.9 from m = 0: m = 0.1, 0.09 + 0.2 = 0.29, 0.261 − 0.1 = 0.161
    "ema_momentum": (lambda p: EMAMomentum(p, lr=0.1, momentum=0.9), [0.1, 0.29, 0.161]),
    # torch SGD dampening 0.5: m_0 = g_0 = 1 (undamped), 0.9 + 0.5·2 = 1.9, 1.71 − 0.5 = 1.21
    "torch_sgd_dampened": (
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5),
        [1.0, 1.9, 1.21],
    ),
    # torch SGD dampening = β = 0.9: m_0 = 1, 0.9 + 0.2 = 1.1, 0.99 − 0.1 = 0.89
    "torch_sgd_ema": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.9), [1.0, 1.1, 0.89]),
    # Nesterov β=0.9: m = 1, 2.9, 1.61; d = g + βm = 1.9, 4.61, 0.449
    "nesterov": (lambda p: Nesterov(p, lr=0.1, momentum=0.9), [1.9, 4.61, 0.449]),
    "torch_nesterov": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), [1.9, 4.61, 0.449]),
    "gd": (lambda p: GD(p, lr=0.1), [1.0, 2.0, -1.0]),
    "torch_sgd": (lambda p: torch.optim.SGD(p, lr=0.1), [1.0, 2.0, -1.0]),
    # maximize: g → −g
    "torch_sgd_maximize": (
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, maximize=True),
        [-1.0, -2.9, -1.61],
    ),
}


def _replay(make, gradients) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
    """Steps with given gradients; returns the rule's d_t (from g_t, m_{t−1}, x_t read before each step),
    the actual (x_t − x_{t+1})/η, and the rules."""
    parameter = torch.nn.Parameter(torch.tensor([0.3], dtype=torch.float64))
    optimizer = make([parameter])
    (rule,) = update_rules(optimizer)
    directions, actual = [], []
    for g in gradients:
        parameter.grad = torch.tensor([g], dtype=torch.float64)
        buffer = optimizer.state.get(parameter, {}).get(rule.buffer_key) if rule.buffer_key else None
        before = parameter.detach().clone()
        d, m = rule.direction(parameter.grad, None if buffer is None else buffer.clone(), before)
        optimizer.step()
        directions.append(d)
        actual.append((before - parameter.detach()) / rule.lr)
        if m is not None:
            torch.testing.assert_close(optimizer.state[parameter][rule.buffer_key], m, rtol=1e-15, atol=1e-15)
    return directions, actual, rule


@pytest.mark.parametrize("case", list(HAND))
def test_direction_equals_hand_computation_and_the_actual_step(case):
    make, hand = HAND[case]
    directions, actual, _ = _replay(make, GRADIENTS)
    for d, step, expected in zip(directions, actual, hand):
        assert d.item() == pytest.approx(expected, rel=1e-12)
        assert step.item() == pytest.approx(expected, rel=1e-12)  # x_{t+1} = x_t − η d_t


def test_torch_refuses_nesterov_with_dampening():
    with pytest.raises(ValueError, match="[Nn]esterov"):
        torch.optim.SGD(
            [torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, dampening=0.5, nesterov=True
        )


@pytest.mark.parametrize("nesterov", [False, True])
def test_weight_decay_enters_the_gradient(nesterov):
    """torch SGD with λ = 0.2: g = ∇ + λx, and x_{t+1} = x_t − η d_t with d from that g."""
    make = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, weight_decay=0.2, nesterov=nesterov)
    directions, actual, rule = _replay(make, GRADIENTS)
    assert rule.weight_decay == 0.2
    for d, step in zip(directions, actual):
        assert d.item() == pytest.approx(step.item(), rel=1e-12)
    assert directions[0].item() == pytest.approx((1.0 + 0.2 * 0.3) * (1.8 if nesterov else 1.0), rel=1e-12)


@pytest.mark.parametrize(
    "make, name, effective, method",
    [
        (lambda p: GD(p, lr=0.1), "sgd", 0.1, "sgd"),
        (lambda p: HeavyBall(p, lr=0.1, momentum=0.9), "heavy_ball", 1.0, "shb"),
        (lambda p: EMAMomentum(p, lr=0.1, momentum=0.9), "ema_momentum", 0.1, "nshb"),
        (lambda p: Nesterov(p, lr=0.1, momentum=0.9), "nesterov", 1.0, None),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.25), "dampened", 0.15, None),
        (lambda p: torch.optim.Adam(p, lr=0.1), "adam", None, None),
        (lambda p: torch.optim.AdamW(p, lr=0.1), "adam", None, None),
    ],
)
def test_rule_names_effective_steps_and_smoothing_methods(make, name, effective, method):
    """η_eff = η(1−τ)/(1−β) (Nesterov η(1 + β(1−τ)/(1−β))): the step under a constant gradient, checked by
    running 400 steps of a constant gradient; undefined for Adam."""
    parameter = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = make([parameter])
    (rule,) = update_rules(optimizer)
    assert (rule.name, rule.smoothing_method) == (name, method)
    if effective is None:
        assert rule.effective_step is None and not rule.has_direction
        with pytest.raises(ValueError, match="no search direction"):
            rule.direction(torch.ones(1), None, torch.zeros(1))
        return
    assert rule.effective_step == pytest.approx(effective, rel=1e-12)
    for _ in range(400):
        parameter.grad = torch.ones(1, dtype=torch.float64)
        before = parameter.detach().clone()
        optimizer.step()
    assert (before - parameter.detach()).item() == pytest.approx(effective, rel=1e-9)


def test_unknown_optimizer_is_refused_by_name():
    with pytest.raises(ValueError, match="RMSprop"):
        update_rules(torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))]))


def test_groups_keep_their_own_rules():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD(
        [{"params": [a]}, {"params": [b], "lr": 0.5, "momentum": 0.0}], lr=0.1, momentum=0.9
    )
    first, second = update_rules(optimizer)
    assert first == UpdateRule("heavy_ball", 0.1, 0.9, first_buffer_is_gradient=True)
    assert second.name == "sgd" and second.lr == 0.5
