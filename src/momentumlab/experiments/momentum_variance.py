"""Reproduction `momentum-variance`: the momentum average damps i.i.d. gradient noise by (1−β)/(1+β).

Ghosh et al. (SPEC §2): with i.i.d. gradient noise of covariance Σ, the EMA momentum buffer
g ← βg + (1−β)ĝ has covariance (1−β)/(1+β)·Σ. The buffer also carries the deterministic gradient Ax,
which moves with the iterates, so we say exactly what is measured. On a noisy quadratic
E(x) = ½ xᵀAx with stochastic gradients ĝ = Ax + ξ, ξ ~ N(0, Σ), many independent chains run in one
batched computation (:func:`momentumlab.probes.buffer_noise.simulate_buffers`), and at every recorded
step each buffer is centred by its mean across chains:

- *buffer at a fixed point* (η = 0, x = x0 ≠ 0 for ever): the paper's quantity, the covariance over
  noise draws of the history-weighted gradient at one point; Ax0 is a constant and drops out.
- *noise part along the trajectory* (EMA momentum x ← x − ηg): m ← βm + (1−β)ξ, the EMA of the very ξ
  that drive the run, so that g = EMA(Ax_k) + m exactly.
- *full buffer along the trajectory*: g itself, which also holds EMA(Ax_k); the iterates' noise-driven
  spread enters through it, so this one is reported, not claimed, and differs from the prediction by
  an amount that grows with η and with β.

- *the buffer's start* (η = 0): the first steps of the buffer from g_{−1} = 0 (the paper's EMA, Jelassi
  & Li's GD+M) and from g_0 = ĝ_0 (`torch.optim.SGD(momentum=β, dampening=β)` sets its buffer to the
  first gradient), on the same noise draws, beside their closed forms: the zero start is biased by
  β^{t+1}∇E and its variance rises to (1−β)/(1+β)·Σ from (1−β)²Σ; the first-gradient start is unbiased
  and its variance falls to it from Σ. No paper among the sources states a claim about the start (Jelassi
  & Li start g at 0; Ghosh et al.'s x_1 = x_0 − h∇E_0(x_0) is heavy ball at rest, the zero start in the
  EMA scale), so this is reported as a table and a figure, without a claim.

Each covariance C is summarized by the whitened ratio tr(Σ⁻¹C)/d (the mean eigenvalue of
Σ^{-1/2}CΣ^{-1/2}, which is (1−β)/(1+β) in every direction when C = (1−β)/(1+β)·Σ); its standard error
comes from the spread of the per-chain time averages, the chains being independent.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from momentumlab.claims import Claim
from momentumlab.data.landscapes import NoisyQuadratic
from momentumlab.experiments.reproduction import Reproduction, ReproductionSettings, Seeds, Tables, read_prose
from momentumlab.probes.buffer_noise import (
    BUFFER_STARTS,
    BufferStatistics,
    ema_variance_ratio,
    simulate_buffers,
    start_bias,
    start_transient,
    start_variance_ratio,
)
from momentumlab.report import markdown_table, save_figure
from momentumlab.store import RunStore

TOLERANCE = 0.10
NORMAL_95 = 1.959963984540054  # the standard normal's 97.5% quantile
START_STYLES = {"zero": "-", "first gradient": "--"}
FIXED_POINT, NOISE_PART, FULL_BUFFER = "fixed_point", "noise_part", "full_buffer"  # the measured buffers
STYLES = {FIXED_POINT: ("#00798c", "o"), NOISE_PART: ("#30638e", "s"), FULL_BUFFER: ("#d1495b", "^")}
Beta = Annotated[float, Field(ge=0, lt=1)]
Positive = Annotated[float, Field(gt=0)]


class Settings(ReproductionSettings):
    """The noisy quadratic, the β's, how many chains run how long, and η of the moving run."""

    seeds: Seeds = (0,)  # the noise draws
    dim: int = Field(10, ge=1, description="d")
    problem_seed: int = Field(0, ge=0, description="draws the eigenbasis of the noise covariance Σ")
    curvatures: tuple[Positive, Positive] = Field(
        (0.5, 2.0), description="A is diagonal, entries log-spaced between these"
    )
    noise_variances: tuple[Positive, Positive] = Field(
        (0.1, 10.0), description="Σ's eigenvalues, log-spaced between these"
    )
    betas: tuple[Beta, ...] = Field((0.5, 0.9, 0.99), min_length=1)
    chains: int = Field(1000, ge=2, description="independent chains per seed and β")
    # 10/(1 − β) for β = 0.99: the zero-start bias of the variance is β^(2·1000) ≈ 2e-9
    burn_in: int = Field(1000, ge=0, description="steps before recording")
    steps: int = Field(2000, ge=1, description="recorded steps per chain, 20/(1 − β) for β = 0.99")
    # A's spectrum [0.5, 2] makes the run relax in ~200 steps
    learning_rate: float = Field(0.01, gt=0, description="η of the EMA momentum run along the trajectory")
    # β^500 = 0.007 for β = 0.99: the start's bias has (nearly) decayed for every β
    start_steps: int = Field(500, ge=1, description="steps of the buffer followed from its two starts")

    @classmethod
    def smoke(cls) -> Settings:
        return cls(chains=40, burn_in=300, steps=200, start_steps=100)

    @model_validator(mode="after")
    def _ordered(self) -> Settings:
        for field in ("curvatures", "noise_variances"):
            low, high = getattr(self, field)
            if low > high:
                raise ValueError(f"{field} = {[low, high]}: allowed are ranges [low, high] with low ≤ high")
        if any(a >= b for a, b in itertools.pairwise(self.betas)):
            raise ValueError(f"betas = {list(self.betas)}: allowed are strictly increasing values in [0, 1)")
        return self


