"""The noise covariance of the EMA momentum buffer under i.i.d. gradient noise (Ghosh et al., SPEC §2).

With stochastic gradients ĝ = ∇E(x) + ξ, ξ i.i.d. N(0, Σ), the buffer g ← βg + (1−β)ĝ averages the
noise with weights (1−β)β^{k−r}; in the stationary regime its noise has covariance (1−β)/(1+β)·Σ
(:func:`ema_variance_ratio`). :func:`simulate_buffers` runs EMA momentum SGD on a
:class:`~momentumlab.data.landscapes.NoisyQuadratic` for many independent chains at once and measures
the buffer's covariance across chains; :class:`BufferStatistics` summarizes it relative to Σ.
:func:`start_transient` follows the buffer's first steps from its two usual starts, zero (the EMA of
Jelassi & Li) and the first stochastic gradient (`torch.optim.SGD`'s first step), beside their closed
forms (:func:`start_bias`, :func:`start_variance_ratio`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from momentumlab.data.landscapes import NoisyQuadratic


def ema_variance_ratio(beta: float) -> float:
    """(1−β)/(1+β): stationary variance of the EMA (1−β)Σ_r β^{k−r} ξ_r of unit-variance i.i.d. ξ."""
    return (1 - beta) / (1 + beta)


@dataclass(frozen=True)
class BufferStatistics:
    """Whitened second moments of one buffer, centred across chains at every recorded step."""

    per_chain: Tensor  # (B, chains): each chain's time average of vᵀΣ⁻¹v/d, v = buffer − mean over chains
    whitened_covariance: Tensor  # (B, d, d): L⁻¹CL⁻ᵀ (LLᵀ = Σ), pooled over chains and steps

    @staticmethod
    def pool(parts: Sequence[BufferStatistics]) -> BufferStatistics:
        """Statistics of independent batches of equally many chains taken together."""
        return BufferStatistics(
            torch.cat([part.per_chain for part in parts], 1),
            torch.stack([part.whitened_covariance for part in parts]).mean(0),
        )

    @property
    def ratio(self) -> Tensor:
        """tr(Σ⁻¹C)/d for each β: the mean eigenvalue of Σ^{-1/2}CΣ^{-1/2}."""
        return self.per_chain.mean(1)

    @property
    def standard_error(self) -> Tensor:
        """Standard error of the ratio: spread of the independent chains' time averages over √chains."""
        return self.per_chain.std(1) / math.sqrt(self.per_chain.shape[1])

    @property
    def whitened_eigenvalues(self) -> Tensor:
        """Eigenvalues of Σ^{-1/2}CΣ^{-1/2} for each β, ascending; all equal the ratio if C ∝ Σ."""
        return torch.linalg.eigvalsh(self.whitened_covariance)


def simulate_buffers(
    problem: NoisyQuadratic,
    betas: Sequence[float],
    learning_rate: float,
    start: Tensor,
    chains: int,
    burn_in: int,
    steps: int,
    generator: torch.Generator,
) -> dict[str, BufferStatistics]:
    """EMA momentum SGD x ← x − ηg for len(betas) × chains independent runs from `start`; η = 0 holds x
    fixed. After `burn_in` steps, `steps` steps are recorded.

    Returns the statistics of the buffer g ("buffer") and of its noise part m ← βm + (1−β)ξ
    ("noise part"), the EMA of the very ξ that drive the run, so that g = EMA(∇E(x_k)) + m exactly.
    """
    if chains < 2:
        raise ValueError(f"chains = {chains}: centring across chains needs at least 2")
    if steps < 1:
        raise ValueError(f"steps = {steps}: at least one step must be recorded")
    beta = torch.tensor(betas, dtype=torch.float64)[:, None, None]
    x = start.expand(len(betas), chains, problem.dim).clone()
    buffer = torch.zeros_like(x)
    noise_part = torch.zeros_like(x)
    whitening = torch.linalg.inv(problem.noise_factor)  # L⁻¹
    norms = {"buffer": torch.zeros(len(betas), chains, dtype=torch.float64)}
    norms["noise part"] = torch.zeros_like(norms["buffer"])
    outer = {key: torch.zeros(len(betas), problem.dim, problem.dim, dtype=torch.float64) for key in norms}
    for k in range(burn_in + steps):
        noise = problem.noise((len(betas), chains), generator)  # ξ
        buffer = beta * buffer + (1 - beta) * (problem.gradient(x) + noise)  # g ← βg + (1−β)(Ax + ξ)
        noise_part = beta * noise_part + (1 - beta) * noise  # m ← βm + (1−β)ξ
        x = x - learning_rate * buffer
        if k < burn_in:
            continue
        for key, value in (("buffer", buffer), ("noise part", noise_part)):
            whitened = (value - value.mean(1, keepdim=True)) @ whitening.T  # L⁻¹v
            norms[key] += (whitened**2).sum(-1)
            outer[key] += whitened.transpose(1, 2) @ whitened
    unbiased = chains / (chains - 1)  # centring by the mean over chains removes one chain's worth
    return {
        key: BufferStatistics(
            norms[key] * unbiased / (steps * problem.dim), outer[key] * unbiased / (steps * chains)
        )
        for key in norms
    }


