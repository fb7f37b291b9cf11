"""The stacked students' hand-written loss and gradient against autograd through each run's module."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from momentumlab.models.mlp import CNN1d, build_network
from momentumlab.models.stacked_students import StackedStudents

RUNS, BATCH, WIDTH = 3, 11, 4


def _networks(architecture: str, dim: int, kernel: int, dtype: torch.dtype):
    if architecture == "cnn3":  # no student has three convolutions; the stacked code allows any depth
        return [CNN1d(dim, WIDTH, kernel, 3, torch.Generator().manual_seed(r)).to(dtype) for r in range(RUNS)]
    return [
        build_network(architecture, dim, WIDTH, kernel, torch.Generator().manual_seed(r)).to(dtype)
        for r in range(RUNS)
    ]


def _stack(networks) -> dict[str, torch.Tensor]:
    return {
        name: torch.stack([dict(network.named_parameters())[name].detach() for network in networks])
        for name, _ in networks[0].named_parameters()
    }


def _students(parameters: dict[str, torch.Tensor], dim: int) -> StackedStudents:
    return StackedStudents({name: value.shape[1:] for name, value in parameters.items()}, dim)


@pytest.mark.parametrize("architecture", ["mlp1", "mlp2", "cnn1", "cnn2", "cnn3"])
def test_the_layout_holds_every_parameter_once_and_unpacks_to_views(architecture):
    """pack then unpack gives the parameters back; the views cover the P columns of a row once each and
    write through to it."""
    parameters = _stack(_networks(architecture, 9, 3, torch.float64))
    students = _students(parameters, 9)
    flat = students.pack(parameters)
    assert flat.shape == (RUNS, sum(value[0].numel() for value in parameters.values()))
    views = students.unpack(flat)
    assert list(views) == list(parameters)
    for name, value in parameters.items():
        assert torch.equal(views[name], value), name
    flat.zero_()
    for view in views.values():
        view.add_(1)
    assert torch.equal(flat, torch.ones_like(flat))  # each column in exactly one view
    assert torch.equal(students.unpack(flat[1:])["readout.bias"], flat[1:, -1:])


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(
    ("architecture", "dim", "kernel"),
    [("mlp1", 9, 5), ("mlp2", 9, 5)]
    + [(cnn, dim, kernel) for cnn in ("cnn1", "cnn2") for dim, kernel in ((9, 5), (9, 4), (7, 2), (6, 1))]
    + [("cnn3", 8, 3), ("cnn3", 8, 4)],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loss_and_gradient_equal_autograd_through_each_network(architecture, dim, kernel, dtype):
    """Every run's L_r and ∇L_r equal autograd's on its own module, for odd, even and unit kernels
    (even: 'same' padding is asymmetric)."""
    networks = _networks(architecture, dim, kernel, dtype)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(RUNS, BATCH, dim, generator=generator).to(dtype)
    labels = (torch.randint(0, 2, (RUNS, BATCH), generator=generator) * 2 - 1).to(dtype)
    parameters = _stack(networks)
    students = _students(parameters, dim)
    losses, gradient = students.loss_and_gradient(
        students.pack(parameters), students.features(inputs), labels
    )
    gradients = students.unpack(gradient)
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    assert set(gradients) == set(parameters)
    for run, network in enumerate(networks):
        loss = F.softplus(-labels[run] * network(inputs[run])).mean()
        expected = torch.autograd.grad(loss, list(network.parameters()))
        torch.testing.assert_close(losses[run], loss.detach(), **tolerance)
        for (name, _), gradient in zip(network.named_parameters(), expected):
            torch.testing.assert_close(gradients[name][run], gradient, **tolerance, msg=name)


@pytest.mark.parametrize("architecture", ["mlp2", "cnn2"])
def test_parameters_are_left_unchanged_and_buffers_carry_nothing_over(architecture):
    """The passes work in their own buffers: the stacked parameters are not modified, and a second call
    (other inputs, fewer runs) gives what a fresh instance gives."""
    parameters = _stack(_networks(architecture, 9, 5, torch.float64))
    students = _students(parameters, 9)
    flat = students.pack(parameters)
    before = flat.clone()
    generator = torch.Generator().manual_seed(2)
    first, second = (torch.randn(RUNS, BATCH, 9, dtype=torch.float64, generator=generator) for _ in range(2))
    labels = torch.ones(RUNS, BATCH, dtype=torch.float64)
    students.loss_and_gradient(flat, students.features(first), labels)
    assert torch.equal(flat, before)
    for kept in (slice(None), slice(0, 2)):
        fresh = _students(parameters, 9)
        expected = fresh.loss_and_gradient(flat[kept], fresh.features(second[kept]), labels[kept])
        actual = students.loss_and_gradient(flat[kept], students.features(second[kept]), labels[kept])
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("kernel", [5, 4, 1])
def test_kept_minibatch_features_equal_fresh_ones_and_reuse_one_buffer(kernel):
    """Features written into the kept buffer equal fresh ones exactly, call after call (other windows,
    fewer runs, another batch size: a new buffer with its ones), and a same-shaped call reuses it."""
    students = _students(_stack(_networks("cnn1", 9, kernel, torch.float32)), 9)
    generator = torch.Generator().manual_seed(3)
    addresses = []
    for runs, batch in ((RUNS, BATCH), (RUNS, BATCH), (2, BATCH), (2, 5), (2, 5)):
        inputs = torch.randn(runs, batch, 9, generator=generator)
        kept = students.features(inputs, kept=True)
        assert torch.equal(kept, students.features(inputs))
        addresses.append(kept.data_ptr())
    reused = [after == before for before, after in itertools.pairwise(addresses)]
    assert reused == [True, False, False, True]


@pytest.mark.parametrize("architecture", ["mlp2", "cnn1"])
def test_minibatch_features_are_the_features_of_each_runs_chosen_examples(architecture):
    parameters = _stack(_networks(architecture, 9, 3, torch.float32))
    students = _students(parameters, 9)
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(RUNS, BATCH, 9, generator=generator)
    chosen = torch.stack([torch.randperm(BATCH, generator=generator)[:4] for _ in range(RUNS)])
    rows = (chosen + BATCH * torch.arange(RUNS)[:, None]).flatten()  # run r's examples follow run r − 1's
    expected = students.features(torch.stack([inputs[r, chosen[r]] for r in range(RUNS)]))
    actual = students.minibatch_features(inputs, students.features(inputs), rows)
    assert torch.equal(actual, expected)
