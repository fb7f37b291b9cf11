"""The tanh teacher's regression data against a loop over points and hidden units."""

from __future__ import annotations

import math

import torch

from momentumlab.data.tanh_teacher import tanh_teacher_data


def test_targets_are_the_teachers_outputs():
    """y_i = Σ_j v_j tanh(Σ_a u_ia W_aj)/√k, with u, W and v drawn in that order from the generator."""
    points, width = 9, 4
    data = tanh_teacher_data(points, width, torch.Generator().manual_seed(5), input_dim=3)
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(points, 3, generator=generator, dtype=torch.float64)
    weights = torch.randn(3, width, generator=generator, dtype=torch.float64)
    readout = torch.randn(width, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(data.inputs, inputs, rtol=0, atol=0)
    for i in range(points):
        expected = sum(
            readout[j].item() * math.tanh(sum(inputs[i, a].item() * weights[a, j].item() for a in range(3)))
            for j in range(width)
        ) / math.sqrt(width)
        assert abs(data.targets[i].item() - expected) < 1e-12
    assert data.inputs.dtype == data.targets.dtype == torch.float64
    assert data.targets.shape == (points,)


def test_the_seed_determines_the_data():
    first = tanh_teacher_data(20, 4, torch.Generator().manual_seed(0))
    again = tanh_teacher_data(20, 4, torch.Generator().manual_seed(0))
    other = tanh_teacher_data(20, 4, torch.Generator().manual_seed(1))
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.targets, other.targets)
    assert first.inputs.shape == (20, 2)
