"""The stacked students' hand-written loss and gradient against autograd through each run's module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from momentumlab.models.mlp import build_network
from momentumlab.models.stacked_students import StackedStudents

RUNS, BATCH, WIDTH = 3, 11, 4


def _networks(architecture: str, dim: int, kernel: int, dtype: torch.dtype):
    return [
        build_network(architecture, dim, WIDTH, kernel, torch.Generator().manual_seed(r)).to(dtype)
        for r in range(RUNS)
    ]


def _stack(networks) -> dict[str, torch.Tensor]:
    return {
        name: torch.stack([dict(network.named_parameters())[name].detach() for network in networks])
        for name, _ in networks[0].named_parameters()
    }


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(
    ("architecture", "dim", "kernel"),
    [("mlp1", 9, 5), ("mlp2", 9, 5)]
    + [(cnn, dim, kernel) for cnn in ("cnn1", "cnn2") for dim, kernel in ((9, 5), (9, 4), (7, 2), (6, 1))],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loss_and_gradients_equal_autograd_through_each_network(architecture, dim, kernel, dtype):
    """Every run's L_r and ∇L_r equal autograd's on its own module, for odd, even and unit kernels
    (even: 'same' padding is asymmetric)."""
    networks = _networks(architecture, dim, kernel, dtype)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(RUNS, BATCH, dim, generator=generator).to(dtype)
    labels = (torch.randint(0, 2, (RUNS, BATCH), generator=generator) * 2 - 1).to(dtype)
    parameters = _stack(networks)
    students = StackedStudents(parameters, dim)
    losses, gradients = students.loss_and_gradients(parameters, students.features(inputs), labels)
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    assert set(gradients) == set(parameters)
    for run, network in enumerate(networks):
        loss = F.softplus(-labels[run] * network(inputs[run])).mean()
        expected = torch.autograd.grad(loss, list(network.parameters()))
        torch.testing.assert_close(losses[run], loss.detach(), **tolerance)
        for (name, _), gradient in zip(network.named_parameters(), expected):
            torch.testing.assert_close(gradients[name][run], gradient, **tolerance, msg=name)


def test_parameters_are_left_unchanged():
    """The backward pass works in its own buffers: the stacked parameters are not modified."""
    networks = _networks("cnn2", 9, 5, torch.float64)
    parameters = _stack(networks)
    before = {name: value.clone() for name, value in parameters.items()}
    students = StackedStudents(parameters, 9)
    inputs = torch.randn(RUNS, BATCH, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    students.loss_and_gradients(parameters, students.features(inputs), torch.ones(RUNS, BATCH).double())
    for name, value in parameters.items():
        assert torch.equal(value, before[name]), name
