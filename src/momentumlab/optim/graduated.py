"""Implicit graduated optimization: hyperparameter schedules that shrink the degree of smoothing δ
(Sato & Iiduka, SPEC §3).

Over epochs m = 1, …, M, δ_{m+1} = γ_m δ_m with γ_m = ((M − m)/(M − m + 1))^p, p = 0.9, so that
δ_m = δ_1 ((M − m + 1)/M)^p and the last epoch smooths with δ_1/M^p. δ is the theory's
:func:`~momentumlab.probes.noise.smoothing_degree` of (η, b, β, C², K); one hyperparameter is moved to
follow the target while the others stay at their first-epoch values:

- ``lr``: δ ∝ η for every method, so η_m = η_1 δ_m/δ_1;
- ``batch_size``: C²(1 + c)/b = δ²/η² − cK² with c = 0 (SGD), β̂ (SHB) or 4β² (NSHB); b is rounded to the
  nearest integer, so the achieved δ differs from the target by at most about 1/(2b) relative;
- ``momentum``: NSHB β = √max(0, (δ²/η² − C²/b)/(4(C²/b + K²))); SHB β is the root in [0, 1) of
  β³ − (1+u)β² + (1+2u)β − u = 0 with u = (δ²/η² − C²/b)/(C²/b + K²), i.e. β̂(β) = u (β̂ increases on
  [0, 1), so the root is unique). Below the floor ηC/√b no β reaches the target: β = 0 there, and the
  achieved δ (recorded beside the target) is the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from scipy.optimize import brentq

from momentumlab.config import StrictModel
from momentumlab.probes.noise import METHODS, Method, momentum_factor, smoothing_degree

GRADUATION_POWER = 0.9  # p
Control = Literal["lr", "batch_size", "momentum"]
CONTROLS: tuple[Control, ...] = ("lr", "batch_size", "momentum")


class GraduatedConfig(StrictModel):
    """Implicit graduated optimization (Sato & Iiduka, SPEC §3): one hyperparameter moves each epoch so
    that the smoothing degree follows δ_{m+1} = γ_m δ_m (see :mod:`momentumlab.optim.graduated`)."""

    control: Control
    variance: float = Field(gt=0, description="C², per-sample gradient variance (the noise probe's estimate)")
    gradient_bound: float = Field(gt=0, description="K, bound on the full-gradient norm")
    power: float = Field(0.9, gt=0, description="p in γ_m = ((M − m)/(M − m + 1))^p")


def decay_factor(epoch: int, epochs: int, power: float = GRADUATION_POWER) -> float:
    """γ_m = ((M − m)/(M − m + 1))^p for epoch m in 1..M (γ_M = 0)."""
    if not 1 <= epoch <= epochs:
        raise ValueError(f"epoch={epoch}: must lie in 1..{epochs}")
    return ((epochs - epoch) / (epochs - epoch + 1)) ** power


def smoothing_targets(initial: float, epochs: int, power: float = GRADUATION_POWER) -> list[float]:
    """δ_1, …, δ_M with δ_1 = `initial` and δ_{m+1} = γ_m δ_m."""
    deltas = [initial]
    for epoch in range(1, epochs):
        deltas.append(decay_factor(epoch, epochs, power) * deltas[-1])  # δ_{m+1} = γ_m δ_m
    return deltas


def nshb_momentum(
    delta: float, lr: float, batch_size: float, variance: float, gradient_bound: float
) -> float:
    """β = √max(0, (δ²/η² − C²/b) / (4(C²/b + K²))), NSHB's momentum for a target δ."""
    per_batch = variance / batch_size  # C²/b
    return math.sqrt(max(0.0, (delta**2 / lr**2 - per_batch) / (4 * (per_batch + gradient_bound**2))))


