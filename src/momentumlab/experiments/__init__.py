"""The reproductions: one declaration per module (:mod:`momentumlab.experiments.reproduction`), run by
:mod:`momentumlab.experiments.runner`. Adding one is a new module and one line below."""

from __future__ import annotations

from collections.abc import Sequence

from momentumlab.config import ConfigError
from momentumlab.experiments import (
    cifar_momentum,
    diffusion,
    feature_margin,
    feature_margin_phase,
    feature_margin_theory,
    flatness_toy,
    graduated_optimization,
    heavy_ball_flow,
    momentum_variance,
    noise_level,
    small_margin,
    teacher_student,
)
from momentumlab.experiments.reproduction import Reproduction

REPRODUCTIONS: dict[str, Reproduction] = {
    reproduction.name: reproduction
    for reproduction in (
        feature_margin.REPRODUCTION,
        feature_margin_phase.REPRODUCTION,
        feature_margin_theory.REPRODUCTION,
        heavy_ball_flow.REPRODUCTION,
        flatness_toy.REPRODUCTION,
        momentum_variance.REPRODUCTION,
        diffusion.REPRODUCTION,
        noise_level.REPRODUCTION,
        graduated_optimization.REPRODUCTION,
        small_margin.DIGITS,
        cifar_momentum.REPRODUCTION,
        small_margin.CIFAR,
        teacher_student.REPRODUCTION,
    )
}


def select(names: Sequence[str]) -> list[Reproduction]:
    """The reproductions named (all CPU-sized ones when none is)."""
    if not names:
        return [r for r in REPRODUCTIONS.values() if r.cpu_sized]
    unknown = [name for name in names if name not in REPRODUCTIONS]
    if unknown:
        raise ConfigError(f"unknown reproduction {unknown[0]!r}; allowed: {', '.join(REPRODUCTIONS)}")
    return [REPRODUCTIONS[name] for name in names]
