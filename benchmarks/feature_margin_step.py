"""Training-step time on the default feature–margin data: momentumlab's trainer vs a naive loop.

The naive reference is what one would write by hand: the cubic CNN as an `nn.Module` in float64,
autograd for the gradient and `torch.optim.SGD` for GD+M (heavy-ball form with lr = η(1−γ), which has
GD+M's iterates). The project's number is the per-step cost of `momentumlab.train.feature_margin.train_feature_margin` itself,
measured as the difference between two run lengths so that data generation and setup cancel.

    python benchmarks/feature_margin_step.py [--steps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from momentumlab.models.cubic_cnn import CubicCNN, logistic_objective
from momentumlab.optim import ema_to_heavy_ball
from momentumlab.runs.feature_margin import FeatureMarginRunConfig
from momentumlab.train.feature_margin import build_data, build_model, train_feature_margin

LR, MOMENTUM = 0.5, 0.99


def config(steps: int) -> FeatureMarginRunConfig:
    return FeatureMarginRunConfig.model_validate(
        {
            "optimizer": {"name": "ema_momentum", "lr": LR, "momentum": MOMENTUM},
            "train": {"steps": steps, "log_every": 10**9, "checkpoint_every": 10**9},
        }
    )


def trainer_ms_per_step(steps: int) -> float:
    short, long = (
        train_feature_margin(config(steps // 5)).seconds,
        train_feature_margin(config(steps // 5 + steps)).seconds,
    )
    return 1e3 * (long - short) / steps


def naive_ms_per_step(steps: int) -> float:
    run = config(steps)
    data = build_data(run)
    inputs, labels = data.train.inputs, data.train.labels  # float64
    model = CubicCNN(run.model.width, run.data.dim, run.model.init_std).double()
    model.load_state_dict({"weight": build_model(run).weight.detach().double()})
    lr, momentum = ema_to_heavy_ball(LR, MOMENTUM)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = logistic_objective(model(inputs), labels, model.weight, 0.0)
        loss.backward()
        optimizer.step()
    return 1e3 * (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"feature-margin default data (N=20000, d=30, P=5, m=5), GD+M, torch threads = {torch.get_num_threads()}"
    )
    trainer = min(trainer_ms_per_step(args.steps) for _ in range(args.repeats))
    naive = min(naive_ms_per_step(args.steps // 4) for _ in range(args.repeats))
    print(f"naive reference (autograd + torch.optim.SGD, float64): {naive:8.3f} ms/step")
    print(f"momentumlab trainer (closed-form gradient, float32):   {trainer:8.3f} ms/step")
    print(f"speed-up: {naive / trainer:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
