"""GD, the paper's EMA momentum, heavy ball and Nesterov as `torch.optim.Optimizer` subclasses.

Parameterizations (x = parameters, ∇ = the gradient in `p.grad`):

- :class:`GD`:           x ← x − η∇
- :class:`EMAMomentum`:  g ← γg + (1−γ)∇;  x ← x − ηg;  g starts at 0  (Jelassi & Li, GD+M)
- :class:`HeavyBall`:    b ← μb + ∇;  x ← x − hb;  b starts at 0  (PyTorch's `SGD(momentum=μ)`)
- :class:`Nesterov`:     b ← μb + ∇;  x ← x − h(∇ + μb)  (PyTorch's `SGD(momentum=μ, nesterov=True)`)

Heavy ball in PyTorch's form is Polyak's x_{k+1} = x_k − h∇E(x_k) + μ(x_k − x_{k−1}) with
x_1 = x_0 − h∇E(x_0). Since g/(1−γ) obeys b's recursion, EMA momentum (η, γ) and heavy ball
(h = η(1−γ), μ = γ) produce the same iterates from zero buffers, with b = g/(1−γ) throughout
(:func:`ema_to_heavy_ball`, :func:`heavy_ball_to_ema`). `torch.optim.SGD(momentum=γ, dampening=γ)`
is *not* EMA momentum: it sets its buffer to the full first gradient, so its first step is η∇,
not η(1−γ)∇, and every later iterate is shifted by that difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch.optim import Optimizer

from momentumlab.config import StrictModel

OptimizerName = Literal["gd", "ema_momentum", "heavy_ball", "nesterov"]


class OptimizerConfig(StrictModel):
    """Which update rule, with the learning rate and momentum in that rule's own parameterization.

    `ema_momentum` is the paper's GD+M (g ← γg + (1−γ)∇L; W ← W − ηg); `heavy_ball` and `nesterov`
    are PyTorch's forms (b ← μb + ∇L). See :mod:`momentumlab.optim.momentum` for the conversion.
    """

    name: OptimizerName = "gd"
    lr: float = Field(0.5, gt=0, description="η (or h for heavy ball)")
    momentum: float = Field(0.0, ge=0, lt=1, description="γ / β / μ depending on the rule")

    @model_validator(mode="after")
    def _gd_has_no_momentum(self) -> OptimizerConfig:
        if self.name == "gd" and self.momentum != 0:
            raise ValueError(
                f"momentum = {self.momentum} is not allowed with name = 'gd'; "
                "use 'ema_momentum', 'heavy_ball' or 'nesterov'"
            )
        return self


def ema_to_heavy_ball(lr: float, momentum: float) -> tuple[float, float]:
    """(η, γ) of EMA momentum → (h, μ) of heavy ball with identical iterates: h = η(1−γ), μ = γ."""
    return lr * (1 - momentum), momentum


def heavy_ball_to_ema(lr: float, momentum: float) -> tuple[float, float]:
    """(h, μ) of heavy ball → (η, γ) of EMA momentum: η = h/(1−μ), γ = μ."""
    return lr / (1 - momentum), momentum


class _MomentumOptimizer(Optimizer):
    """Shared bookkeeping: hyperparameter checks and a zero-initialized `momentum_buffer` per parameter."""

    def __init__(self, params: Iterable, lr: float, momentum: float):
        if not lr > 0:
            raise ValueError(f"lr = {lr} must be > 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum = {momentum} must be in [0, 1)")
        super().__init__(params, {"lr": lr, "momentum": momentum})

    def _buffer(self, parameter: torch.Tensor) -> torch.Tensor:
        state = self.state[parameter]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(parameter)
        return state["momentum_buffer"]

    def _update(self, parameter: torch.Tensor, lr: float, momentum: float) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    self._update(parameter, group["lr"], group["momentum"])
        return loss


class GD(_MomentumOptimizer):
    """Plain (stochastic) gradient descent: x ← x − η∇."""

    def __init__(self, params: Iterable, lr: float):
        super().__init__(params, lr, 0.0)

    def _update(self, parameter: torch.Tensor, lr: float, momentum: float) -> None:
        parameter.add_(parameter.grad, alpha=-lr)


class EMAMomentum(_MomentumOptimizer):
    """Jelassi & Li's GD+M: g ← γg + (1−γ)∇, x ← x − ηg, with g starting at 0."""

    def _update(self, parameter: torch.Tensor, lr: float, momentum: float) -> None:
        buffer = self._buffer(parameter)
        buffer.mul_(momentum).add_(parameter.grad, alpha=1 - momentum)  # g ← γg + (1−γ)∇
        parameter.add_(buffer, alpha=-lr)


class HeavyBall(_MomentumOptimizer):
    """Polyak heavy ball in PyTorch's form: b ← μb + ∇, x ← x − hb."""

    def _update(self, parameter: torch.Tensor, lr: float, momentum: float) -> None:
        buffer = self._buffer(parameter)
        buffer.mul_(momentum).add_(parameter.grad)  # b ← μb + ∇
        parameter.add_(buffer, alpha=-lr)


class Nesterov(_MomentumOptimizer):
    """Nesterov momentum in PyTorch's form: b ← μb + ∇, x ← x − h(∇ + μb)."""

    def _update(self, parameter: torch.Tensor, lr: float, momentum: float) -> None:
        buffer = self._buffer(parameter)
        buffer.mul_(momentum).add_(parameter.grad)
        parameter.add_(parameter.grad, alpha=-lr).add_(buffer, alpha=-lr * momentum)


def build_optimizer(config: OptimizerConfig, params: Iterable) -> Optimizer:
    """The optimizer a config names."""
    if config.name == "gd":
        return GD(params, lr=config.lr)
    rule = {"ema_momentum": EMAMomentum, "heavy_ball": HeavyBall, "nesterov": Nesterov}[config.name]
    return rule(params, lr=config.lr, momentum=config.momentum)
