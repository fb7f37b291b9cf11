"""Counting the host–device synchronizations of a training loop on a GPU.

A trainer on a GPU should wait for the device once per step (to read whether the step's objective was
finite) and never otherwise: every other sync stalls the host while the GPU drains its queue. torch's
sync debug mode warns at each synchronizing CUDA call (`.item()`, `.tolist()`, a blocking copy to or
from the host, `nonzero`, ...); :class:`SyncCounter` counts those warnings, and :meth:`SyncCounter.mark`,
given to a trainer as `on_step`, records the count at each step so that the syncs of each step can be
read off (:func:`syncs_per_mark`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import torch
from typing_extensions import Self

SYNC_WARNING = "called a synchronizing CUDA operation"  # torch's sync debug mode's message


class SyncCounter:
    """Inside `with SyncCounter() as syncs:`, `syncs.count` is the number of synchronizing CUDA calls
    made so far in the block; pass `syncs.mark` as a trainer's `on_step`."""

    def __enter__(self) -> Self:
        self._caught = warnings.catch_warnings(record=True)
        self._warnings = self._caught.__enter__()
        warnings.simplefilter("always")  # every sync, not one warning per line of code
        self._previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        self.marks: list[tuple[int, int]] = []
        return self

    def __exit__(self, *exception: object) -> None:
        torch.cuda.set_sync_debug_mode(self._previous)
        self._caught.__exit__(*exception)

    @property
    def count(self) -> int:
        return sum(SYNC_WARNING in str(warning.message) for warning in self._warnings)

    def mark(self, step: int) -> None:
        """Record (step, syncs so far): an `on_step` callback."""
        self.marks.append((step, self.count))

    def between_marks(self) -> list[tuple[int, int]]:
        """(step, syncs from its mark to the next mark) for every mark but the last."""
        return [(step, after - before) for (step, before), (_, after) in itertools.pairwise(self.marks)]


def syncs_per_mark(train: Callable[[Callable[[int], None]], object]) -> list[int]:
    """Syncs between successive `on_step` calls of `train(on_step)` on a GPU; the first interval (after the
    first logged row) and the last call (before the last row) are left out."""
    with SyncCounter() as syncs:
        train(syncs.mark)
    return [count for _, count in syncs.between_marks()[1:]]