def noisy_problem(settings: Settings) -> NoisyQuadratic:
    """A diagonal with log-spaced entries; Σ with log-spaced eigenvalues in a random orthonormal basis."""
    generator = torch.Generator().manual_seed(settings.problem_seed)
    dim = settings.dim
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    curvatures = torch.logspace(*map(math.log10, settings.curvatures), dim, dtype=torch.float64)
    noise_variances = torch.logspace(*map(math.log10, settings.noise_variances), dim, dtype=torch.float64)
    return NoisyQuadratic.from_spectra(curvatures, noise_variances, basis)


def measure(settings: Settings, store: RunStore) -> Tables:
    """For every seed, the chains at a fixed point and along the trajectory; the pooled covariance ratios
    and whitened eigenvalues of the three buffers."""
    problem = noisy_problem(settings)
    start = torch.ones(problem.dim, dtype=torch.float64)  # x0, where ∇E(x0) = Ax0 ≠ 0
    parts: dict[str, list[BufferStatistics]] = {FIXED_POINT: [], NOISE_PART: [], FULL_BUFFER: []}
    sizes = (settings.chains, settings.burn_in, settings.steps)
    transient = []
    for seed in settings.seeds:
        generator = torch.Generator().manual_seed(seed)  # every run draws from it in turn: independent noise
        fixed = simulate_buffers(problem, settings.betas, 0.0, start, *sizes, generator)
        moving = simulate_buffers(problem, settings.betas, settings.learning_rate, start, *sizes, generator)
        parts[FIXED_POINT].append(fixed["buffer"])
        parts[NOISE_PART].append(moving["noise part"])
        parts[FULL_BUFFER].append(moving["buffer"])
        starts = start_transient(
            problem, settings.betas, start, settings.chains, settings.start_steps, generator
        )
        for buffer_start, (bias, variance) in starts.items():
            for i, beta in enumerate(settings.betas):
                transient.append(
                    pd.DataFrame(
                        {
                            "seed": seed,
                            "start": buffer_start,
                            "beta": beta,
                            "step": range(settings.start_steps),
                            "bias": bias[i].numpy(),
                            "predicted_bias": [
                                start_bias(beta, t, buffer_start) for t in range(settings.start_steps)
                            ],
                            "variance_ratio": variance[i].numpy(),
                            "predicted_variance_ratio": [
                                start_variance_ratio(beta, t, buffer_start)
                                for t in range(settings.start_steps)
                            ],
                        }
                    )
                )
    ratios, eigenvalues = [], []
    for key, group in parts.items():
        statistics = BufferStatistics.pool(group)
        for i, beta in enumerate(settings.betas):
            ratios.append(
                {
                    "buffer": key,
                    "beta": beta,
                    "predicted": ema_variance_ratio(beta),
                    "ratio": float(statistics.ratio[i]),
                    "standard_error": float(statistics.standard_error[i]),
                }
            )
            eigenvalues += [
                {"buffer": key, "beta": beta, "index": j, "eigenvalue": value}
                for j, value in enumerate(statistics.whitened_eigenvalues[i].tolist())
            ]
    return {
        "ratios": pd.DataFrame(ratios),
        "whitened_eigenvalues": pd.DataFrame(eigenvalues),
        "start_transient": pd.concat(transient, ignore_index=True),
    }


