"""The ReLU's derivative M = 1[h > 0] applied to a stacked CNN student's back-propagated error.

Feature maps are (R, C, positions) with each (run, channel) row contiguous, as
:class:`~momentumlab.models.stacked_students.StackedStudents` lays them out. On the CPU in float32 each
function is one pass of the C kernel of `masked_error.c`, where torch takes three passes over the map
(M, then each product) for :func:`top_error` and two for :func:`mask_error` (a 1-CNN's δ_D at minibatch
100, 21 runs × 16 channels × 3 400 positions, 2 threads: 0.13 ms against 0.26 ms, in a 2.1–2.3 ms
step); the kernel rounds every product as torch does, in the same order, so the results have the same
bits (tested). Elsewhere, and with ``MOMENTUMLAB_NATIVE=0``, torch does it, taking
M in place in `hidden`, which the backward pass no longer needs.
"""

from __future__ import annotations

import ctypes

import torch

from momentumlab.native import load_kernel, openmp_usable, raw_float32


def top_error(hidden: torch.Tensor, readout: torch.Tensor, g: torch.Tensor, error: torch.Tensor) -> None:
    """δ_D = M_D ⊙ a ⊙ g into `error` (R, C, n·span), from the last hidden map `hidden` (R, C, n·span),
    the read-out weights a (R, C, span) and g_i = ∂L/∂f_i (R, n)."""
    (runs, channels, span), n = readout.shape, g.shape[1]
    kernel = _kernel() if _rows_fit(hidden, error) and raw_float32(readout) and raw_float32(g) else None
    if kernel is None:
        shape = (runs, channels, n, span)
        torch.mul(hidden.sign_().view(shape), readout.unsqueeze(2), out=error.view(shape))  # M_D ⊙ a
        error.view(shape).mul_(g.view(runs, 1, n, 1))  # ⊙ g
        return
    kernel.top_error(
        runs * channels, channels, n, span, hidden.data_ptr(), hidden.stride(1), readout.data_ptr(),
        g.data_ptr(), error.data_ptr(), error.stride(1), torch.get_num_threads(), openmp_usable(),
    )  # fmt: skip


def mask_error(error: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """δ ⊙ M in place in `error` (R, C, positions), M from the hidden map `hidden` of the same shape;
    returns `error`."""
    kernel = _kernel() if _rows_fit(hidden, error) else None
    if kernel is None:
        return error.mul_(hidden.sign_())
    runs, channels, length = error.shape
    kernel.mask_error(
        runs * channels, length, error.data_ptr(), error.stride(1), hidden.data_ptr(), hidden.stride(1),
        torch.get_num_threads(), openmp_usable(),
    )  # fmt: skip
    return error


def _rows_fit(*maps: torch.Tensor) -> bool:
    """Whether the kernel, which reads raw float rows, takes these (R, C, positions) maps: float32 on
    the CPU, each (run, channel) row contiguous and the rows evenly spaced, run after run."""
    return all(
        m.dtype == torch.float32
        and m.device.type == "cpu"
        and m.stride(2) == 1
        and m.stride(0) == m.shape[1] * m.stride(1)
        for m in maps
    )


def _kernel() -> ctypes.CDLL | None:
    """The C kernel, or None where native kernels are off or none builds."""
    kernel = load_kernel("models/masked_error.c", ())
    if kernel is not None and kernel.top_error.argtypes is None:
        size, pointer, flag = ctypes.c_long, ctypes.c_void_p, ctypes.c_int
        kernel.top_error.argtypes = [size] * 4 + [pointer, size, pointer, pointer, pointer, size, size, flag]
        kernel.mask_error.argtypes = [size, size, pointer, size, pointer, size, size, flag]
        kernel.top_error.restype = kernel.mask_error.restype = None
    return kernel
