"""Reproduction `flatness-toy`: heavy ball's implicit regularization picks flatter minima (Ghosh et al.).

On E(w1, w2) = ½(y − w1 w2 x)² every point of the hyperbola w1 w2 = y/x is a global minimum, with
sharpness λ_max = x²(w1² + w2²). Heavy ball x_{k+1} = x_k − h∇E(x_k) + β(x_k − x_{k−1}) at a fixed
effective step h/(1−β) follows, to O(h²), the flow of E + (1+β)h/(4(1−β)²)‖∇E‖² (IGR-M, SPEC §2):
relative to GD at the same effective step the regularizer is (1+β)/(1−β) times stronger, so larger β
should end at a flatter minimum. The O(h) flow x' = −∇E/(1−β) conserves w1² − w2² and so ends at the
same minimum for every β; how far each run ends from it is the implicit regularization at work.

The computation is deterministic (float64, no sampling); the curvature probe's Lanczos start vector is
drawn from a fixed generator, so `options.seeds` is ignored.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from momentumlab import atomic
from momentumlab.claims import Claim
from momentumlab.data.landscapes import (
    scalar_product_gradient,
    scalar_product_loss,
    scalar_product_sharpness,
)
from momentumlab.experiments.base import ReproductionOptions, ReproductionResult
from momentumlab.probes.curvature import flat_loss_hvp, top_eigenvalues
from momentumlab.report import claims_table, save_figure
from momentumlab.store import RunStore

NAME = "flatness-toy"
TITLE = "Heavy ball ends at flatter minima as β grows (Ghosh et al., IGR-M on a two-parameter toy)"
INPUT, TARGET = 1.0, 0.6  # x, y
START = (2.8, 3.4)
EFFECTIVE_STEP = 0.01  # h/(1−β), held fixed while β varies
BETAS = (0.0, 0.5, 0.8, 0.9)
STEPS = 50_000
CONVERGED_LOSS = 1e-16  # residual √(2E) ≤ 1.4e-8: the closed form x²(w1² + w2²) is exact to ~1e-8 there
AGREEMENT = 1e-6
PROBE_TOLERANCE = 1e-10
COLORS = ("#d1495b", "#edae49", "#00798c", "#30638e")


def heavy_ball_paths(
    gradient: Callable[[Tensor], Tensor], start: Tensor, step: Tensor, beta: Tensor, steps: int
) -> Tensor:
    """Polyak heavy ball for a batch of runs; start (B, d), step h and β of shape (B, 1) → (steps+1, B, d)."""
    path = torch.empty(steps + 1, *start.shape, dtype=start.dtype)
    path[0] = previous = start
    path[1] = current = start - step * gradient(start)  # x_1 = x_0 − h∇E(x_0)
    for k in range(2, steps + 1):
        # x_{k+1} = x_k − h∇E(x_k) + β(x_k − x_{k−1})
        current, previous = current - step * gradient(current) + beta * (current - previous), current
        path[k] = current
    return path


def gradient_flow_sharpness(start: Tensor, x: float = INPUT, y: float = TARGET) -> float:
    """λ_max at the minimum that x' = −∇E/(1−β) reaches: w1² − w2² = D is conserved, so x²√(D² + 4(y/x)²)."""
    imbalance = float(start[0] ** 2 - start[1] ** 2)  # D
    return x**2 * math.sqrt(imbalance**2 + 4 * (y / x) ** 2)


def _by_beta(values: list[float]) -> dict[str, float]:
    return {str(beta): value for beta, value in zip(BETAS, values)}


def _probe_sharpness(point: Tensor) -> tuple[float, int, bool]:
    """Top Hessian eigenvalue of E at `point` by the curvature probe, the HVPs it took, and convergence."""
    hvp = flat_loss_hvp(scalar_product_loss(INPUT, TARGET), point)
    result = top_eigenvalues(
        hvp,
        dim=point.numel(),
        k=1,
        tol=PROBE_TOLERANCE,
        max_iter=50,
        generator=torch.Generator().manual_seed(0),
    )
    return float(result.eigenvalues[0]), result.hvp_count, result.converged


