"""Regression data labelled by a random tanh teacher, for the tanh network of `heavy-ball-flow`.

u_i ~ N(0, I_input_dim) and y_i = vᵀ tanh(Wᵀu_i)/√k with a teacher of k hidden units, W (input_dim, k)
and v (k) standard normal: smooth targets of order one that a small tanh network can fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RegressionData:
    """Inputs of shape (n, input_dim) and real targets of shape (n,), in float64."""

    inputs: Tensor
    targets: Tensor


def tanh_teacher_data(
    points: int, teacher_width: int, generator: torch.Generator, input_dim: int = 2
) -> RegressionData:
    """`points` Gaussian inputs and their teacher's targets, drawn from `generator` (inputs, W, then v)."""

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    inputs = normal(points, input_dim)
    targets = torch.tanh(inputs @ normal(input_dim, teacher_width)) @ normal(teacher_width)  # vᵀ tanh(Wᵀu)
    return RegressionData(inputs, targets / math.sqrt(teacher_width))
