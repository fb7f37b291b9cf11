"""The ReLU networks of Table 1 (Jelassi & Li, SPEC §1), used both as random teachers and as students.

Every network maps x ∈ R^d to one real output f(x):

- ``linear``:        f(x) = ⟨w, x⟩ + b
- ``mlp1``/``mlp2``: one/two hidden layers h ← ReLU(W h + b) of `width` units, then a linear read-out
- ``cnn1``/``cnn2``: one/two 1-D convolutions over the d coordinates (`width` channels, `kernel_size`,
  stride 1, zero padding that keeps the length d), each followed by ReLU, then a linear read-out of
  the flattened width·d features

Weights and biases are drawn with PyTorch's default layer initialization, uniform on ±1/√fan_in, from
an explicit generator, so a network is a function of its seed and not of the global random state.

:mod:`momentumlab.models.stacked_students` evaluates and differentiates R of them at once.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

ARCHITECTURES = ("linear", "mlp1", "mlp2", "cnn1", "cnn2")


class MLP(nn.Module):
    """`depth` hidden ReLU layers of `width` units and a linear read-out (depth 0: a linear function)."""

    def __init__(self, dim: int, width: int, depth: int, generator: torch.Generator | None = None):
        super().__init__()
        sizes = [dim] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.readout = nn.Linear(sizes[-1], 1)
        if generator is not None:
            initialize(self, generator)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """f(x) of shape (N,) for inputs of shape (N, d)."""
        hidden = inputs
        for layer in self.hidden:
            hidden = torch.relu_(layer(hidden))
        return self.readout(hidden).squeeze(-1)


class CNN1d(nn.Module):
    """`depth` 1-D convolutions with ReLU over the d input coordinates and a linear read-out."""

    def __init__(
        self, dim: int, channels: int, kernel_size: int, depth: int, generator: torch.Generator | None = None
    ):
        super().__init__()
        sizes = [1] + [channels] * depth
        self.convolutions = nn.ModuleList(
            nn.Conv1d(a, b, kernel_size, padding="same") for a, b in itertools.pairwise(sizes)
        )
        self.readout = nn.Linear(channels * dim, 1)
        if generator is not None:
            initialize(self, generator)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """f(x) of shape (N,) for inputs of shape (N, d)."""
        hidden = inputs.unsqueeze(-2)  # one input channel: (N, 1, d)
        for convolution in self.convolutions:
            hidden = torch.relu_(convolution(hidden))
        return self.readout(hidden.flatten(-2)).squeeze(-1)


@torch.no_grad()
def initialize(network: nn.Module, generator: torch.Generator) -> None:
    """Every layer's weight and bias uniform on ±1/√fan_in, drawn from `generator` in layer order."""
    for layer in network.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d)):
            bound = 1 / math.sqrt(layer.weight[0].numel())  # fan_in = in_features (· kernel_size)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)


def build_network(
    architecture: str, dim: int, width: int, kernel_size: int, generator: torch.Generator | None = None
) -> nn.Module:
    """The network `architecture` names (one of :data:`ARCHITECTURES`), in float32 unless converted."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture = {architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
    depth = 0 if architecture == "linear" else int(architecture[-1])
    if architecture.startswith("cnn"):
        return CNN1d(dim, width, kernel_size, depth, generator)
    return MLP(dim, width, depth, generator)
