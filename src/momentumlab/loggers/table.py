"""Metrics as a tidy table (one row per step and name), kept in memory and saved as Parquet."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from momentumlab import atomic
from momentumlab.loggers.rows import scalar_row


class TableLogger:
    """Rows of scalars as a tidy table with columns step, name, value (see :meth:`frame`).

    With a `path`, :meth:`flush` and :meth:`close` write the whole table there as Parquet, atomically
    (a reader sees the previous complete table or the new one); a logger opened on an existing path
    starts a new table. Without a path the table stays in memory.
    """

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else None
        self._steps: list[int] = []
        self._names: list[str] = []
        self._values: list[float] = []

    def log(self, step: int, values: Mapping[str, float]) -> None:
        step, row = scalar_row(step, values)
        for name, value in row.items():
            self._steps.append(step)
            self._names.append(name)
            self._values.append(value)

    def frame(self) -> pd.DataFrame:
        """Everything logged so far, in logging order: step (int64), name (str), value (float64)."""
        return pd.DataFrame(
            {
                "step": np.array(self._steps, dtype=np.int64),
                "name": pd.Series(self._names, dtype=str),
                "value": np.array(self._values, dtype=np.float64),
            }
        )

    def flush(self) -> None:
        """Write the table to `path` (nothing to do without one)."""
        if self.path is not None:
            frame = self.frame()
            atomic.atomic_write(self.path, lambda stream: frame.to_parquet(stream, index=False))

    def close(self) -> None:
        self.flush()