def _labels(settings: Settings) -> dict[str, str]:
    eta = settings.learning_rate
    return {
        FIXED_POINT: "buffer at a fixed point (η = 0)",
        NOISE_PART: f"noise part along the trajectory (η = {eta})",
        FULL_BUFFER: f"full buffer along the trajectory (η = {eta})",
    }


def _rows(tables: Tables, buffer: str) -> pd.DataFrame:
    ratios = tables["ratios"]
    return ratios[ratios["buffer"] == buffer]


def _claim(key: str, claim_id: str, statement: str, tables: Tables) -> Claim:
    rows = _rows(tables, key)
    detail = {
        str(row.beta): {"ratio": row.ratio, "predicted": row.predicted, "standard_error": row.standard_error}
        for row in rows.itertuples()
    }
    deviation = [abs(row.ratio / row.predicted - 1) for row in rows.itertuples()]
    ends = []  # per β, the smallest and largest deviation over ratio ± 1.96 standard errors
    for row in rows.itertuples():
        low, high = (row.ratio + sign * NORMAL_95 * row.standard_error for sign in (-1, 1))
        around = [abs(end / row.predicted - 1) for end in (low, high)]
        ends.append((0.0 if low <= row.predicted <= high else min(around), max(around)))
    detail["interval"] = (
        "95% normal interval from the independent chains' standard error (ratio ± 1.96 SE per β), "
        "its deviation from the prediction, largest over β"
    )
    interval = (max(low for low, _ in ends), max(high for _, high in ends))
    return Claim(claim_id, statement, max(deviation), TOLERANCE, "<=", detail, interval=interval)


def buffer_covariance_fixed_point(settings: Settings, tables: Tables) -> Claim:
    """At one point, the momentum buffer's covariance over noise draws is (1−β)/(1+β)·Σ.

    References: Ghosh et al. (ICLR 2023), stochastic heavy ball (SPEC §2) — for i.i.d. gradient noise
    of covariance Σ the momentum average has covariance (1−β)/(1+β)·Σ."""
    return _claim(
        FIXED_POINT,
        "buffer-covariance-fixed-point",
        f"at a fixed point, Cov(momentum buffer) / Σ is within {TOLERANCE:.0%} of (1−β)/(1+β) "
        "(max over β of the relative deviation of tr(Σ⁻¹C)/d)",
        tables,
    )


def noise_part_covariance_trajectory(settings: Settings, tables: Tables) -> Claim:
    """Along EMA momentum SGD, the buffer's noise part has covariance (1−β)/(1+β)·Σ.

    References: Ghosh et al. (ICLR 2023), stochastic heavy ball (SPEC §2) — the momentum average of
    i.i.d. gradient noise has covariance (1−β)/(1+β)·Σ, here the EMA of the noise that drives a run."""
    return _claim(
        NOISE_PART,
        "noise-part-covariance-trajectory",
        f"along EMA momentum SGD, Cov(EMA of the gradient noise) / Σ is within {TOLERANCE:.0%} of "
        "(1−β)/(1+β) (max over β of the relative deviation of tr(Σ⁻¹C)/d)",
        tables,
    )


