"""Reproduction `momentum-variance`: the momentum average damps i.i.d. gradient noise by (1−β)/(1+β).

Ghosh et al. (SPEC §2): with i.i.d. gradient noise of covariance Σ, the EMA momentum buffer
g ← βg + (1−β)ĝ has covariance (1−β)/(1+β)·Σ. The buffer also carries the deterministic gradient Ax,
which moves with the iterates, so we say exactly what is measured. On a noisy quadratic
E(x) = ½ xᵀAx with stochastic gradients ĝ = Ax + ξ, ξ ~ N(0, Σ), many independent chains run in one
batched computation, and at every recorded step each buffer is centred by its mean across chains:

- *buffer at a fixed point* (η = 0, x = x0 ≠ 0 for ever): the paper's quantity, the covariance over
  noise draws of the history-weighted gradient at one point; Ax0 is a constant and drops out.
- *noise part along the trajectory* (EMA momentum x ← x − ηg): m ← βm + (1−β)ξ, the EMA of the very ξ
  that drive the run, so that g = EMA(Ax_k) + m exactly.
- *full buffer along the trajectory*: g itself, which also holds EMA(Ax_k); the iterates' noise-driven
  spread enters through it, so this one is reported, not claimed, and differs from the prediction by
  an amount that grows with η and with β.

Each covariance C is summarized by the whitened ratio tr(Σ⁻¹C)/d (the mean eigenvalue of
Σ^{-1/2}CΣ^{-1/2}, which is (1−β)/(1+β) in every direction when C = (1−β)/(1+β)·Σ); its standard error
comes from the spread of the per-chain time averages, the chains being independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from momentumlab import atomic
from momentumlab.claims import Claim
from momentumlab.data.landscapes import NoisyQuadratic
from momentumlab.experiments.base import ReproductionOptions, ReproductionResult
from momentumlab.report import claims_table, save_figure
from momentumlab.store import RunStore
from momentumlab.threads import single_thread

NAME = "momentum-variance"
TITLE = "The momentum buffer's noise covariance is (1−β)/(1+β) times the gradient noise's (Ghosh et al.)"
BETAS = (0.5, 0.9, 0.99)
DIM = 10
PROBLEM_SEED = 0  # fixes the noise covariance's eigenbasis; options.seeds drive the noise draws
DEFAULT_SEEDS = (0,)
CHAINS = 1000  # per seed
BURN_IN = 1000  # 10/(1 − β) for β = 0.99: the zero-start bias of the variance is β^(2·1000) ≈ 2e-9
STEPS = 2000  # recorded steps per chain after burn-in, 20/(1 − β) for β = 0.99
LEARNING_RATE = 0.01  # η of the EMA momentum run; A's spectrum [0.5, 2] makes it relax in ~200 steps
TOLERANCE = 0.10
FIXED_POINT = "buffer at a fixed point (η = 0)"
NOISE_PART = f"noise part along the trajectory (η = {LEARNING_RATE})"
FULL_BUFFER = f"full buffer along the trajectory (η = {LEARNING_RATE})"
STYLES = {FIXED_POINT: ("#00798c", "o"), NOISE_PART: ("#30638e", "s"), FULL_BUFFER: ("#d1495b", "^")}


def noisy_problem(dim: int = DIM) -> NoisyQuadratic:
    """A diagonal, entries log-spaced in [0.5, 2]; Σ: eigenvalues log-spaced in [0.1, 10], random basis."""
    generator = torch.Generator().manual_seed(PROBLEM_SEED)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    curvatures = torch.logspace(math.log10(0.5), math.log10(2.0), dim, dtype=torch.float64)
    noise_variances = torch.logspace(-1, 1, dim, dtype=torch.float64)
    return NoisyQuadratic.from_spectra(curvatures, noise_variances, basis)


def predicted_ratio(beta: float) -> float:
    """(1−β)/(1+β): stationary variance of the EMA (1−β)Σ_r β^{k−r} ξ_r of unit-variance i.i.d. ξ."""
    return (1 - beta) / (1 + beta)


@dataclass(frozen=True)
class BufferStatistics:
    """Whitened second moments of one buffer, centred across chains at every recorded step."""

    per_chain: Tensor  # (B, chains): each chain's time average of vᵀΣ⁻¹v/d, v = buffer − mean over chains
    whitened_covariance: Tensor  # (B, d, d): L⁻¹CL⁻ᵀ (LLᵀ = Σ), pooled over chains and steps

    @staticmethod
    def pool(parts: list[BufferStatistics]) -> BufferStatistics:
        """Statistics of independent batches of equally many chains taken together."""
        return BufferStatistics(
            torch.cat([part.per_chain for part in parts], 1),
            torch.stack([part.whitened_covariance for part in parts]).mean(0),
        )

    @property
    def ratio(self) -> Tensor:
        """tr(Σ⁻¹C)/d for each β."""
        return self.per_chain.mean(1)

    @property
    def standard_error(self) -> Tensor:
        """Standard error of the ratio: spread of the independent chains' time averages over √chains."""
        return self.per_chain.std(1) / math.sqrt(self.per_chain.shape[1])

    @property
    def whitened_eigenvalues(self) -> Tensor:
        """Eigenvalues of Σ^{-1/2}CΣ^{-1/2} for each β, ascending; all equal the ratio if C ∝ Σ."""
        return torch.linalg.eigvalsh(self.whitened_covariance)


