"""The explicit regularizer L + λ‖∇L‖²: closed forms and the trainer against a dense-Hessian reference."""

from __future__ import annotations

import torch
from torch.autograd.functional import hessian

from momentumlab.models.cubic_cnn import cubic_outputs, logistic_objective
from momentumlab.train.feature_margin import build_data, build_model, train_feature_margin
from momentumlab.train.gradient_penalty import penalized_loss_and_gradient


def test_penalized_quadratic_matches_closed_form():
    """E = ½xᵀAx: E + λ‖Ax‖² and its gradient Ax + 2λA²x."""
    generator = torch.Generator().manual_seed(0)
    root = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    matrix = root @ root.T + torch.eye(5, dtype=torch.float64)
    point = torch.randn(5, generator=generator, dtype=torch.float64)
    penalty = 0.3
    loss, gradient = penalized_loss_and_gradient(lambda x: 0.5 * x @ matrix @ x, point, penalty)
    slope = matrix @ point
    torch.testing.assert_close(loss, 0.5 * point @ slope + penalty * slope @ slope, rtol=1e-14, atol=0)
    torch.testing.assert_close(gradient, slope + 2 * penalty * matrix @ slope, rtol=1e-13, atol=1e-13)
    assert not point.requires_grad


def test_trainer_with_gradient_penalty_matches_dense_hessian_loop(tiny_config):
    """GD on L + λ‖∇L‖² equals W ← W − η(∇L + 2λ H∇L) with H the dense autograd Hessian (float64)."""
    penalty, lr, l2, steps = 0.05, 0.5, 0.01, 6
    config = tiny_config(
        "train.dtype=float64",
        f"train.steps={steps}",
        f"train.gradient_penalty={penalty}",
        f"train.l2={l2}",
        "model.init_std=0.3",
        f"optimizer.lr={lr}",
    )
    data = build_data(config).to("cpu", torch.float64)
    inputs, labels = data.train.inputs, data.train.labels
    weight = build_model(config).weight.detach().double()

    def objective(w: torch.Tensor) -> torch.Tensor:
        return logistic_objective(cubic_outputs(w, inputs), labels, w, l2)

    for _ in range(steps):
        w = weight.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(objective(w), w)
        dense = hessian(objective, weight).reshape(weight.numel(), weight.numel())
        step = gradient.flatten() + 2 * penalty * dense @ gradient.flatten()
        weight = weight - lr * step.reshape(weight.shape)
    record = train_feature_margin(config)
    assert record.status == "complete"
    torch.testing.assert_close(record.weights["weight"], weight, rtol=1e-10, atol=1e-12)
    unpenalized = train_feature_margin(
        tiny_config(
            "train.dtype=float64",
            f"train.steps={steps}",
            f"train.l2={l2}",
            "model.init_std=0.3",
            f"optimizer.lr={lr}",
        )
    )
    assert (unpenalized.weights["weight"] - weight).abs().max() > 1e-6  # the penalty changed the path
