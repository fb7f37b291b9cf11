"""The update rule of an optimizer's parameter group, read from the optimizer itself, as x ← x − η d.

SGD-type rules (``g`` the parameter's gradient, plus λx with weight decay λ, negated with ``maximize``;
m the optimizer's own buffer ``state["momentum_buffer"]``):

- m ← β m + (1 − τ) g,  d = m          (heavy ball: τ = 0; EMA momentum: τ = β; SGD: β = 0, d = g)
- m ← β m + (1 − τ) g,  d = g + β m    (Nesterov)

``torch.optim.SGD`` sets m ← g at its first step (no dampening; the buffer is absent before it), ours
start from m = 0 (:mod:`momentumlab.optim.momentum`). For Adam and AdamW there is no search direction
on the gradient's scale (d = m̂/(√v̂ + ε) is normalized per coordinate), so the search-direction noise
and the effective step are not defined; their buffer is the first moment ``state["exp_avg"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim import Optimizer

from momentumlab.optim.momentum import GD, EMAMomentum, HeavyBall, Nesterov
from momentumlab.probes.noise import Method

RuleName = Literal["sgd", "heavy_ball", "ema_momentum", "nesterov", "dampened", "adam"]


@dataclass(frozen=True)
class UpdateRule:
    """One parameter group's rule and hyperparameters (η, β, τ, λ) as the optimizer holds them."""

    name: RuleName
    lr: float  # η
    momentum: float = 0.0  # β
    dampening: float = 0.0  # τ
    weight_decay: float = 0.0  # λ (coupled: added to the gradient; AdamW's decoupled one is not)
    maximize: bool = False
    first_buffer_is_gradient: bool = False  # torch.optim.SGD: m_0 = g_0; ours: m_{−1} = 0
    buffer_key: str | None = "momentum_buffer"

    @property
    def has_direction(self) -> bool:
        """Whether d is defined on the gradient's scale (every rule but Adam's)."""
        return self.name != "adam"

    def gradient(self, gradient: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        """g as the rule uses it: ±(∇ + λx)."""
        if self.weight_decay:
            gradient = gradient + self.weight_decay * point  # g + λx
        return -gradient if self.maximize else gradient

    def direction(
        self, gradient: torch.Tensor, buffer: torch.Tensor | None, point: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(d_t, m_t) from the raw gradient ∇ at x_t = `point` and the buffer m_{t−1} before the step
        (None when the optimizer has not created it yet); m_t is None for plain SGD."""
        if not self.has_direction:
            raise ValueError(f"rule {self.name!r}: no search direction on the gradient's scale")
        g = self.gradient(gradient, point)
        if self.name == "sgd":
            return g, None  # d = g
        if buffer is None and self.first_buffer_is_gradient:
            new_buffer = g.clone()  # torch.optim.SGD's first step: m_0 = g_0
        else:
            previous = torch.zeros_like(g) if buffer is None else buffer
            new_buffer = self.momentum * previous + (1 - self.dampening) * g  # m_t = βm_{t−1} + (1−τ)g_t
        if self.name == "nesterov":
            return g + self.momentum * new_buffer, new_buffer  # d = g + βm_t
        return new_buffer, new_buffer  # d = m_t

    @property
    def effective_step(self) -> float | None:
        """η_eff: the step d/g tends to under a constant gradient (m → (1−τ)g/(1−β)):
        η(1−τ)/(1−β), Nesterov η(1 + β(1−τ)/(1−β)); None for Adam."""
        if not self.has_direction:
            return None
        steady = (1 - self.dampening) / (1 - self.momentum) if self.momentum else 1.0
        return self.lr * (1 + self.momentum * steady if self.name == "nesterov" else steady)

    @property
    def smoothing_method(self) -> Method | None:
        """The rule of SPEC §3 whose δ formula applies, or None (Nesterov, other dampening, Adam)."""
        if self.name == "sgd":
            return "sgd"
        if self.name == "heavy_ball":
            return "shb"
        if self.name == "ema_momentum":
            return "nshb"
        return None


def update_rules(optimizer: Optimizer) -> list[UpdateRule]:
    """The rule of each of `optimizer`'s parameter groups; a clear error for optimizers not covered."""
    return [_group_rule(optimizer, group) for group in optimizer.param_groups]


def _group_rule(optimizer: Optimizer, group: dict) -> UpdateRule:
    lr = float(group["lr"])
    if isinstance(optimizer, GD):
        return UpdateRule("sgd", lr, buffer_key=None)
    if isinstance(optimizer, EMAMomentum):
        β = group["momentum"]
        return UpdateRule("ema_momentum", lr, β, dampening=β)
    if isinstance(optimizer, Nesterov):
        return UpdateRule("nesterov", lr, group["momentum"])
    if isinstance(optimizer, HeavyBall):
        return UpdateRule("heavy_ball", lr, group["momentum"])
    if isinstance(optimizer, torch.optim.SGD):
        β, τ = float(group["momentum"]), float(group["dampening"])
        common = {"weight_decay": float(group["weight_decay"]), "maximize": bool(group["maximize"])}
        if β == 0:
            return UpdateRule("sgd", lr, buffer_key=None, **common)
        name = "nesterov" if group["nesterov"] else "heavy_ball" if τ == 0 else "dampened"
        if name == "dampened" and τ == β:
            name = "ema_momentum"  # m ← βm + (1−β)g, apart from its undamped first step
        return UpdateRule(name, lr, β, τ, first_buffer_is_gradient=True, **common)
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return UpdateRule("adam", lr, float(group["betas"][0]), buffer_key="exp_avg")
    raise ValueError(
        f"optimizer {type(optimizer).__name__}: allowed are momentumlab.optim's GD, EMAMomentum, HeavyBall, "
        "Nesterov, torch.optim.SGD, Adam and AdamW"
    )
