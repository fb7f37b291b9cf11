"""Metrics as TensorBoard scalars (the optional extra ``momentumlab[tensorboard]``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from momentumlab.loggers.optional import import_extra
from momentumlab.loggers.rows import scalar_row


class TensorBoardLogger:
    """Each value becomes a scalar event named by its key at its step, in event files under `log_dir`
    (through PyTorch's `SummaryWriter`; TensorBoard stores scalars as float32)."""

    def __init__(self, log_dir: Path | str):
        import_extra("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        step, row = scalar_row(step, values)
        for name, value in row.items():
            self._writer.add_scalar(name, value, global_step=step)

    def flush(self) -> None:
        """Write pending events to disk."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
