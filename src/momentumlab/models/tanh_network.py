"""A one-hidden-layer tanh network as a function of one flat parameter vector (Ghosh et al., SPEC §2).

f_θ(u) = w2ᵀ tanh(W1ᵀu + b1) + b2 with θ = (W1, b1, w2, b2) flattened in that order (W1 of shape
(input_dim, width), row-major). Heavy ball and its modified flows act on θ directly, so the network is a
loss E(θ) on fixed data rather than an ``nn.Module``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TanhNetwork:
    """f_θ(u) = w2ᵀ tanh(W1ᵀu + b1) + b2 for inputs u ∈ R^input_dim and `width` hidden units."""

    input_dim: int
    width: int

    @property
    def sizes(self) -> list[int]:
        """Lengths of W1, b1, w2 and b2 in θ."""
        return [self.input_dim * self.width, self.width, self.width, 1]

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return sum(self.sizes)

    def outputs(self, theta: Tensor, inputs: Tensor) -> Tensor:
        """f_θ(u_i) of shape (n,) for inputs of shape (n, input_dim)."""
        first, bias, second, offset = torch.split(theta, self.sizes)
        hidden = torch.tanh(inputs @ first.view(self.input_dim, self.width) + bias)
        return hidden @ second + offset

    def mse_loss(self, inputs: Tensor, targets: Tensor) -> Callable[[Tensor], Tensor]:
        """θ ↦ E(θ) = (1/n) Σ_i (f_θ(u_i) − y_i)²."""

        def loss(theta: Tensor) -> Tensor:
            return (self.outputs(theta, inputs) - targets).pow(2).mean()

        return loss

    def initial_parameters(self, generator: torch.Generator) -> Tensor:
        """θ_0 in float64: W1 ~ N(0, 1/input_dim) and w2 ~ N(0, 1/width) (LeCun scaling), b1 ~ N(0, 1/4),
        b2 = 0, drawn from `generator` in that order."""

        def normal(size: int) -> Tensor:
            return torch.randn(size, generator=generator, dtype=torch.float64)

        return torch.cat(
            [
                normal(self.input_dim * self.width) / math.sqrt(self.input_dim),
                0.5 * normal(self.width),
                normal(self.width) / math.sqrt(self.width),
                torch.zeros(1, dtype=torch.float64),
            ]
        )
