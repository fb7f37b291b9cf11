"""Tiny run configs (seconds or less on a CPU) and hooks that interrupt training, shared by the tests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from momentumlab.config import apply_overrides, validate
from momentumlab.runs.feature_margin import FeatureMarginRunConfig

# Small enough that a 60-step full-batch run takes well under a second, large enough that the
# feature–margin data has a few small-margin examples (μ = 0.02) and checkpoints fall mid-run.
TINY_RAW: dict[str, Any] = {
    "kind": "feature_margin",
    "seed": 0,
    "data": {"n_train": 400, "n_test": 200, "n_val": 200, "dim": 10, "patches": 3},
    "model": {"width": 4},
    "optimizer": {"name": "gd", "lr": 0.5, "momentum": 0.0},
    "train": {"steps": 60, "log_every": 10, "checkpoint_every": 20},
}


def tiny_raw(*overrides: str) -> dict[str, Any]:
    """The tiny config as plain data, with dotted ``key=value`` overrides applied."""
    return apply_overrides(json.loads(json.dumps(TINY_RAW)), list(overrides))


def make_tiny_config(*overrides: str) -> FeatureMarginRunConfig:
    return validate(FeatureMarginRunConfig, tiny_raw(*overrides))


def fail_on_step(step: int) -> None:
    """An `on_step` that fails the test if training happens at all."""
    raise AssertionError(f"training was not expected, but step {step} ran")


def raise_at(step: int, error: type[BaseException] = RuntimeError) -> Callable[[int], None]:
    """An `on_step` that raises `error` just before `step` is taken."""

    def on_step(current: int) -> None:
        if current == step:
            raise error(f"interrupted at step {step}")

    return on_step


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
NEVER = 10**9  # a log or checkpoint interval beyond any run: rows only at the first and last step


def on_device(config: Any, device: str, **train: Any) -> Any:
    """`config` with `train.device` = `device` and the other `train` fields given."""
    return config.model_copy(update={"train": config.train.model_copy(update={"device": device, **train})})


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's thread count set to `threads` inside the block, and put back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
