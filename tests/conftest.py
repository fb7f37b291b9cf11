"""Shared fixtures: tiny run configs and throwaway run stores (helpers in `helpers.py`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_config

from momentumlab.runs.feature_margin import FeatureMarginRunConfig
from momentumlab.store import RunStore

# The tests' tensors are tiny: one thread is several times faster than a contended pool of them on a
# small CI machine, and results are deterministic for a fixed thread count either way.
torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> Callable[..., FeatureMarginRunConfig]:
    """Factory: ``tiny_config("optimizer.name=ema_momentum", "optimizer.momentum=0.9")``."""
    return make_tiny_config


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    """An empty run store in a fresh temporary folder."""
    return RunStore(tmp_path / "store")