BufferStart = Literal["zero", "first gradient"]
BUFFER_STARTS: tuple[BufferStart, ...] = ("zero", "first gradient")


def start_bias(beta: float, step: int, start: BufferStart) -> float:
    """‖E[g_t] − ∇E‖/‖∇E‖ at a fixed point: β^{t+1} for g_{−1} = 0 (E[g_t] = (1 − β^{t+1})∇E), 0 for
    g_0 = ĝ_0, the first stochastic gradient (`torch.optim.SGD`'s first-step buffer)."""
    return beta ** (step + 1) if start == "zero" else 0.0


def start_variance_ratio(beta: float, step: int, start: BufferStart) -> float:
    """Cov(g_t) / Σ at a fixed point under i.i.d. noise, step t ≥ 0 from each start.

    From zero, g_t = (1−β)Σ_{r=0}^{t} β^{t−r}ĝ_r: (1−β)/(1+β)·(1 − β^{2(t+1)}), rising to the stationary
    value; from the first gradient, g_t = β^t ĝ_0 + (1−β)Σ_{r=1}^{t} β^{t−r}ĝ_r:
    β^{2t} + (1−β)/(1+β)·(1 − β^{2t}), falling to it from the full Σ.
    """
    stationary = ema_variance_ratio(beta)
    if start == "zero":
        return stationary * (1 - beta ** (2 * (step + 1)))
    return beta ** (2 * step) + stationary * (1 - beta ** (2 * step))


def start_transient(
    problem: NoisyQuadratic,
    betas: Sequence[float],
    point: Tensor,
    chains: int,
    steps: int,
    generator: torch.Generator,
) -> dict[BufferStart, tuple[Tensor, Tensor]]:
    """The EMA buffer g_t = βg_{t−1} + (1−β)ĝ_t at the fixed point x = `point` for t = 0 … steps−1, from
    both starts on the same noise draws: g_{−1} = 0, and g_0 = ĝ_0 (`torch.optim.SGD(momentum=β,
    dampening=β)` sets its buffer to the first gradient). Per start, (bias, variance) of shape
    (len(betas), steps): the relative bias ‖mean over chains of g_t − ∇E‖/‖∇E‖ and tr(Σ⁻¹C_t)/d with C_t
    the covariance across chains. The two buffers differ by exactly β^{t+1}ĝ_0 on every chain.
    """
    if chains < 2:
        raise ValueError(f"chains = {chains}: a covariance across chains needs at least 2")
    beta = torch.tensor(betas, dtype=torch.float64)[:, None, None]
    mean_gradient = problem.gradient(point)  # ∇E(x), the same at every step
    whitening = torch.linalg.inv(problem.noise_factor)  # L⁻¹
    buffers: dict[BufferStart, Tensor] = {}
    statistics: dict[BufferStart, tuple[list[Tensor], list[Tensor]]] = {s: ([], []) for s in BUFFER_STARTS}
    for step in range(steps):
        gradient = mean_gradient + problem.noise((len(betas), chains), generator)  # ĝ_t
        if step == 0:
            buffers = {"zero": (1 - beta) * gradient, "first gradient": gradient.clone()}
        else:
            buffers = {s: beta * g + (1 - beta) * gradient for s, g in buffers.items()}  # g ← βg + (1−β)ĝ
        for start, buffer in buffers.items():
            mean = buffer.mean(1)
            bias = (mean - mean_gradient).norm(dim=-1) / mean_gradient.norm()
            whitened = (buffer - mean[:, None]) @ whitening.T  # L⁻¹(g − mean)
            variance = (whitened**2).sum((1, 2)) / ((chains - 1) * problem.dim)
            statistics[start][0].append(bias)
            statistics[start][1].append(variance)
    return {start: (torch.stack(b, 1), torch.stack(v, 1)) for start, (b, v) in statistics.items()}
