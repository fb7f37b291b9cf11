"""Search-direction noise and the degree of smoothing it implies (Sato & Iiduka, SPEC §3).

The noise of an optimizer x_{t+1} = x_t − η d_t is ω_t = d_t − ∇f(x_t): the gap between its search
direction and the full gradient of the training loss f = (1/N) Σ_i f_i, not the variance of the stochastic
gradient alone. Search directions (g_t the minibatch gradient, m_{−1} = 0):

- SGD:   d_t = g_t
- SHB:   m_t = β m_{t−1} + g_t,          d_t = m_t   (PyTorch's form, :class:`~momentumlab.optim.HeavyBall`)
- NSHB:  m_t = β m_{t−1} + (1 − β) g_t,  d_t = m_t   (EMA form, :class:`~momentumlab.optim.EMAMomentum`)

The theory's δ (:func:`smoothing_degree`) bounds η√E‖ω_t‖² with two constants: C², a bound on the variance
E_i‖∇f_i(x) − ∇f(x)‖² of a single-sample gradient, and K, a bound on ‖∇f(x)‖. :func:`gradient_statistics`
measures both quantities at a point from per-sample gradients (torch.func ``vmap(grad(...))`` over
memory-bounded chunks); a bound over a run is the maximum of these measurements along it, which can miss a
larger value between measurement points.

Functions act on flat parameter vectors in ``model.parameters()`` order (see :func:`flat_model_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from momentumlab.probes.model_state import Mode, check_mode, probe_buffers, probe_mode

Method = Literal["sgd", "shb", "nshb"]
METHODS: tuple[Method, ...] = ("sgd", "shb", "nshb")
FlatLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, inputs, targets) -> mean


def flat_model_loss(
    model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mode: Mode = "eval"
) -> tuple[FlatLoss, torch.Tensor]:
    """(x, inputs, targets) ↦ loss_fn(model with parameters x (inputs), targets), and the model's current x.

    x is flat in ``model.parameters()`` order; the model itself is left untouched: the forward pass runs
    in `mode` with the buffers of :func:`~momentumlab.probes.model_state.probe_buffers` (BatchNorm in eval
    mode reads its running statistics, which is what per-sample gradients of a BN model need).
    """
    check_mode(mode)
    names = [name for name, _ in model.named_parameters()]
    parameters = [parameter.detach() for parameter in model.parameters()]
    sizes = [parameter.numel() for parameter in parameters]

    def loss(flat: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        views = {name: view.view_as(p) for name, view, p in zip(names, flat.split(sizes), parameters)}
        with probe_mode(model, mode):
            outputs = functional_call(model, {**views, **probe_buffers(model, mode)}, (inputs,))
        return loss_fn(outputs, targets)

    return loss, torch.cat([parameter.reshape(-1) for parameter in parameters])


def search_direction(
    method: Method, momentum: float, buffer: torch.Tensor, gradient: torch.Tensor
) -> torch.Tensor:
    """d_t from the stochastic gradient g_t and the previous buffer m_{t−1} (zeros at t = 0).

    For SHB and NSHB d_t = m_t is also the next buffer; SGD ignores the buffer and the momentum.
    """
    if method == "sgd":
        return gradient  # d_t = g_t
    if method == "shb":
        return momentum * buffer + gradient  # m_t = β m_{t−1} + g_t
    if method == "nshb":
        return momentum * buffer + (1 - momentum) * gradient  # m_t = β m_{t−1} + (1 − β) g_t
    raise ValueError(f"method={method!r}: allowed are {', '.join(map(repr, METHODS))}")


def search_noise(direction: torch.Tensor, full_gradient: torch.Tensor) -> torch.Tensor:
    """ω_t = d_t − ∇f(x_t)."""
    return direction - full_gradient


def _chunks(count: int, chunk_size: int | None) -> list[slice]:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be a positive number of examples, or None")
    size = count if chunk_size is None else chunk_size
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def full_gradient(
    loss: FlatLoss,
    point: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """∇f(x) of the mean loss over all of (`inputs`, `targets`), one chunk's graph at a time.

    Each chunk's gradient of its mean is weighted by chunk size / N; the sum equals the full batch's
    gradient up to rounding. Without `chunk_size` the dataset is one chunk.
    """
    count = len(inputs)
    gradient = torch.zeros_like(point)
    for chunk in _chunks(count, chunk_size):
        chunk_gradient = grad(loss)(point, inputs[chunk], targets[chunk])
        gradient.add_(chunk_gradient, alpha=(chunk.stop - chunk.start) / count)  # weight N_chunk / N
    return gradient


@dataclass(frozen=True)
class GradientStatistics:
    """The full gradient at a point and the variance of a single-sample gradient there."""

    full_gradient: torch.Tensor  # ∇f(x) = (1/N) Σ_i ∇f_i(x)
    variance: float  # C²(x) = (1/N) Σ_i ‖∇f_i(x) − ∇f(x)‖²

    @property
    def gradient_norm(self) -> float:
        """‖∇f(x)‖, whose maximum along a run estimates K."""
        return self.full_gradient.norm().item()


def gradient_statistics(
    loss: FlatLoss,
    point: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 256,
    population: int | None = None,
) -> GradientStatistics:
    """∇f(x) and C²(x) from the N per-sample gradients ∇f_i(x), computed `chunk_size` at a time.

    `loss` must be the mean over its batch, so that f_i is the loss on example i alone. Sums are kept in
    float64: C² = (1/N) Σ_i ‖∇f_i‖² − ‖∇f‖² then loses nothing to cancellation beyond the per-sample
    gradients' own rounding.

    With `population` = M > N, the N examples are a uniform random subset, drawn without replacement, of a
    set of M: the mean is then the subset's (an unbiased estimate of the set's ∇f) and the variance is
    (M−1)/M · s², s² = Σ_i ‖∇f_i − ∇f‖² / (N−1), an unbiased estimate of the set's C².
    """

    def single(x: torch.Tensor, one_input: torch.Tensor, one_target: torch.Tensor) -> torch.Tensor:
        return loss(x, one_input[None], one_target[None])  # f_i

    per_sample = vmap(grad(single), in_dims=(None, 0, 0))
    count = len(inputs)
    total = torch.zeros(point.shape, dtype=torch.float64, device=point.device)
    squared_norms = 0.0
    for chunk in _chunks(count, chunk_size):
        gradients = per_sample(point, inputs[chunk], targets[chunk]).double()  # (chunk, dim): ∇f_i
        total += gradients.sum(0)
        squared_norms += (gradients**2).sum().item()
    mean = total / count  # ∇f
    variance = squared_norms / count - (mean**2).sum().item()  # C² = E_i‖∇f_i‖² − ‖∇f‖²
    if population is not None and population != count:
        if not 2 <= count < population:
            raise ValueError(f"population={population}: must exceed the {count} examples given, and N ≥ 2")
        variance *= count / (count - 1) * (population - 1) / population  # (M−1)/M · s², unbiased for C²
    # rounding can take an exact zero to about −1e-16·E_i‖∇f_i‖²; that is the only case max() changes
    return GradientStatistics(mean.to(point.dtype), max(variance, 0.0))


def per_sample_gradients(
    loss: FlatLoss,
    point: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 256,
) -> torch.Tensor:
    """The N per-sample gradients ∇f_i(x) as rows of an (N, d) float64 tensor, `chunk_size` at a time.

    For measuring the noise of many minibatch sizes at one point (:func:`minibatch_noise_norms`); holds
    N·d numbers, where :func:`gradient_statistics` holds one chunk's.
    """

    def single(x: torch.Tensor, one_input: torch.Tensor, one_target: torch.Tensor) -> torch.Tensor:
        return loss(x, one_input[None], one_target[None])  # f_i

    per_sample = vmap(grad(single), in_dims=(None, 0, 0))
    return torch.cat(
        [
            per_sample(point, inputs[chunk], targets[chunk]).double()
            for chunk in _chunks(len(inputs), chunk_size)
        ]
    )


def minibatch_noise_norms(
    gradients: torch.Tensor, batch_size: int, draws: int, generator: torch.Generator
) -> torch.Tensor:
    """‖g_B − ∇f‖ for `draws` minibatches B of b = `batch_size` examples drawn without replacement (each
    a fresh uniform subset), g_B = (1/b) Σ_{i∈B} ∇f_i, from the per-sample `gradients` (rows) at one point.
    """
    count = len(gradients)
    if not 1 <= batch_size <= count or draws < 1:
        raise ValueError(
            f"batch_size={batch_size}, draws={draws}: allowed 1 ≤ batch_size ≤ {count}, draws ≥ 1"
        )
    mean = gradients.mean(0)  # ∇f
    norms = torch.empty(draws, dtype=torch.float64)
    for draw in range(draws):
        batch = torch.randperm(count, generator=generator)[:batch_size]
        norms[draw] = (gradients[batch].mean(0) - mean).norm()  # ‖ω‖ = ‖g_B − ∇f‖
    return norms


def finite_population_noise(variance: float, batch_size: int, count: int) -> float:
    """E‖g_B − ∇f‖² = (C²/b)(N − b)/(N − 1) for B of b examples drawn without replacement from N, with
    C² = (1/N) Σ_i ‖∇f_i − ∇f‖² (the variance of a mean of a simple random sample)."""
    if not 1 <= batch_size <= count or count < 2:
        raise ValueError(f"batch_size={batch_size}, count={count}: allowed 1 ≤ batch_size ≤ count, count ≥ 2")
    return variance / batch_size * (count - batch_size) / (count - 1)  # (C²/b)(N − b)/(N − 1)


def momentum_factor(beta: float) -> float:
    """β̂ = β(β² − β + 1)/(1 − β)², SHB's weight on C²/b + K² in δ²/η²."""
    _check_momentum(beta)
    return beta * (beta**2 - beta + 1) / (1 - beta) ** 2


