"""The ReLU networks of Table 1 (Jelassi & Li, SPEC §1), used both as random teachers and as students.

Every network maps x ∈ R^d to one real output f(x):

- ``linear``:        f(x) = ⟨w, x⟩ + b
- ``mlp1``/``mlp2``: one/two hidden layers h ← ReLU(W h + b) of `width` units, then a linear read-out
- ``cnn1``/``cnn2``: one/two 1-D convolutions over the d coordinates (`width` channels, `kernel_size`,
  stride 1, zero padding that keeps the length d), each followed by ReLU, then a linear read-out of
  the flattened width·d features

Weights and biases are drawn with PyTorch's default layer initialization, uniform on ±1/√fan_in, from
an explicit generator, so a network is a function of its seed and not of the global random state.

:func:`stacked_outputs` evaluates R networks of one architecture at once, from parameters stacked along
a leading run dimension (the modules' parameter names, each of shape (R, *shape)): batched matrix
products for the dense layers and the input convolution, one grouped convolution (a group per network)
for each later convolution. It computes the modules' function, for training many runs in one computation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
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
            hidden = torch.relu(layer(hidden))
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
            hidden = torch.relu(convolution(hidden))
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


def stacked_outputs(parameters: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """f_r(x_{r,i}) of shape (R, N) for R stacked networks and inputs of shape (R, N, d).

    The architecture is read from the parameter names (``hidden.*``: MLP, ``convolutions.*``: CNN).
    """
    readout_weight, readout_bias = parameters["readout.weight"], parameters["readout.bias"]
    convolutions = list(_layers(parameters, "convolutions"))
    hidden = inputs
    if convolutions:
        hidden = _stacked_input_convolution(inputs, *convolutions[0])
        runs, n, length, channels = hidden.shape
        if len(convolutions) == 1:
            hidden = hidden.reshape(runs, n, length * channels)
            # the module flattens (channel, position); channels-last features are ordered (position, channel)
            readout_weight = readout_weight.view(runs, channels, length).transpose(1, 2).reshape(runs, 1, -1)
        else:
            hidden = hidden.permute(1, 0, 3, 2).reshape(n, runs * channels, length)  # the runs as groups
            for weight, bias in convolutions[1:]:
                hidden = F.conv1d(hidden, weight.flatten(0, 1), bias.flatten(), padding="same", groups=runs)
                hidden = torch.relu(hidden)
            hidden = hidden.view(n, runs, -1).transpose(0, 1)  # (R, N, C·d) in the module's order
    else:
        for weight, bias in _layers(parameters, "hidden"):
            hidden = torch.relu(torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2)))
    return torch.baddbmm(readout_bias.unsqueeze(1), hidden, readout_weight.transpose(1, 2)).squeeze(-1)


def _layers(parameters: dict[str, torch.Tensor], prefix: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of the layers ``prefix.0``, ``prefix.1``, … in order."""
    index = 0
    while f"{prefix}.{index}.weight" in parameters:
        yield parameters[f"{prefix}.{index}.weight"], parameters[f"{prefix}.{index}.bias"]
        index += 1


def _stacked_input_convolution(
    inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """ReLU of the one-channel input layer, channels-last (R, N, d, C), for filters (R, C, 1, k).

    A product of each input's unfolded windows with the filters: on the CPU a grouped convolution with
    one input channel per group was 2–3 times slower.
    """
    runs, n, length = inputs.shape
    kernel = weight.shape[-1]
    left = (kernel - 1) // 2  # PyTorch's padding='same' puts the odd extra zero on the right
    windows = F.pad(inputs, (left, kernel - 1 - left)).unfold(2, kernel, 1).reshape(runs, n * length, kernel)
    hidden = torch.baddbmm(bias.unsqueeze(1), windows, weight.flatten(2).transpose(1, 2))
    return torch.relu(hidden).view(runs, n, length, -1)