def _plot_trajectories(paths: Tensor, path: Path) -> Path:
    """Level sets of E, the minimum hyperbola, the flattest minimum and every run's trajectory."""
    ends = paths[-1]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    views = [((-0.1, 3.2), (-0.1, 3.8)), ((0.2, 0.95), (0.65, 2.1))]
    for axis, (xlim, ylim) in zip(axes, views):
        w1, w2 = torch.meshgrid(
            torch.linspace(*xlim, 300, dtype=torch.float64),
            torch.linspace(*ylim, 300, dtype=torch.float64),
            indexing="ij",
        )
        loss = scalar_product_loss(INPUT, TARGET)(torch.stack([w1, w2], -1))
        levels = torch.logspace(-4, 2, 13).tolist()
        axis.contour(w1, w2, loss, levels=levels, colors="0.75", linewidths=0.7)
        hyperbola = torch.linspace(0.12, xlim[1], 400)
        axis.plot(
            hyperbola, TARGET / INPUT / hyperbola, color="black", linewidth=1.2, label="minima w1 w2 = y/x"
        )
        flattest = math.sqrt(TARGET / INPUT)
        axis.plot(
            flattest,
            flattest,
            marker="*",
            markersize=14,
            color="gold",
            markeredgecolor="black",
            linestyle="none",
            label="flattest minimum (√0.6, √0.6)",
        )
        for index, (beta, color) in enumerate(zip(BETAS, COLORS)):
            axis.plot(paths[:, index, 0], paths[:, index, 1], color=color, linewidth=1.1, label=f"β = {beta}")
            axis.plot(
                ends[index, 0],
                ends[index, 1],
                marker="o",
                markersize=7,
                color=color,
                markeredgecolor="black",
                linestyle="none",
            )
        axis.plot(*START, marker="s", color="black", linestyle="none", label="start (2.8, 3.4)")
        axis.set_xlim(*xlim)
        axis.set_ylim(*ylim)
        axis.set_xlabel("w1")
        axis.set_ylabel("w2")
        axis.grid(alpha=0.2)
    axes[0].set_title("trajectories over level sets of E (log-spaced)", fontsize=10)
    axes[1].set_title(f"near the minima (dots: end points after {len(paths) - 1} steps)", fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left")
    figure.suptitle(f"Heavy ball on E = ½(y − w1 w2 x)², effective step h/(1−β) = {EFFECTIVE_STEP}")
    save_figure(figure, path)
    return path


def _plot_sharpness(closed_form: list[float], probe: list[float], flow: float, path: Path) -> Path:
    """λ_max at each end point against β, with the gradient-flow minimum and the flattest minimum."""
    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    axis.plot(BETAS, closed_form, color="#00798c", marker="o", label="closed form x²(w1² + w2²)")
    axis.plot(
        BETAS,
        probe,
        color="black",
        marker="x",
        markersize=9,
        linestyle="none",
        label="curvature probe (Lanczos on HVPs)",
    )
    axis.axhline(flow, color="gray", linestyle="--", linewidth=1, label="gradient-flow minimum (no IGR)")
    axis.axhline(
        2 * INPUT * TARGET, color="goldenrod", linestyle=":", linewidth=1.5, label="flattest minimum, 2xy"
    )
    axis.set_xlabel("β (effective step held at 0.01)")
    axis.set_ylabel("λ_max at the end point")
    axis.set_title("Sharpness of the minimum reached", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, path)
    return path


def run(
    store: RunStore, out_dir: Path, options: ReproductionOptions, steps: int = STEPS
) -> ReproductionResult:
    """Run heavy ball for every β at once, measure the end points' sharpness, write figures and claims."""
    beta = torch.tensor(BETAS, dtype=torch.float64).unsqueeze(1)
    step = EFFECTIVE_STEP * (1 - beta)  # h = 0.01(1 − β)
    start = torch.tensor(START, dtype=torch.float64).expand(len(BETAS), 2)
    paths = heavy_ball_paths(lambda w: scalar_product_gradient(w, INPUT, TARGET), start, step, beta, steps)
    ends = paths[-1]
    final_loss = scalar_product_loss(INPUT, TARGET)(ends).tolist()
    closed_form = scalar_product_sharpness(ends, INPUT).tolist()  # λ_max = x²(w1² + w2²)
    probed = [_probe_sharpness(end.clone()) for end in ends]
    probe = [value for value, _, _ in probed]
    relative_gap = [abs(p - c) / c for p, c in zip(probe, closed_form)]
    flow = gradient_flow_sharpness(start[0])
    decreases = [a - b for a, b in itertools.pairwise(closed_form)]
    strength = [(1 + b) / (1 - b) for b in BETAS]  # IGR-M strength relative to GD at equal h/(1−β)
    coefficient = [(1 + b) * EFFECTIVE_STEP * (1 - b) / (4 * (1 - b) ** 2) for b in BETAS]  # (1+β)h/(4(1−β)²)

    claims = [
        Claim(
            "runs-reach-minima",
            f"every run ends at a minimum (max final loss ≤ {CONVERGED_LOSS:g})",
            max(final_loss),
            CONVERGED_LOSS,
            "<=",
            _by_beta(final_loss),
        ),
        Claim(
            "sharpness-decreases-with-beta",
            "λ_max at the end point strictly decreases as β grows (min over successive β of "
            "λ_max(β_i) − λ_max(β_{i+1}) > 0)",
            min(decreases),
            0.0,
            ">",
            _by_beta(closed_form),
        ),
        Claim(
            "probe-matches-closed-form",
            f"curvature probe and x²(w1² + w2²) agree (max relative gap ≤ {AGREEMENT:g})",
            max(relative_gap),
            AGREEMENT,
            "<=",
            _by_beta(relative_gap),
        ),
    ]

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [
        _plot_trajectories(paths, out_dir / "trajectories.png"),
        _plot_sharpness(closed_form, probe, flow, out_dir / "sharpness.png"),
    ]
    atomic.write_json(out_dir / "claims.json", [claim.to_json() for claim in claims])

    rows = [
        (
            "| β | h | end point (w1, w2) | final E | λ_max closed form | λ_max probe (HVPs, converged) "
            "| relative gap | IGR-M strength (1+β)/(1−β) | IGR-M coefficient (1+β)h/(4(1−β)²) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, b in enumerate(BETAS):
        rows.append(
            f"| {b} | {float(step[i]):.4g} | ({ends[i, 0]:.6f}, {ends[i, 1]:.6f}) "
            f"| {final_loss[i]:.2e} | {closed_form[i]:.8f} | {probe[i]:.8f} "
            f"({probed[i][1]}, {probed[i][2]}) | {relative_gap[i]:.1e} | {strength[i]:.4g} "
            f"| {coefficient[i]:.4g} |"
        )
    section = "\n\n".join(
        [
            f"## {TITLE}\n\nCommand: `momentumlab reproduce {NAME}`.",
            (
                f"E(w1, w2) = ½(y − w1 w2 x)² with x = {INPUT}, y = {TARGET}; heavy ball from {START} with "
                f"h = {EFFECTIVE_STEP}(1 − β) (effective step {EFFECTIVE_STEP}) for {steps} steps in float64, "
                f"β ∈ {{{', '.join(map(str, BETAS))}}}. The probe is Lanczos on exact Hessian-vector products "
                f"(tolerance {PROBE_TOLERANCE:g})."
            ),
            "### Claims\n\n" + claims_table(claims),
            "### End points\n\n" + "\n".join(rows),
            "IGR-M (SPEC §2) predicts a regularizer (1+β)h/(4(1−β)²)‖∇E‖², i.e. (1+β)/(1−β) = "
            + ", ".join(f"{s:.4g}" for s in strength)
            + f" times GD's for β = {', '.join(map(str, BETAS))} at "
            f"equal effective step. References: the O(h) flow x' = −∇E/(1−β) conserves w1² − w2² and ends "
            f"at λ_max = {flow:.4f} for every β; the flattest minimum has λ_max = 2xy = "
            f"{2 * INPUT * TARGET:.4g}.",
            f"![trajectories]({NAME}/trajectories.png)\n\n![sharpness]({NAME}/sharpness.png)",
        ]
    )
    return ReproductionResult(NAME, TITLE, claims, section, figures)