def smoothing_degree(
    method: Method, lr: float, batch_size: float, momentum: float, variance: float, gradient_bound: float
) -> float:
    """The theory's δ for η = `lr`, b = `batch_size`, β = `momentum`, C² = `variance`, K = `gradient_bound`.

    SGD:  δ = η C/√b
    SHB:  δ = η √(C²/b + β̂ (C²/b + K²)),  β̂ = β(β² − β + 1)/(1 − β)²
    NSHB: δ = η √(C²/b + 4β² (C²/b + K²))
    """
    if not lr > 0 or not batch_size > 0:
        raise ValueError(f"lr={lr}, batch_size={batch_size}: both must be positive")
    if variance < 0 or gradient_bound < 0:
        raise ValueError(f"variance={variance}, gradient_bound={gradient_bound}: both must be non-negative")
    per_batch = variance / batch_size  # C²/b
    if method == "sgd":
        return lr * math.sqrt(per_batch)  # δ = ηC/√b
    if method == "shb":
        return lr * math.sqrt(per_batch + momentum_factor(momentum) * (per_batch + gradient_bound**2))
    if method == "nshb":
        _check_momentum(momentum)
        return lr * math.sqrt(per_batch + 4 * momentum**2 * (per_batch + gradient_bound**2))
    raise ValueError(f"method={method!r}: allowed are {', '.join(map(repr, METHODS))}")


def _check_momentum(beta: float) -> None:
    if not 0 <= beta < 1:
        raise ValueError(f"momentum={beta}: must lie in [0, 1)")
