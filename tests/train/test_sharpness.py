"""The trainer's sharpness column against the dense autograd Hessian of the full-batch objective."""

from __future__ import annotations

import math

import torch
from torch.autograd.functional import hessian

from momentumlab.models.cubic_cnn import cubic_outputs, logistic_objective
from momentumlab.train.feature_margin import build_data, build_model, train_feature_margin


def dense_top_eigenvalue(config, weight: torch.Tensor) -> float:
    data = build_data(config).to("cpu", torch.float64)

    def objective(w: torch.Tensor) -> torch.Tensor:
        return logistic_objective(cubic_outputs(w, data.train.inputs), data.train.labels, w, config.train.l2)

    matrix = hessian(objective, weight.double()).reshape(weight.numel(), weight.numel())
    return torch.linalg.eigvalsh(matrix).max().item()


def test_sharpness_is_logged_at_its_steps_and_matches_the_dense_hessian(tiny_config):
    config = tiny_config(
        "train.dtype=float64",
        "train.sharpness_every=25",
        "train.l2=0.01",
        "model.init_std=0.3",
        "optimizer.name=ema_momentum",
        "optimizer.momentum=0.9",
    )
    record = train_feature_margin(config)
    by_step = {int(row["step"]): row for row in record.rows}
    assert [s for s, row in sorted(by_step.items()) if "sharpness" in row] == [0, 25, 50, 60]
    assert 25 in by_step and "sharpness" not in by_step[10]
    initial = dense_top_eigenvalue(config, build_model(config).weight.detach())
    final = dense_top_eigenvalue(config, record.weights["weight"])
    assert math.isclose(by_step[0]["sharpness"], initial, rel_tol=1e-5)
    assert math.isclose(by_step[60]["sharpness"], final, rel_tol=1e-5)
    assert abs(final - initial) > 1e-3 * abs(initial)  # the two checks are of different matrices
    assert 0 < by_step[60]["sharpness_hvps"] <= config.model.width * config.data.dim
