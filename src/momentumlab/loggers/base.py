"""The one interface every metric destination implements (a table, TensorBoard, W&B, MLflow)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable


@runtime_checkable
class MetricLogger(Protocol):
    """Receives rows of scalars, each at a training step, and releases its resources on `close`."""

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Record one row of scalars at `step`."""
        ...

    def close(self) -> None:
        """Write what is pending and release files or connections."""
        ...
