"""How a probe evaluates a model without changing it: train/eval mode, buffers and random state.

A probe's forward pass runs with every module in the probe's `mode` ("eval" by default, as PyHessian:
BatchNorm uses its running statistics, dropout is off; "train": batch statistics and random dropout masks).
Afterwards each module's own training flag and the global random state (CPU, and the CUDA devices the
model lives on) are what they were before, and in train mode BatchNorm writes its running statistics into
copies (:func:`probe_buffers`), so the model's buffers are bit-identical before and after a probe.
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
    """Every module of `model` in `mode` inside the block; training flags and global RNG state restored after.

    With `seed`, random draws inside the block (dropout masks) start from it, so repeated forward passes
    of the same chunk see the same masks and a Hessian-vector product stays one symmetric operator.
    """
    check_mode(mode)
    flags = [(module, module.training) for module in model.modules()]
    devices = sorted({tensor.device.index or 0 for tensor in model.parameters() if tensor.is_cuda})
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
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
