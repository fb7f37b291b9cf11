"""A run kind defined outside momentumlab: a small MLP on scikit-learn's digits, trained by
`torch.optim.SGD` with momentum.

Install this folder (`pip install ./examples/digits_mlp`): its entry point in the group
``momentumlab.run_kinds`` makes `momentumlab run`, `sweep`, `compare`, `ls` and `show` know the kind
``digits_mlp``, with hashing, caching, resumption and divergence handled by the store.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from momentumlab import RunKind, RunRecord, StrictModel, register_run_kind
from momentumlab.train.checkpoint import load_checkpoint, save_checkpoint


class MLPConfig(StrictModel):
    width: int = Field(64, ge=1, description="hidden units")


class SGDConfig(StrictModel):
    lr: float = Field(0.1, gt=0, description="learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="torch.optim.SGD's momentum (heavy ball)")


class TrainConfig(StrictModel):
    epochs: int = Field(30, ge=1)
    batch_size: int | None = Field(64, ge=1, description="null means full batch")
    checkpoint_every_epochs: int = Field(10, ge=1)


class DigitsMLPConfig(StrictModel):
    """Everything that determines one run; `kind` names the schema in config files and in the store."""

    kind: Literal["digits_mlp"] = "digits_mlp"
    seed: int = Field(0, ge=0)
    model: MLPConfig = MLPConfig()
    optimizer: SGDConfig = SGDConfig()
    train: TrainConfig = TrainConfig()


def digits(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """60/20/20 train/validation/test split of the 1 797 images, flattened to 64 pixels in [0, 1]."""
    data = load_digits()
    inputs = torch.tensor(data.data / 16.0, dtype=torch.float32)
    labels = torch.tensor(data.target, dtype=torch.long)
    rest, test = train_test_split(range(len(labels)), test_size=0.2, random_state=seed, stratify=labels)
    train, val = train_test_split(rest, test_size=0.25, random_state=seed, stratify=labels[rest])
    return {
        name: (inputs[index], labels[index])
        for name, index in (("train", train), ("val", val), ("test", test))
    }


def train(
    config: DigitsMLPConfig, checkpoint_path: Path | None = None, progress: bool = False, on_step=None
) -> RunRecord:
    """Train one run, resuming from `checkpoint_path` when it holds a checkpoint (one row per epoch)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    sets = digits(config.seed)
    model = nn.Sequential(nn.Linear(64, config.model.width), nn.ReLU(), nn.Linear(config.model.width, 10))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.optimizer.lr, momentum=config.optimizer.momentum
    )
    rows, start = load_checkpoint(checkpoint_path, model, optimizer, torch.device("cpu"))
    inputs, labels = sets["train"]
    batch_size = config.train.batch_size or len(labels)
    status, diverged_at = "complete", None
    for epoch in range(start, config.train.epochs):
        if on_step is not None:
            on_step(epoch)
        order = torch.randperm(
            len(labels), generator=torch.Generator().manual_seed(config.seed * 10_000 + epoch)
        )
        for batch in order.split(batch_size):
            loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            if not math.isfinite(loss.item()):
                status, diverged_at = "diverged", epoch
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if status == "diverged":
            break
        with torch.no_grad():
            row = {
                "epoch": epoch + 1,
                "train_loss": nn.functional.cross_entropy(model(inputs), labels).item(),
            }
            for name, (x, y) in sets.items():
                row[f"{name}_accuracy"] = (model(x).argmax(1) == y).float().mean().item()
        rows.append(row)
        if (epoch + 1) % config.train.checkpoint_every_epochs == 0:
            save_checkpoint(checkpoint_path, model, optimizer, rows, epoch + 1)
    return RunRecord(
        config=config,
        status=status,
        rows=rows,
        weights={name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
        diverged_at_step=diverged_at,
        seconds=time.perf_counter() - started,
        resumed_from_step=start,
        message=f"non-finite loss in epoch {diverged_at}" if diverged_at is not None else "",
    )


KIND = register_run_kind(RunKind("digits_mlp", DigitsMLPConfig, train))