def shb_momentum(delta: float, lr: float, batch_size: float, variance: float, gradient_bound: float) -> float:
    """The root in [0, 1) of β³ − (1+u)β² + (1+2u)β − u = 0, u = (δ²/η² − C²/b)/(C²/b + K²); 0 when u ≤ 0."""
    per_batch = variance / batch_size  # C²/b
    u = (delta**2 / lr**2 - per_batch) / (per_batch + gradient_bound**2)
    if u <= 0:
        return 0.0
    # the cubic is −u at β = 0 and 1 at β = 1, and increasing in between (it is (1 − β)²(β̂(β) − u))
    return brentq(lambda beta: beta**3 - (1 + u) * beta**2 + (1 + 2 * u) * beta - u, 0.0, 1.0, xtol=1e-15)


@dataclass(frozen=True)
class GraduatedSchedule:
    """Plain data for a graduated-optimization schedule: the first epoch's hyperparameters, the measured
    constants C² (`variance`) and K (`gradient_bound`), which method's δ to follow and what to move."""

    method: Method
    control: Control
    epochs: int  # M
    lr: float  # η_1
    batch_size: int  # b_1
    variance: float  # C²
    gradient_bound: float  # K
    momentum: float = 0.0  # β_1
    power: float = GRADUATION_POWER  # p

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: allowed are {', '.join(map(repr, METHODS))}")
        if self.control not in CONTROLS:
            raise ValueError(f"control={self.control!r}: allowed are {', '.join(map(repr, CONTROLS))}")
        if self.control == "momentum" and self.method == "sgd":
            raise ValueError("control='momentum' needs method 'shb' or 'nshb': SGD has no momentum")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be at least 1")
        if self.method == "sgd" and self.momentum != 0:
            raise ValueError(f"momentum={self.momentum}: SGD's must be 0")


@dataclass(frozen=True)
class EpochSetting:
    """One epoch's hyperparameters, the δ they were chosen for and the δ they give."""

    epoch: int  # m, from 1
    lr: float
    batch_size: int
    momentum: float
    target_delta: float  # δ_m = γ_{m−1} δ_{m−1}
    delta: float  # smoothing_degree of this epoch's (η, b, β)


def epoch_settings(schedule: GraduatedSchedule) -> list[EpochSetting]:
    """(η_m, b_m, β_m) for m = 1..M following δ_{m+1} = γ_m δ_m from δ_1 = δ(η_1, b_1, β_1)."""
    s = schedule
    constants = {"variance": s.variance, "gradient_bound": s.gradient_bound}
    initial = smoothing_degree(s.method, s.lr, s.batch_size, s.momentum, **constants)
    settings = []
    for epoch, target in enumerate(smoothing_targets(initial, s.epochs, s.power), start=1):
        lr, batch_size, momentum = s.lr, s.batch_size, s.momentum
        if s.control == "lr":
            lr = s.lr * target / initial  # η_m = η_1 δ_m/δ_1
        elif s.control == "batch_size":
            batch_size = _batch_size_for(target, s)
        elif s.method == "nshb":
            momentum = nshb_momentum(target, s.lr, s.batch_size, **constants)
        else:
            momentum = shb_momentum(target, s.lr, s.batch_size, **constants)
        delta = smoothing_degree(s.method, lr, batch_size, momentum, **constants)
        settings.append(EpochSetting(epoch, lr, batch_size, momentum, target, delta))
    return settings


def _batch_size_for(delta: float, s: GraduatedSchedule) -> int:
    """The integer b nearest to C²(1 + c)/(δ²/η² − cK²); an error when no batch size reaches δ."""
    weight = {"sgd": 0.0, "shb": momentum_factor(s.momentum), "nshb": 4 * s.momentum**2}[s.method]  # c
    room = delta**2 / s.lr**2 - weight * s.gradient_bound**2  # δ²/η² − cK²
    if room <= 0:
        floor = s.lr * math.sqrt(weight) * s.gradient_bound  # η√c·K
        raise ValueError(
            f"target δ={delta:.4g}: at or below the K-term floor η√c·K = {floor:.4g} of method {s.method!r} "
            f"with momentum {s.momentum}; no batch size reaches it"
        )
    return round(s.variance * (1 + weight) / room)
