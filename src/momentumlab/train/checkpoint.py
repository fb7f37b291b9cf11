"""Training checkpoints: model and optimizer state, the rows logged so far, and where to resume; and the
live metrics file those rows are appended to while a run trains.

A checkpoint file is `torch.save`'s bytes followed by a 44-byte trailer: ``MLCK``, the position (int64)
and the SHA-256 of the bytes before it. A checkpoint whose trailer or checksum does not match (truncated,
garbled, from an older version) is discarded with a warning: the run restarts from step 0 instead of
failing or resuming from a wrong state.

The rows reach a live CSV beside the checkpoint (:func:`metrics_path`) one block per checkpoint, each
block whole lines written, flushed and fsynced at once, so a reader can follow a run; a resumed run
first rewrites the file to exactly its checkpoint's rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import struct
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from momentumlab import atomic

MAGIC = b"MLCK"
TRAILER = struct.Struct("<4sq32s")  # magic, position, SHA-256 of the payload


def metrics_path(checkpoint: Path) -> Path:
    """The live metrics file of a checkpoint: `metrics.csv` beside the store's `checkpoint.pt`, else
    `<name>.metrics.csv`."""
    if checkpoint.name == "checkpoint.pt":
        return checkpoint.with_name("metrics.csv")
    return checkpoint.with_name(f"{checkpoint.stem}.metrics.csv")


def save_checkpoint(
    path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, rows: list[dict], position: int
) -> None:
    """Write a checkpoint atomically (nothing when `path` is None); `position` is the step or epoch reached.
    Then append the rows logged since the last checkpoint to the live metrics file."""
    if path is None:
        return
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rows": rows,
        "position": position,
    }
    payload = atomic.torch_bytes(state)
    atomic.write_bytes(path, payload + TRAILER.pack(MAGIC, position, hashlib.sha256(payload).digest()))
    _append_rows(metrics_path(path), rows)


def _verified_payload(path: Path) -> tuple[bytes, int] | None:
    """The checkpoint's torch bytes and position, or None (with a warning) when it does not verify."""
    data = path.read_bytes()
    if len(data) > TRAILER.size:
        magic, position, digest = TRAILER.unpack(data[-TRAILER.size :])
        payload = data[: -TRAILER.size]
        if magic == MAGIC and hashlib.sha256(payload).digest() == digest:
            return payload, position
    warnings.warn(f"checkpoint {path} is corrupt (its checksum does not match): discarded", stacklevel=3)
    return None


def load_checkpoint(
    path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[list[dict], int]:
    """Restore `model` and `optimizer` from `path` if it holds a verified checkpoint; return (rows, position)
    and rewrite the live metrics file to those rows. A corrupt checkpoint is deleted (start from 0)."""
    if path is None:
        return [], 0
    rows, position = [], 0
    verified = _verified_payload(path) if path.is_file() else None
    if verified is not None:
        state = torch.load(io.BytesIO(verified[0]), map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rows, position = state["rows"], state["position"]
    else:
        path.unlink(missing_ok=True)
    _rewrite_rows(metrics_path(path), rows)
    return rows, position


def checkpoint_position(path: Path | None) -> int:
    """The step or epoch a checkpoint at `path` resumes from (0 when there is none or it is corrupt)."""
    if path is None or not path.is_file():
        return 0
    verified = _verified_payload(path)
    return 0 if verified is None else verified[1]


def _columns(rows: list[dict]) -> list[str]:
    """Every key of `rows` in order of first appearance (the columns pandas gives them)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _csv(rows: list[dict], columns: list[str], header: bool) -> str:
    return pd.DataFrame(rows, columns=columns).to_csv(index=False, header=header, lineterminator="\n")


def _rewrite_rows(live: Path, rows: list[dict]) -> None:
    if rows:
        atomic.write_text(live, _csv(rows, _columns(rows), header=True))
    else:
        live.unlink(missing_ok=True)


def _append_rows(live: Path, rows: list[dict]) -> None:
    """Append the rows the live file lacks; rewrite it when it holds other rows or lacks a column."""
    header, written = [], 0
    if live.is_file():
        with open(live, newline="") as stream:
            lines = stream.read().splitlines()
        header = next(csv.reader(lines[:1]), [])
        written = len(lines) - 1
    new = rows[written:]
    if written < 0 or written > len(rows) or not set(_columns(new)) <= set(header):
        _rewrite_rows(live, rows)
    elif new:
        atomic.append_lines(live, _csv(new, header, header=False))
