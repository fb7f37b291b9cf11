"""Training checkpoints: model and optimizer state, the rows logged so far, and where to resume."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from momentumlab import atomic


def save_checkpoint(
    path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, rows: list[dict], position: int
) -> None:
    """Write a checkpoint atomically (nothing when `path` is None); `position` is the step or epoch reached."""
    if path is not None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rows": rows,
            "position": position,
        }
        atomic.save_torch(path, state)


def load_checkpoint(
    path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[list[dict], int]:
    """Restore `model` and `optimizer` from `path` if it holds a checkpoint; return (rows, position)."""
    if path is None or not path.is_file():
        return [], 0
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["rows"], state["position"]


def checkpoint_position(path: Path | None) -> int:
    """The step or epoch a checkpoint at `path` resumes from (0 when there is none)."""
    if path is None or not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["position"])
