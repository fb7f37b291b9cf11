"""How a probe evaluates a model without changing it: train/eval mode, buffers and random state.

A probe's forward pass runs with every module in the probe's `mode` ("eval" by default, as PyHessian:
BatchNorm uses its running statistics, dropout is off; "train": batch statistics and random dropout masks).
Afterwards each module's own training flag is what it was before, and in train mode BatchNorm writes its
running statistics into copies (:func:`probe_buffers`), so the model's buffers are bit-identical before and
after a probe. In train mode the global random state (CPU, and the CUDA devices the model lives on) is
restored too; in eval mode it is not touched at all (no module draws there), so a probe can run in a
thread beside training that draws from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

Mode = Literal["eval", "train"]
MODES: tuple[Mode, ...] = ("eval", "train")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: allowed are {', '.join(map(repr, MODES))}")


@contextmanager
def probe_mode(model: nn.Module, mode: Mode, seed: int | None = None) -> Iterator[None]:
    """Every module of `model` in `mode` inside the block; training flags (and in train mode the global RNG
    state) restored after.

    With `seed`, random draws inside the block in train mode (dropout masks) start from it, so repeated
    forward passes of the same chunk see the same masks and a Hessian-vector product stays one symmetric
    operator.
    """
    check_mode(mode)
    flags = [(module, module.training) for module in model.modules()]
    devices = sorted({tensor.device.index or 0 for tensor in model.parameters() if tensor.is_cuda})
    with torch.random.fork_rng(devices=devices, enabled=mode == "train"):
        if seed is not None and mode == "train":
            torch.manual_seed(seed)
        model.train(mode == "train")
        try:
            yield
        finally:
            for module, training in flags:
                module.training = training


def probe_buffers(model: nn.Module, mode: Mode) -> dict[str, torch.Tensor]:
    """The buffers to pass to ``functional_call``: copies in train mode (BatchNorm updates its running
    statistics in place there), the model's own in eval mode (read only)."""
    check_mode(mode)
    return {name: buffer.clone() if mode == "train" else buffer for name, buffer in model.named_buffers()}
