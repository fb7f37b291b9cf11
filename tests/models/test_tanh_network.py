"""The flat-parameter tanh network against the same network built from torch.nn layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from momentumlab.models.tanh_network import TanhNetwork

TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _reference(network: TanhNetwork, theta: torch.Tensor) -> nn.Sequential:
    """Linear → tanh → Linear with the weights of θ = (W1, b1, w2, b2); nn.Linear stores W1ᵀ."""
    first, bias, second, offset = torch.split(theta, network.sizes)
    module = nn.Sequential(
        nn.Linear(network.input_dim, network.width), nn.Tanh(), nn.Linear(network.width, 1)
    ).double()
    with torch.no_grad():
        module[0].weight.copy_(first.view(network.input_dim, network.width).T)
        module[0].bias.copy_(bias)
        module[2].weight.copy_(second.view(1, network.width))
        module[2].bias.copy_(offset)
    return module


def _problem(seed: int = 0) -> tuple[TanhNetwork, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    network = TanhNetwork(3, 7)
    inputs = torch.randn(11, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(11, generator=generator, dtype=torch.float64)
    theta = torch.randn(network.dim, generator=generator, dtype=torch.float64)
    return network, inputs, targets, theta


def test_sizes_and_dim():
    network = TanhNetwork(2, 24)
    assert network.sizes == [48, 24, 24, 1]
    assert network.dim == 97


def test_outputs_and_loss_match_nn_layers():
    network, inputs, targets, theta = _problem()
    module = _reference(network, theta)
    torch.testing.assert_close(network.outputs(theta, inputs), module(inputs).squeeze(-1), **TIGHT)
    expected = nn.functional.mse_loss(module(inputs).squeeze(-1), targets)
    torch.testing.assert_close(network.mse_loss(inputs, targets)(theta), expected, **TIGHT)


def test_loss_gradient_matches_the_layers_gradients():
    """∇_θE equals the nn.Module's parameter gradients, laid out as (W1, b1, w2, b2)."""
    network, inputs, targets, theta = _problem(1)
    module = _reference(network, theta)
    nn.functional.mse_loss(module(inputs).squeeze(-1), targets).backward()
    expected = torch.cat(
        [
            module[0].weight.grad.T.flatten(),
            module[0].bias.grad,
            module[2].weight.grad.flatten(),
            module[2].bias.grad,
        ]
    )
    torch.testing.assert_close(torch.func.grad(network.mse_loss(inputs, targets))(theta), expected, **TIGHT)


def test_initial_parameters_are_the_generators_draws_scaled():
    network = TanhNetwork(2, 5)
    theta = network.initial_parameters(torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    draws = [torch.randn(size, generator=generator, dtype=torch.float64) for size in (10, 5, 5)]
    expected = torch.cat(
        [
            draws[0] / math.sqrt(2),
            0.5 * draws[1],
            draws[2] / math.sqrt(5),
            torch.zeros(1, dtype=torch.float64),
        ]
    )
    assert theta.dtype == torch.float64 and theta.shape == (network.dim,)
    torch.testing.assert_close(theta, expected, rtol=0, atol=0)


def test_initial_parameters_have_lecun_variances():
    """Over many draws: Var W1 = 1/input_dim, Var b1 = 1/4, Var w2 = 1/width (5 standard errors)."""
    network = TanhNetwork(4, 16)
    generator = torch.Generator().manual_seed(0)
    samples = torch.stack([network.initial_parameters(generator) for _ in range(2000)])
    first, bias, second, offset = torch.split(samples, network.sizes, dim=1)
    for block, variance in ((first, 1 / 4), (bias, 1 / 4), (second, 1 / 16)):
        assert block.var().item() == pytest.approx(variance, rel=5 * math.sqrt(2 / block.numel()))
    assert offset.abs().max() == 0