@single_thread()
def simulate(
    problem: NoisyQuadratic,
    betas: tuple[float, ...],
    learning_rate: float,
    start: Tensor,
    chains: int,
    burn_in: int,
    steps: int,
    generator: torch.Generator,
) -> dict[str, BufferStatistics]:
    """EMA momentum SGD for len(betas) × chains independent runs from `start`; η = 0 holds x fixed.

    Returns the statistics of the buffer g ("buffer") and of its noise part m ("noise part").
    """
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


def _plot(measured: dict[str, BufferStatistics], path: Path) -> Path:
    """Measured and predicted ratio against 1 − β, and the relative deviation with the ±10% band."""
    one_minus = torch.tensor([1 - b for b in BETAS])
    predicted = torch.tensor([predicted_ratio(b) for b in BETAS])
    grid = torch.logspace(math.log10(0.004), math.log10(0.7), 200)  # 1 − β, so (1−β)/(1+β) = grid/(2 − grid)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    left.plot(grid, grid / (2 - grid), color="black", linewidth=1.2, label="prediction (1−β)/(1+β)")
    right.axhspan(-TOLERANCE, TOLERANCE, color="0.9", label=f"±{TOLERANCE:.0%} (claim)")
    right.axhline(0, color="black", linewidth=1)
    for offset, (label, statistics) in zip((0.9, 1.0, 1.1), measured.items()):
        color, marker = STYLES[label]
        x = one_minus * offset
        left.errorbar(
            x,
            statistics.ratio,
            yerr=2 * statistics.standard_error,
            color=color,
            marker=marker,
            linestyle="none",
            markersize=7,
            label=label,
        )
        right.errorbar(
            x,
            statistics.ratio / predicted - 1,
            yerr=2 * statistics.standard_error / predicted,
            color=color,
            marker=marker,
            linestyle="none",
            markersize=7,
            capsize=3,
            label=label,
        )
    eigenvalues = measured[FIXED_POINT].whitened_eigenvalues / predicted[:, None] - 1
    right.vlines(
        one_minus * 0.9,
        eigenvalues[:, 0],
        eigenvalues[:, -1],
        color=STYLES[FIXED_POINT][0],
        alpha=0.35,
        linewidth=6,
        label="fixed point: range over whitened directions",
    )
    left.set_yscale("log")
    left.set_ylabel("tr(Σ⁻¹ Cov(buffer)) / d")
    left.set_title("momentum-buffer covariance over gradient-noise covariance", fontsize=10)
    right.set_ylabel("measured / predicted − 1")
    right.set_title("relative deviation (error bars ±2 standard errors)", fontsize=10)
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("1 − β")
        axis.set_xticks(one_minus.tolist(), [f"{1 - b:g}\n(β = {b})" for b in BETAS])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save_figure(figure, path)
    return path


