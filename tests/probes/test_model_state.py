"""Probes on models with BatchNorm and dropout: eval/train mode against dense Hessians and loops over
examples of a model copy in that mode, and the model's buffers, flags and RNG state untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from momentumlab.probes.curvature import model_hvp, top_eigenvalues
from momentumlab.probes.model_state import probe_mode
from momentumlab.probes.noise import flat_model_loss, gradient_statistics

DIM = 183  # parameters of the model below: conv 30, BatchNorm 6, linear 147


def _batchnorm_model(dropout: float = 0.0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """conv → BN → ReLU → (dropout) → linear, float64, train mode, with running statistics moved away from
    their initial values; and 24 labelled 4×4 images."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()]
    layers += [nn.Dropout(dropout)] if dropout else []
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(3 * 16, 3)).double().train()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(24, 1, 4, 4, generator=generator, dtype=torch.float64) * 2 + 0.5
    labels = torch.randint(0, 3, (24,), generator=generator)
    with torch.no_grad():
        model(inputs)
    return model, inputs, labels


def _dense_hessian(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    """Hessian of the mean cross-entropy of a deep copy of the model put in `mode` by hand."""
    reference = copy.deepcopy(model).train(mode == "train")
    names = [name for name, _ in reference.named_parameters()]
    shapes = [parameter.shape for parameter in reference.parameters()]
    point = torch.nn.utils.parameters_to_vector(reference.parameters()).detach()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        views = dict(zip(names, (v.view(s) for v, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(functional_call(reference, views, (inputs,)), labels)

    return torch.autograd.functional.hessian(loss, point)


def _snapshot(model: nn.Module) -> tuple[list[torch.Tensor], list[bool], torch.Tensor]:
    buffers = [buffer.clone() for buffer in model.buffers()]
    return buffers, [module.training for module in model.modules()], torch.get_rng_state()


def _assert_untouched(model: nn.Module, snapshot) -> None:
    buffers, flags, rng = snapshot
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers, strict=True))
    assert [module.training for module in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("chunk_size", [None, 24, 10])
def test_model_hvp_of_batchnorm_model_equals_dense_hessian_in_its_mode(mode, chunk_size):
    """Full batch (one chunk) against the dense Hessian of a copy in `mode`; running statistics,
    num_batches_tracked, training flags and RNG state bit-identical before and after."""
    model, inputs, labels = _batchnorm_model()
    snapshot = _snapshot(model)
    hvp = model_hvp(model, F.cross_entropy, inputs, labels, chunk_size=chunk_size, mode=mode)
    vector = torch.randn(DIM, dtype=torch.float64)
    snapshot = snapshot[0], snapshot[1], torch.get_rng_state()  # randn above is the test's own draw
    if chunk_size in (None, 24):
        hessian = _dense_hessian(model, inputs, labels, mode)
        torch.testing.assert_close(hvp(vector), hessian @ vector, rtol=1e-10, atol=1e-12)
    else:
        hvp(vector)
    _assert_untouched(model, snapshot)


def test_eval_and_train_mode_hessians_differ_on_batchnorm():
    """Batch statistics make the train-mode loss another function: the top eigenvalues differ."""
    model, inputs, labels = _batchnorm_model()
    top = {
        mode: top_eigenvalues(
            model_hvp(model, F.cross_entropy, inputs, labels, mode=mode), DIM, tol=1e-8, max_iter=DIM
        ).eigenvalues[0]
        for mode in ("eval", "train")
    }
    for mode, value in top.items():
        expected = torch.linalg.eigvalsh(_dense_hessian(model, inputs, labels, mode))[-1]
        torch.testing.assert_close(value, expected, rtol=1e-7, atol=0)
    assert abs(top["eval"] - top["train"]) > 1e-3 * abs(top["eval"])


def test_dropout_in_train_mode_gives_one_symmetric_operator_across_chunks():
    """Each chunk's masks are drawn once: repeated products agree and uᵀHv = vᵀHu; RNG state untouched."""
    model, inputs, labels = _batchnorm_model(dropout=0.5)
    snapshot = _snapshot(model)
    hvp = model_hvp(model, F.cross_entropy, inputs, labels, chunk_size=10, mode="train")
    generator = torch.Generator().manual_seed(3)
    u, v = torch.randn(2, DIM, generator=generator, dtype=torch.float64)
    first = hvp(v)
    torch.testing.assert_close(hvp(v), first, rtol=0, atol=0)
    torch.testing.assert_close(u @ first, v @ hvp(u), rtol=1e-10, atol=1e-12)
    _assert_untouched(model, snapshot)


def test_gradient_statistics_of_batchnorm_model_in_eval_mode_equal_a_loop_over_examples():
    """Per-sample gradients through torch.func with BN buffers: ∇f and C² equal an explicit loop over the
    examples of an eval-mode copy; the model in train mode keeps its statistics and flags."""
    model, inputs, labels = _batchnorm_model(dropout=0.3)
    snapshot = _snapshot(model)
    loss, point = flat_model_loss(model, F.cross_entropy)
    statistics = gradient_statistics(loss, point, inputs, labels, chunk_size=7)
    _assert_untouched(model, snapshot)
    reference = copy.deepcopy(model).eval()
    gradients = []
    for image, label in zip(inputs, labels):
        reference.zero_grad()
        F.cross_entropy(reference(image[None]), label[None]).backward()
        gradients.append(torch.cat([p.grad.reshape(-1) for p in reference.parameters()]))
    gradients = torch.stack(gradients)
    mean = gradients.mean(0)
    torch.testing.assert_close(statistics.full_gradient, mean, rtol=1e-10, atol=1e-12)
    expected_variance = ((gradients - mean) ** 2).sum(1).mean().item()
    assert statistics.variance == pytest.approx(expected_variance, rel=1e-9)


def test_probe_mode_restores_flags_and_rng_even_on_error():
    model, _, _ = _batchnorm_model(dropout=0.5)
    model[1].eval()  # a mixed model: one module already in eval mode
    snapshot = _snapshot(model)
    with pytest.raises(RuntimeError, match="inside"), probe_mode(model, "train", seed=5):
        assert all(module.training for module in model.modules())
        torch.rand(3)
        raise RuntimeError("inside")
    _assert_untouched(model, snapshot)
    with pytest.raises(ValueError, match="mode='test'"), probe_mode(model, "test"):
        pass