CLAIMS = (buffer_covariance_fixed_point, noise_part_covariance_trajectory)


def _eigenvalue_range(tables: Tables, buffer: str) -> pd.DataFrame:
    """Smallest and largest whitened eigenvalue per β, in the order of the settings."""
    eigenvalues = tables["whitened_eigenvalues"]
    rows = eigenvalues[eigenvalues["buffer"] == buffer]
    return rows.groupby("beta", sort=False)["eigenvalue"].agg(["min", "max"])


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """Measured and predicted ratio against 1 − β, and the relative deviation with the ±10% band."""
    one_minus = np.array([1 - b for b in settings.betas])
    predicted = np.array([ema_variance_ratio(b) for b in settings.betas])
    # 1 − β on a log grid, where (1−β)/(1+β) = grid/(2 − grid)
    grid = np.geomspace(0.4 * one_minus.min(), min(1.4 * one_minus.max(), 1.0), 200)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    left.plot(grid, grid / (2 - grid), color="black", linewidth=1.2, label="prediction (1−β)/(1+β)")
    right.axhspan(-TOLERANCE, TOLERANCE, color="0.9", label=f"±{TOLERANCE:.0%} (claim)")
    right.axhline(0, color="black", linewidth=1)
    for offset, (key, label) in zip((0.9, 1.0, 1.1), _labels(settings).items()):
        rows = _rows(tables, key)
        color, marker = STYLES[key]
        style = {"color": color, "marker": marker, "linestyle": "none", "markersize": 7, "label": label}
        x = one_minus * offset
        left.errorbar(x, rows["ratio"], yerr=2 * rows["standard_error"], **style)
        right.errorbar(
            x, rows["ratio"] / predicted - 1, yerr=2 * rows["standard_error"] / predicted, capsize=3, **style
        )
    spread = _eigenvalue_range(tables, FIXED_POINT)
    right.vlines(
        one_minus * 0.9,
        spread["min"] / predicted - 1,
        spread["max"] / predicted - 1,
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
        axis.set_xticks(one_minus.tolist(), [f"{1 - b:g}\n(β = {b})" for b in settings.betas])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return [
        save_figure(figure, out_dir / "variance_ratio.png"),
        _plot_start(settings, tables, out_dir / "buffer_start.png"),
    ]


def _plot_start(settings: Settings, tables: Tables, path: Path) -> Path:
    """The buffer's relative bias and Cov/Σ over its first steps from both starts, with the closed forms."""
    transient = (
        tables["start_transient"].groupby(["start", "beta", "step"], sort=False).mean(numeric_only=True)
    )
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    colors = dict(zip(settings.betas, ("#d1495b", "#edae49", "#00798c", "#30638e", "#6a4c93")))
    for start in BUFFER_STARTS:
        for beta in settings.betas:
            rows = transient.loc[(start, beta)]
            style = {"color": colors.get(beta, "gray"), "linestyle": START_STYLES[start], "linewidth": 1.3}
            left.plot(rows.index + 1, rows["bias"], label=f"{start}, β = {beta}", **style)
            right.plot(rows.index + 1, rows["variance_ratio"], label=f"{start}, β = {beta}", **style)
            right.plot(
                rows.index + 1, rows["predicted_variance_ratio"], color="black", linewidth=0.6, linestyle=":"
            )
            if start == "zero":
                left.plot(rows.index + 1, rows["predicted_bias"], color="black", linewidth=0.6, linestyle=":")
    left.plot([], [], color="black", linewidth=0.6, linestyle=":", label="closed form (zero start: β^{t+1})")
    right.plot([], [], color="black", linewidth=0.6, linestyle=":", label="closed forms")
    left.set_ylabel("‖mean over chains of g_t − ∇E‖ / ‖∇E‖")
    left.set_ylim(0, 1.05)
    left.set_title(
        "bias of the buffer (first-gradient start: 0, measured at the chains' noise floor)", fontsize=9
    )
    right.set_ylabel("tr(Σ⁻¹ Cov(g_t)) / d")
    right.set_title("buffer covariance over Σ: zero start rises, first-gradient start falls", fontsize=9)
    right.set_yscale("log")
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("step t + 1")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    figure.suptitle("The EMA buffer at a fixed point from zero (Jelassi & Li) and from ĝ_0 (torch.optim.SGD)")
    return save_figure(figure, path)


def _start_table(settings: Settings, tables: Tables) -> str:
    """Per β and start: bias and Cov/Σ at t = 0 and t = ⌈1/(1−β)⌉ beside the closed forms, and the largest
    relative deviation of Cov/Σ from its closed form over all steps (mean over seeds)."""
    transient = (
        tables["start_transient"].groupby(["start", "beta", "step"], sort=False).mean(numeric_only=True)
    )
    rows = []
    for beta in settings.betas:
        later = min(math.ceil(1 / (1 - beta)), settings.start_steps - 1)
        for start in BUFFER_STARTS:
            table = transient.loc[(start, beta)]
            row = {"β": beta, "start": start, "t₁ = ⌈1/(1−β)⌉": later}
            for t, name in ((0, "t = 0"), (later, "t = t₁")):
                row[f"bias, {name} (closed form)"] = (
                    f"{table.loc[t, 'bias']:.4f} ({table.loc[t, 'predicted_bias']:.4f})"
                )
                row[f"Cov/Σ, {name} (closed form)"] = (
                    f"{table.loc[t, 'variance_ratio']:.4f} ({table.loc[t, 'predicted_variance_ratio']:.4f})"
                )
            deviation = (table["variance_ratio"] / table["predicted_variance_ratio"] - 1).abs().max()
            row["max over t of Cov/Σ ÷ closed form − 1"] = f"{deviation:.2%}"
            rows.append(row)
    return markdown_table(pd.DataFrame(rows))


def _ratio_table(settings: Settings, tables: Tables) -> str:
    labels = _labels(settings)
    rows = []
    for i, beta in enumerate(settings.betas):
        row = {"β": beta, "prediction (1−β)/(1+β)": f"{ema_variance_ratio(beta):.5f}"}
        for key, label in labels.items():
            measured = _rows(tables, key).iloc[i]
            deviation = measured.ratio / measured.predicted - 1
            row[label] = f"{measured.ratio:.5f} ± {measured.standard_error:.5f} ({deviation:+.2%})"
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    """The prose's values: the problem, the chains, the ratio table and the eigenvalue spread."""
    spread = _eigenvalue_range(tables, FIXED_POINT)
    low_curvature, high_curvature = settings.curvatures
    low_noise, high_noise = settings.noise_variances
    return {
        "dim": str(settings.dim),
        "curvatures": f"[{low_curvature:g}, {high_curvature:g}]",
        "noise_variances": f"[{low_noise:g}, {high_noise:g}]",
        "problem_seed": str(settings.problem_seed),
        "condition_number": f"{float(torch.linalg.cond(noisy_problem(settings).noise_covariance)):.0f}",
        "chains": str(settings.chains),
        "burn_in": str(settings.burn_in),
        "steps": str(settings.steps),
        "seeds": str(list(settings.seeds)),
        "learning_rate": str(settings.learning_rate),
        "ratios": _ratio_table(settings, tables),
        "start_table": _start_table(settings, tables),
        "start_steps": str(settings.start_steps),
        "eigenvalue_spread": ", ".join(
            f"β = {beta}: [{low / p:.3f}, {high / p:.3f}]"
            for beta, p, low, high in zip(
                settings.betas, map(ema_variance_ratio, settings.betas), spread["min"], spread["max"]
            )
        ),
    }


REPRODUCTION = Reproduction(
    name="momentum-variance",
    title="The momentum buffer's noise covariance is (1−β)/(1+β) times the gradient noise's (Ghosh et al.)",
    settings=Settings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__),
    single_thread=True,
)