def run(
    store: RunStore,
    out_dir: Path,
    options: ReproductionOptions,
    chains: int = CHAINS,
    burn_in: int = BURN_IN,
    steps: int = STEPS,
) -> ReproductionResult:
    """Measure the three covariance ratios for every β, then write the figure, claims.json and the section."""
    seeds = options.seeds or DEFAULT_SEEDS
    problem = noisy_problem()
    start = torch.ones(problem.dim, dtype=torch.float64)  # x0, where ∇E(x0) = Ax0 ≠ 0
    parts: dict[str, list[BufferStatistics]] = {FIXED_POINT: [], NOISE_PART: [], FULL_BUFFER: []}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)  # both runs draw from it in turn: independent noise
        fixed = simulate(problem, BETAS, 0.0, start, chains, burn_in, steps, generator)
        moving = simulate(problem, BETAS, LEARNING_RATE, start, chains, burn_in, steps, generator)
        parts[FIXED_POINT].append(fixed["buffer"])
        parts[NOISE_PART].append(moving["noise part"])
        parts[FULL_BUFFER].append(moving["buffer"])
    measured = {label: BufferStatistics.pool(group) for label, group in parts.items()}
    predicted = [predicted_ratio(b) for b in BETAS]

    def deviation(label: str) -> list[float]:
        return [abs(r / p - 1) for r, p in zip(measured[label].ratio.tolist(), predicted)]

    def detail(label: str) -> dict[str, dict[str, float]]:
        statistics = measured[label]
        return {
            str(b): {
                "ratio": float(statistics.ratio[i]),
                "predicted": predicted[i],
                "standard_error": float(statistics.standard_error[i]),
            }
            for i, b in enumerate(BETAS)
        }

    claims = [
        Claim(
            "buffer-covariance-fixed-point",
            f"at a fixed point, Cov(momentum buffer) / Σ is within {TOLERANCE:.0%} of (1−β)/(1+β) "
            "(max over β of the relative deviation of tr(Σ⁻¹C)/d)",
            max(deviation(FIXED_POINT)),
            TOLERANCE,
            "<=",
            detail(FIXED_POINT),
        ),
        Claim(
            "noise-part-covariance-trajectory",
            f"along EMA momentum SGD, Cov(EMA of the gradient noise) / Σ is within {TOLERANCE:.0%} of "
            "(1−β)/(1+β) (max over β of the relative deviation of tr(Σ⁻¹C)/d)",
            max(deviation(NOISE_PART)),
            TOLERANCE,
            "<=",
            detail(NOISE_PART),
        ),
    ]

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [_plot(measured, out_dir / "variance_ratio.png")]
    atomic.write_json(out_dir / "claims.json", [claim.to_json() for claim in claims])

    rows = ["| β | prediction (1−β)/(1+β) | " + " | ".join(measured) + " |", "|---|---|---|---|---|"]
    for i, b in enumerate(BETAS):
        cells = [
            f"{s.ratio[i]:.5f} ± {s.standard_error[i]:.5f} ({float(s.ratio[i]) / predicted[i] - 1:+.2%})"
            for s in measured.values()
        ]
        rows.append(f"| {b} | {predicted[i]:.5f} | " + " | ".join(cells) + " |")
    eigenvalues = measured[FIXED_POINT].whitened_eigenvalues
    spread = ", ".join(
        f"β = {b}: [{low / p:.3f}, {high / p:.3f}]"
        for b, p, low, high in zip(BETAS, predicted, eigenvalues[:, 0], eigenvalues[:, -1])
    )
    sigma = problem.noise_covariance
    command = f"momentumlab reproduce {NAME} --seeds {','.join(map(str, seeds))}"
    section = "\n\n".join(
        [
            f"## {TITLE}\n\nCommand: `{command}`.",
            (
                f"Noisy quadratic in d = {problem.dim}: A diagonal with entries log-spaced in [0.5, 2], Σ with "
                f"eigenvalues log-spaced in [0.1, 10] in a random orthonormal basis (seed {PROBLEM_SEED}; condition "
                f"number {float(torch.linalg.cond(sigma)):.0f}), x0 = (1, …, 1). Per seed, {chains} independent "
                f"chains for each β run {burn_in} burn-in steps, then {steps} recorded steps; seeds {list(seeds)}."
            ),
            (
                "What is measured. At every recorded step each buffer is centred by its mean over chains, which "
                "removes the deterministic part common to all chains (Ax0 at the fixed point; the mean trajectory "
                "otherwise). Reported: tr(Σ⁻¹C)/d ± its standard error (spread of per-chain time averages over "
                "√chains), and in brackets the deviation from the prediction. *Buffer at a fixed point*: "
                "g ← βg + (1−β)(Ax0 + ξ) with x held at x0 — the covariance over noise draws of the momentum "
                "average at one point, the paper's statement. *Noise part along the trajectory*: m ← βm + (1−β)ξ "
                f"beside the EMA momentum run x ← x − ηg (η = {LEARNING_RATE}), so that g = EMA(Ax_k) + m. "
                "*Full buffer along the trajectory*: g of that run; it also holds EMA(Ax_k), and the iterates' "
                "noise-driven spread makes its covariance differ from (1−β)/(1+β)·Σ, more so for larger η and β — "
                "shown, not claimed."
            ),
            "### Claims\n\n" + claims_table(claims),
            "### Covariance ratios\n\n" + "\n".join(rows),
            (
                "Eigenvalues of Σ^{-1/2}CΣ^{-1/2} over the prediction at the fixed point (1 in every direction "
                f"when C = (1−β)/(1+β)·Σ): {spread}."
            ),
            f"![variance ratio]({NAME}/variance_ratio.png)",
        ]
    )
    return ReproductionResult(NAME, TITLE, claims, section, figures)
