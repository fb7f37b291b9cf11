"""Shared fixtures: tiny run configs (seconds or less on a CPU) and throwaway run stores."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from momentumlab.config import RunConfig, apply_overrides, validate
from momentumlab.store import RunStore

# The tests' tensors are tiny: one thread is several times faster than a contended pool of them on a
# small CI machine, and results are deterministic for a fixed thread count either way.
torch.set_num_threads(1)

# Small enough that a 60-step full-batch run takes well under a second, large enough that the
# feature–margin data has a few small-margin examples (μ = 0.02) and checkpoints fall mid-run.
TINY_RAW: dict[str, Any] = {
    "seed": 0,
    "data": {"n_train": 400, "n_test": 200, "n_val": 200, "dim": 10, "patches": 3},
    "model": {"width": 4},
    "optimizer": {"name": "gd", "lr": 0.5, "momentum": 0.0},
    "train": {"steps": 60, "log_every": 10, "checkpoint_every": 20},
}


def tiny_raw(*overrides: str) -> dict[str, Any]:
    """The tiny config as plain data, with dotted ``key=value`` overrides applied."""
    return apply_overrides(json.loads(json.dumps(TINY_RAW)), list(overrides))


def make_tiny_config(*overrides: str) -> RunConfig:
    return validate(RunConfig, tiny_raw(*overrides))


@pytest.fixture
def tiny_config() -> Callable[..., RunConfig]:
    """Factory: ``tiny_config("optimizer.name=ema_momentum", "optimizer.momentum=0.9")``."""
    return make_tiny_config


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    """An empty run store in a fresh temporary folder."""
    return RunStore(tmp_path / "store")


def fail_on_step(step: int) -> None:
    """An `on_step` that fails the test if training happens at all."""
    raise AssertionError(f"training was not expected, but step {step} ran")


def raise_at(step: int, error: type[BaseException] = RuntimeError) -> Callable[[int], None]:
    """An `on_step` that raises `error` just before `step` is taken."""

    def on_step(current: int) -> None:
        if current == step:
            raise error(f"interrupted at step {step}")

    return on_step
