"""Metrics as a Weights & Biases run in offline mode (the optional extra ``momentumlab[wandb]``).

Offline runs never touch the network: the run is written under ``<dir>/wandb/offline-run-*`` and can be
uploaded later with ``wandb sync <run_folder>``. W&B's service process writes that folder in the
background; it is complete when the process exits (or after ``wandb.teardown()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from momentumlab.loggers.optional import import_extra
from momentumlab.loggers.rows import scalar_row


class WandbLogger:
    """One offline W&B run of `project` under `dir`; `config` (e.g. a run config) is stored with it.

    W&B keeps one history row per step and drops rows whose step is below one already logged, so
    steps must not decrease.
    """

    def __init__(
        self, project: str, dir: Path | str, name: str | None = None, config: Mapping[str, Any] | None = None
    ):
        wandb = import_extra("wandb", "wandb")
        Path(dir).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project,
            dir=str(dir),
            name=name,
            config=dict(config or {}),
            mode="offline",
            reinit="create_new",  # several loggers (or the user's own run) may be open in one process
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True),
        )
        self.run_folder = Path(self._run.dir).parent  # …/wandb/offline-run-<time>-<id>

    def log(self, step: int, values: Mapping[str, float]) -> None:
        step, row = scalar_row(step, values)
        self._run.log(row, step=step)

    def close(self) -> None:
        self._run.finish()
