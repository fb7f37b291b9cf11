"""The optimizer step of R stacked runs, each with its own momentum rule, in one pass over their rows.

Every rule of :mod:`momentumlab.optim.momentum` is one update with per-run coefficients:

    ∇' = ∇ + λθ,   b ← μ b + a ∇',   θ ← θ − η (c ∇' + e b)
    gd: (μ, a, c, e) = (0, 1, 1, 0);  ema_momentum: (γ, 1−γ, 0, 1);  heavy_ball: (μ, 1, 0, 1);
    nesterov: (μ, 1, 1, μ)

with λ the coupled weight decay (∇' is the gradient of L + (λ/2)‖θ‖²). The runs' parameters, momentum
buffers and gradients are rows of (R, P) tensors. On the CPU in float32 the step is the C kernel of
`stacked_update.c`, one pass where torch takes eight elementwise operations over the rows (for 32
one-hidden-layer students, P = 4097, on one thread: 0.06 ms against 0.21 ms, in a step of about 2 ms),
with the same bits: each product and sum is rounded as torch's operation for it rounds, in the same
order. Elsewhere, and with
``MOMENTUMLAB_NATIVE=0``, the step is those torch operations.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from momentumlab.native import load_kernel, raw_float32
from momentumlab.optim.momentum import OptimizerConfig


def update_coefficients(optimizer: OptimizerConfig) -> tuple[float, float, float, float]:
    """(μ, a, c, e) of b ← μb + a∇', θ ← θ − η(c∇' + e b) for the optimizer's rule."""
    momentum = optimizer.momentum
    return {
        "gd": (0.0, 1.0, 1.0, 0.0),
        "ema_momentum": (momentum, 1 - momentum, 0.0, 1.0),  # g ← γg + (1−γ)∇; θ ← θ − ηg
        "heavy_ball": (momentum, 1.0, 0.0, 1.0),  # b ← μb + ∇; θ ← θ − hb
        "nesterov": (momentum, 1.0, 1.0, momentum),  # b ← μb + ∇; θ ← θ − h(∇ + μb)
    }[optimizer.name]


def stacked_update(
    parameters: torch.Tensor,
    buffers: torch.Tensor,
    gradient: torch.Tensor,
    coefficients: torch.Tensor,
    weight_decay: torch.Tensor,
) -> None:
    """One step of every run, in place: θ `parameters` and b `buffers` (R, P) from ∇ `gradient` (R, P;
    it may be overwritten), `coefficients` (R, 5) of rows (η, μ, a, c, e) and λ `weight_decay` (R,)."""
    tensors = (parameters, buffers, gradient, coefficients, weight_decay)
    kernel = _kernel() if all(raw_float32(tensor) for tensor in tensors) else None
    if kernel is not None:
        runs, size = parameters.shape
        kernel.stacked_update(runs, size, *(tensor.data_ptr() for tensor in tensors))
        return
    lr, momentum, gradient_share, gradient_step, buffer_step = coefficients.T.unsqueeze(-1)
    gradient.addcmul_(parameters, weight_decay.unsqueeze(-1))  # ∇' = ∇ + λθ
    buffers.mul_(momentum).addcmul_(gradient, gradient_share)  # b ← μb + a∇'
    parameters.sub_((gradient * gradient_step + buffers * buffer_step) * lr)  # θ ← θ − η(c∇' + eb)


@functools.cache
def torch_fuses_addcmul() -> bool:
    """Whether torch's CPU `addcmul` rounds s + t₁t₂ once (a fused multiply-add), as it does where its
    kernels are built with FMA: which of the two roundings more of 4096 random float32 triples match."""
    generator = torch.Generator().manual_seed(0)
    s, t1, t2 = torch.randn(3, 4096, generator=generator)
    product = t1.double() * t2.double()  # exact
    fused = (s.double() + product).float()
    separate = (s.double() + product.float().double()).float()
    result = torch.addcmul(s, t1, t2)
    return int((result == fused).sum()) > int((result == separate).sum())


def _kernel() -> ctypes.CDLL | None:
    """The C kernel, rounding as torch does here, or None where native kernels are off or none builds."""
    kernel = load_kernel("optim/stacked_update.c", (("FUSED", int(torch_fuses_addcmul())),))
    if kernel is not None and kernel.stacked_update.argtypes is None:
        size, pointer = ctypes.c_long, ctypes.c_void_p
        kernel.stacked_update.argtypes = [size, size] + [pointer] * 5
        kernel.stacked_update.restype = None
    return kernel
