"""The result of one training run: what its trainer produced and, once stored, where it lives."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

# pending: never started; interrupted: running, but its process is gone (it resumes); corrupt: its files do
# not verify (it retrains); busy: another process holds it (a sweep's report, never stored).
Status = Literal["pending", "running", "interrupted", "complete", "diverged", "failed", "corrupt", "busy"]
FINISHED: tuple[Status, ...] = ("complete", "diverged")


@dataclass
class RunRecord:
    """One run: its config, status, logged rows and final weights.

    A trainer returns it with `weights` set; the store fills `run_id` and `folder` and, when it reads a
    run back, leaves `weights` on disk until :meth:`load_weights` asks for them.
    """

    config: Any
    status: Status
    rows: list[dict[str, float]] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None
    diverged_at_step: int | None = None
    seconds: float = 0.0
    resumed_from_step: int = 0
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    folder: Path | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def metrics(self) -> pd.DataFrame:
        """The logged rows (step, loss, accuracies, theory quantities) as a DataFrame."""
        return pd.DataFrame(self.rows)

    def final(self) -> dict[str, float]:
        """The last logged row (empty for a run that diverged before its first row)."""
        return dict(self.rows[-1]) if self.rows else {}

    def load_weights(self) -> dict[str, torch.Tensor]:
        """The final weights: the trainer's, or the stored `weights.pt`."""
        if self.weights is None:
            self.weights = torch.load(self._file("weights.pt"), weights_only=True)
        return self.weights

    def environment(self) -> dict[str, Any]:
        """What produced the run: versions, code revision and machine (`environment.json`)."""
        return json.loads(self._file("environment.json").read_text())

    def _file(self, name: str) -> Path:
        if self.folder is None:
            raise FileNotFoundError(f"run {self.run_id or '(not stored)'} has no folder to read {name} from")
        return self.folder / name
