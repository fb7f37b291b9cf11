"""Random streams derived from a run's seed, in one place so that no two streams collide by accident.

A run's seed s draws its data from s itself; every other stream is a fixed function of s below, far
enough apart that the streams of different seeds do not coincide for any seed a user would pick.
"""

from __future__ import annotations

INITIALIZATION = 1_000_003  # model initialization: s + INITIALIZATION (independent of the data stream)
MINIBATCH_ORDER = 1_000_033  # the permutation of epoch e: s·MINIBATCH_ORDER + e
SHARPNESS_START = 1_000_037  # Lanczos start vector of the sharpness logged at step t: s·SHARPNESS_START + t
TEACHER_STREAMS = 3  # teacher data: inputs s·3, teacher s·3 + 1, median sample s·3 + 2
HELD_OUT_CORRUPTION = 1_000_039  # Figure 4's corrupted copy of every test image, after training: s + this
ORDER_SEED_OFFSET = 1000  # noise-level's minibatch order (one generator per run): s + ORDER_SEED_OFFSET


def initialization_seed(seed: int) -> int:
    return seed + INITIALIZATION


def held_out_corruption_seed(seed: int) -> int:
    return seed + HELD_OUT_CORRUPTION


def minibatch_order_seed(seed: int, epoch: int) -> int:
    return seed * MINIBATCH_ORDER + epoch


def sharpness_start_seed(seed: int, step: int) -> int:
    return seed * SHARPNESS_START + step
