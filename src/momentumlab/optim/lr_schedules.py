"""Learning-rate schedules for epoch-based training: the factor that multiplies the base rate η.

For epoch e = 0, …, E − 1 (the epoch about to run), with w warm-up epochs:

- warm-up:   min(1, (e + 1)/(w + 1)), so the first epoch runs at η/(w + 1) and epoch w at η;
- constant:  1;
- cosine:    f + (1 − f)·(1 + cos(π t))/2 with t = max(0, e − w)/(E − w), decaying from 1 towards f;
- multistep: γ^k, k the number of milestones m ≤ e.

The factor is the warm-up term times the decay term. Schedules are plain functions of the epoch, so a
resumed run recomputes the same rate and optimizers need no scheduler state.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator

from momentumlab.config import StrictModel


class LRScheduleConfig(StrictModel):
    """The learning-rate factor per epoch (see :mod:`momentumlab.optim.lr_schedules`)."""

    name: Literal["constant", "cosine", "multistep"] = "constant"
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up from 1/(w+1) to 1 over this many epochs")
    final_factor: float = Field(0.0, ge=0, le=1, description="cosine: the factor it decays to")
    milestones: tuple[int, ...] = Field((), description="multistep: epochs at which the factor is × gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="multistep: the decay per milestone")

    @model_validator(mode="after")
    def _milestones_increase(self) -> LRScheduleConfig:
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones = {list(self.milestones)} must be strictly increasing epochs ≥ 1")
        return self


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min(1, (e + 1)/(w + 1))."""
    return min(1.0, (epoch + 1) / (warmup_epochs + 1))


def cosine_factor(epoch: int, epochs: int, warmup_epochs: int = 0, final_factor: float = 0.0) -> float:
    """f + (1 − f)(1 + cos πt)/2, t = max(0, e − w)/(E − w)."""
    progress = max(0, epoch - warmup_epochs) / (epochs - warmup_epochs)  # t
    return final_factor + (1 - final_factor) * (1 + math.cos(math.pi * progress)) / 2


def multistep_factor(epoch: int, milestones: tuple[int, ...], gamma: float) -> float:
    """γ^k with k = #{m ≤ e}."""
    return gamma ** bisect.bisect_right(milestones, epoch)


def lr_factor(config: LRScheduleConfig, epoch: int, epochs: int) -> float:
    """The factor of epoch `epoch` (0-based) of `epochs` under `config`."""
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch={epoch}: must lie in 0..{epochs - 1}")
    if config.name == "cosine":
        decay = cosine_factor(epoch, epochs, config.warmup_epochs, config.final_factor)
    elif config.name == "multistep":
        decay = multistep_factor(epoch, config.milestones, config.gamma)
    else:
        decay = 1.0
    return warmup_factor(epoch, config.warmup_epochs) * decay


def build_schedule(config: LRScheduleConfig, epochs: int) -> Callable[[int], float]:
    """epoch ↦ factor, for a run of `epochs` epochs."""
    return lambda epoch: lr_factor(config, epoch, epochs)
