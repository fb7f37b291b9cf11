"""The ReLU mask applied to a stacked CNN's error: the C kernel against the torch path bit for bit, both
against the formula, on the padded, strided layout the students use."""

from __future__ import annotations

import pytest
import torch
from helpers import torch_threads

from momentumlab import native
from momentumlab.models import masked_error
from momentumlab.models.masked_error import mask_error, top_error

RUNS, CHANNELS, N, SPAN, KERNEL, LEFT = 3, 4, 7, 9, 5, 2
LENGTH = N * SPAN
NEEDS_KERNEL = pytest.mark.skipif(native.native_compiler() is None, reason="no C compiler")


def _map(generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """A hidden map after ReLU as the students lay it out: a (R, C, LENGTH) view into rows with k−1 more
    columns, with +0, −0, NaN and ∞ among its entries."""
    rows = torch.randn(RUNS, CHANNELS, LENGTH + KERNEL - 1, generator=generator, dtype=dtype).relu_()
    hidden = rows[..., LEFT : LEFT + LENGTH]
    hidden[0, 0, :4] = torch.tensor([-0.0, 0.0, float("nan"), float("inf")], dtype=dtype)
    return hidden


def _spread(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The error's buffer (zero) and its (R, C, LENGTH) view, k−1−left columns in."""
    spread = torch.zeros(RUNS, CHANNELS, LENGTH + KERNEL - 1, dtype=dtype)
    return spread, spread[..., KERNEL - 1 - LEFT : KERNEL - 1 - LEFT + LENGTH]


def _inputs(dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = _map(generator, dtype)
    readout = torch.randn(RUNS, CHANNELS, SPAN, generator=generator, dtype=dtype)
    readout[0, 0, 2] = -1.0  # −0 where the mask is 0 (h = NaN there)
    readout[1, 1, 3] = float("inf")  # NaN where the mask is 0
    g = torch.randn(RUNS, N, generator=generator, dtype=dtype)
    error = torch.randn(RUNS, CHANNELS, LENGTH, generator=generator, dtype=dtype)
    return hidden, readout, g, error


def _both_paths(function, monkeypatch):
    """`function()`'s result by the kernel and by torch (the kernel switched off)."""
    by_kernel = function()
    monkeypatch.setattr(masked_error, "_kernel", lambda: None)
    return by_kernel, function()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as bit patterns, except that any NaN equals any NaN (payloads are not specified)."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a[~nan].view(torch.int32), b[~nan].view(torch.int32))


def _top_error(dtype: torch.dtype, threads: int = 1) -> torch.Tensor:
    hidden, readout, g, _ = _inputs(dtype)
    spread, error = _spread(dtype)
    with torch_threads(threads):
        top_error(hidden, readout, g, error)
    return spread


def _mask_error(dtype: torch.dtype, threads: int = 1) -> torch.Tensor:
    hidden, _, _, error = _inputs(dtype)
    with torch_threads(threads):
        return mask_error(error, hidden)


@NEEDS_KERNEL
@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernels_top_error_has_the_torch_paths_bits(threads, monkeypatch):
    by_kernel, by_torch = _both_paths(lambda: _top_error(torch.float32, threads), monkeypatch)
    assert _same_bits(by_kernel, by_torch)
    assert by_kernel[..., : KERNEL - 1 - LEFT].eq(0).all()  # nothing written outside the view
    assert by_kernel[..., KERNEL - 1 - LEFT + LENGTH :].eq(0).all()


@NEEDS_KERNEL
@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernels_mask_error_has_the_torch_paths_bits(threads, monkeypatch):
    by_kernel, by_torch = _both_paths(lambda: _mask_error(torch.float32, threads), monkeypatch)
    assert _same_bits(by_kernel, by_torch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_error_is_the_mask_times_the_readout_times_g(dtype):
    hidden, readout, g, _ = _inputs(dtype)
    mask = (hidden > 0).to(dtype).view(RUNS, CHANNELS, N, SPAN)  # M = 1[h > 0]; 0 at NaN
    expected = mask * readout.unsqueeze(2) * g.view(RUNS, 1, N, 1)
    error = _top_error(dtype)[..., KERNEL - 1 - LEFT : KERNEL - 1 - LEFT + LENGTH]
    torch.testing.assert_close(error, expected.view(RUNS, CHANNELS, LENGTH), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mask_error_is_the_error_times_the_mask(dtype):
    hidden, _, _, error = _inputs(dtype)
    expected = error * (hidden > 0).to(dtype)
    torch.testing.assert_close(_mask_error(dtype), expected, rtol=0, atol=0, equal_nan=True)
