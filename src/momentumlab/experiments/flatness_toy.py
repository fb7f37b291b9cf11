"""Reproduction `flatness-toy`: heavy ball's implicit regularization picks flatter minima (Ghosh et al.).

On E(w1, w2) = ½(y − w1 w2 x)² every point of the hyperbola w1 w2 = y/x is a global minimum, with
sharpness λ_max = x²(w1² + w2²). Heavy ball x_{k+1} = x_k − h∇E(x_k) + β(x_k − x_{k−1}) at a fixed
effective step h/(1−β) follows, to O(h²), the flow of E + (1+β)h/(4(1−β)²)‖∇E‖² (IGR-M, SPEC §2):
relative to GD at the same effective step the regularizer is (1+β)/(1−β) times stronger, so larger β
should end at a flatter minimum. The O(h) flow x' = −∇E/(1−β) conserves w1² − w2² and so ends at the
same minimum for every β; how far each run ends from it is the implicit regularization at work.

The computation is deterministic (float64, no sampling; the curvature probe's Lanczos start vector comes
from a fixed generator), so the settings have no seeds.
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
from momentumlab.data.landscapes import (
    scalar_product_flow_sharpness,
    scalar_product_gradient,
    scalar_product_loss,
    scalar_product_sharpness,
)
from momentumlab.experiments.reproduction import Reproduction, ReproductionSettings, Tables, read_prose
from momentumlab.probes.curvature import flat_loss_hvp, top_eigenvalues
from momentumlab.probes.flows import heavy_ball_paths, igr_m_strength
from momentumlab.report import markdown_table, save_figure
from momentumlab.store import RunStore

CONVERGED_LOSS = 1e-16  # residual √(2E) ≤ 1.4e-8: the closed form x²(w1² + w2²) is exact to ~1e-8 there
AGREEMENT = 1e-6
PROBE_START_SEED = 0  # the curvature probe's Lanczos start vector
# the paths drawn: every step of the first DENSE_PATH_STEPS (where they move), then every PATH_STRIDE-th
DENSE_PATH_STEPS, PATH_STRIDE = 2000, 100
COLORS = ("#d1495b", "#edae49", "#00798c", "#30638e")
Beta = Annotated[float, Field(ge=0, lt=1)]


class Settings(ReproductionSettings):
    """SPEC §2's toy: the loss's x and y, heavy ball's start, its β's at one effective step, its length."""

    input: float = Field(1.0, gt=0, description="x of E = ½(y − w1 w2 x)²")
    target: float = Field(0.6, gt=0, description="y of E = ½(y − w1 w2 x)²")
    start: tuple[float, float] = (2.8, 3.4)
    effective_step: float = Field(0.01, gt=0, description="h/(1 − β), held fixed while β varies")
    betas: tuple[Beta, ...] = Field((0.0, 0.5, 0.8, 0.9), min_length=2)
    steps: int = Field(50_000, ge=1)
    probe_tolerance: float = Field(1e-10, gt=0, description="relative tolerance of the Lanczos probe")

    @classmethod
    def smoke(cls) -> Settings:
        return cls(steps=2000)

    @model_validator(mode="after")
    def _betas_increase(self) -> Settings:
        if any(a >= b for a, b in itertools.pairwise(self.betas)):
            raise ValueError(f"betas = {list(self.betas)}: allowed are strictly increasing values in [0, 1)")
        return self


def _probe_sharpness(point: torch.Tensor, settings: Settings) -> tuple[float, int, bool]:
    """Top Hessian eigenvalue of E at `point` by the curvature probe, the HVPs it took, and convergence."""
    hvp = flat_loss_hvp(scalar_product_loss(settings.input, settings.target), point)
    result = top_eigenvalues(
        hvp,
        dim=point.numel(),
        k=1,
        tol=settings.probe_tolerance,
        generator=torch.Generator().manual_seed(PROBE_START_SEED),
    )
    return float(result.eigenvalues[0]), result.hvp_count, result.converged


def measure(settings: Settings, store: RunStore) -> Tables:
    """Heavy ball for every β at once; the end points with their loss and sharpness (closed form and
    probe), and the paths at the steps the trajectory figure draws."""
    x, y, betas = settings.input, settings.target, settings.betas
    beta = torch.tensor(betas, dtype=torch.float64).unsqueeze(1)
    step = settings.effective_step * (1 - beta)  # h = 0.01(1 − β)
    start = torch.tensor(settings.start, dtype=torch.float64).expand(len(betas), 2)
    paths = heavy_ball_paths(lambda w: scalar_product_gradient(w, x, y), start, step, beta, settings.steps)
    ends = paths[-1]
    probed = [_probe_sharpness(end.clone(), settings) for end in ends]
    end_points = pd.DataFrame(
        {
            "beta": list(betas),
            "h": step[:, 0].tolist(),
            "w1": ends[:, 0].tolist(),
            "w2": ends[:, 1].tolist(),
            "final_loss": scalar_product_loss(x, y)(ends).tolist(),
            "sharpness": scalar_product_sharpness(ends, x).tolist(),  # λ_max = x²(w1² + w2²)
            "probe_sharpness": [value for value, _, _ in probed],
            "probe_hvps": [count for _, count, _ in probed],
            "probe_converged": [converged for _, _, converged in probed],
        }
    )
    drawn = [k for k in range(settings.steps + 1) if k < DENSE_PATH_STEPS or k % PATH_STRIDE == 0]
    drawn += [] if drawn[-1] == settings.steps else [settings.steps]
    kept = paths[drawn]  # (steps drawn, β, 2)
    path_table = pd.DataFrame(
        {
            "beta": np.repeat(betas, len(drawn)),
            "step": np.tile(drawn, len(betas)),
            "w1": kept[:, :, 0].T.flatten().numpy(),
            "w2": kept[:, :, 1].T.flatten().numpy(),
        }
    )
    return {"end_points": end_points, "paths": path_table}


def _by_beta(end_points: pd.DataFrame, values: list[float]) -> dict[str, float]:
    return {str(beta): value for beta, value in zip(end_points["beta"], values)}


def _relative_gaps(end_points: pd.DataFrame) -> list[float]:
    return [abs(p - c) / c for p, c in zip(end_points["probe_sharpness"], end_points["sharpness"])]


def runs_reach_minima(settings: Settings, tables: Tables) -> Claim:
    """Every run ends at a minimum, so its sharpness is that of a minimum.

    References: Ghosh et al. (ICLR 2023), the toy of SPEC §2 — every point of the hyperbola
    w1 w2 = y/x minimizes E = ½(y − w1 w2 x)², and heavy ball converges to one of them."""
    final_loss = tables["end_points"]["final_loss"].tolist()
    return Claim(
        "runs-reach-minima",
        f"every run ends at a minimum (max final loss ≤ {CONVERGED_LOSS:g})",
        max(final_loss),
        CONVERGED_LOSS,
        "<=",
        _by_beta(tables["end_points"], final_loss),
    )


def sharpness_decreases_with_beta(settings: Settings, tables: Tables) -> Claim:
    """Larger β ends at a flatter minimum.

    References: Ghosh et al. (ICLR 2023), IGR-M (SPEC §2) — heavy ball follows the flow of
    E + (1+β)h/(4(1−β)²)‖∇E‖², a regularizer (1+β)/(1−β) times GD's at equal effective step, so on the
    toy larger β ends at a flatter minimum."""
    sharpness = tables["end_points"]["sharpness"].tolist()
    return Claim(
        "sharpness-decreases-with-beta",
        "λ_max at the end point strictly decreases as β grows (min over successive β of "
        "λ_max(β_i) − λ_max(β_{i+1}) > 0)",
        min(a - b for a, b in itertools.pairwise(sharpness)),
        0.0,
        ">",
        _by_beta(tables["end_points"], sharpness),
    )


def probe_matches_closed_form(settings: Settings, tables: Tables) -> Claim:
    """The curvature probe measures the sharpness the closed form gives.

    References: Ghosh et al. (ICLR 2023), the toy of SPEC §2 — λ_max = x²(w1² + w2²) at a minimum of
    E = ½(y − w1 w2 x)²; this checks the Lanczos probe that measures sharpness where no closed form exists."""
    gaps = _relative_gaps(tables["end_points"])
    return Claim(
        "probe-matches-closed-form",
        f"curvature probe and x²(w1² + w2²) agree (max relative gap ≤ {AGREEMENT:g})",
        max(gaps),
        AGREEMENT,
        "<=",
        _by_beta(tables["end_points"], gaps),
    )


CLAIMS = (runs_reach_minima, sharpness_decreases_with_beta, probe_matches_closed_form)


def _flow_sharpness(settings: Settings) -> float:
    start = torch.tensor(settings.start, dtype=torch.float64)
    return float(scalar_product_flow_sharpness(start, settings.input, settings.target))


def _colors(count: int) -> list:
    return list(COLORS[:count]) if count <= len(COLORS) else list(plt.cm.viridis(np.linspace(0, 0.9, count)))


def _views(paths: pd.DataFrame, end_points: pd.DataFrame, flattest: float) -> list[tuple[tuple, tuple]]:
    """Axis limits of the two panels: the whole paths, and the end points with the flattest minimum."""
    whole = tuple((min(-0.1, paths[c].min() - 0.1), paths[c].max() + 0.4) for c in ("w1", "w2"))
    near = []
    for column in ("w1", "w2"):
        low, high = min(end_points[column].min(), flattest), max(end_points[column].max(), flattest)
        near.append((low - 0.25 * (high - low), high + 0.25 * (high - low)))
    return [whole, tuple(near)]


def _plot_trajectories(settings: Settings, tables: Tables, path: Path) -> Path:
    """Level sets of E, the minimum hyperbola, the flattest minimum and every run's trajectory."""
    x, y = settings.input, settings.target
    paths, end_points = tables["paths"], tables["end_points"]
    flattest = math.sqrt(y / x)
    colors = _colors(len(end_points))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for axis, (xlim, ylim) in zip(axes, _views(paths, end_points, flattest)):
        w1, w2 = torch.meshgrid(
            torch.linspace(*xlim, 300, dtype=torch.float64),
            torch.linspace(*ylim, 300, dtype=torch.float64),
            indexing="ij",
        )
        loss = scalar_product_loss(x, y)(torch.stack([w1, w2], -1))
        axis.contour(w1, w2, loss, levels=torch.logspace(-4, 2, 13).tolist(), colors="0.75", linewidths=0.7)
        hyperbola = torch.linspace(max(y / x / ylim[1], 1e-3), xlim[1], 400)
        axis.plot(hyperbola, y / x / hyperbola, color="black", linewidth=1.2, label="minima w1 w2 = y/x")
        axis.plot(
            flattest,
            flattest,
            marker="*",
            markersize=14,
            color="gold",
            markeredgecolor="black",
            linestyle="none",
            label=f"flattest minimum (√{y / x:g}, √{y / x:g})",
        )
        for (beta, rows), end, color in zip(paths.groupby("beta"), end_points.itertuples(), colors):
            axis.plot(rows["w1"], rows["w2"], color=color, linewidth=1.1, label=f"β = {beta}")
            axis.plot(end.w1, end.w2, marker="o", markersize=7, color=color, markeredgecolor="black")
        axis.plot(
            *settings.start, marker="s", color="black", linestyle="none", label=f"start {settings.start}"
        )
        axis.set_xlim(*xlim)
        axis.set_ylim(*ylim)
        axis.set_xlabel("w1")
        axis.set_ylabel("w2")
        axis.grid(alpha=0.2)
    axes[0].set_title("trajectories over level sets of E (log-spaced)", fontsize=10)
    axes[1].set_title(f"near the minima (dots: end points after {settings.steps} steps)", fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left")
    figure.suptitle(f"Heavy ball on E = ½(y − w1 w2 x)², effective step h/(1−β) = {settings.effective_step}")
    return save_figure(figure, path)


def _plot_sharpness(settings: Settings, tables: Tables, path: Path) -> Path:
    """λ_max at each end point against β, with the gradient-flow minimum and the flattest minimum."""
    end_points = tables["end_points"]
    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    axis.plot(
        end_points["beta"],
        end_points["sharpness"],
        color="#00798c",
        marker="o",
        label="closed form x²(w1² + w2²)",
    )
    axis.plot(
        end_points["beta"],
        end_points["probe_sharpness"],
        color="black",
        marker="x",
        markersize=9,
        linestyle="none",
        label="curvature probe (Lanczos on HVPs)",
    )
    axis.axhline(
        _flow_sharpness(settings),
        color="gray",
        linestyle="--",
        linewidth=1,
        label="gradient-flow minimum (no IGR)",
    )
    axis.axhline(
        2 * settings.input * settings.target,
        color="goldenrod",
        linestyle=":",
        linewidth=1.5,
        label="flattest minimum, 2xy",
    )
    axis.set_xlabel(f"β (effective step held at {settings.effective_step})")
    axis.set_ylabel("λ_max at the end point")
    axis.set_title("Sharpness of the minimum reached", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """The trajectories over the loss landscape, and the sharpness of the minimum each β reaches."""
    return [
        _plot_trajectories(settings, tables, out_dir / "trajectories.png"),
        _plot_sharpness(settings, tables, out_dir / "sharpness.png"),
    ]


def _end_point_table(end_points: pd.DataFrame) -> str:
    rows = [
        {
            "β": row.beta,
            "h": f"{row.h:.4g}",
            "end point (w1, w2)": f"({row.w1:.6f}, {row.w2:.6f})",
            "final E": f"{row.final_loss:.2e}",
            "λ_max closed form": f"{row.sharpness:.8f}",
            "λ_max probe (HVPs, converged)": (
                f"{row.probe_sharpness:.8f} ({row.probe_hvps}, {row.probe_converged})"
            ),
            "relative gap": f"{gap:.1e}",
            "IGR-M strength (1+β)/(1−β)": f"{(1 + row.beta) / (1 - row.beta):.4g}",
            "IGR-M coefficient (1+β)h/(4(1−β)²)": f"{igr_m_strength(row.h, row.beta):.4g}",
        }
        for row, gap in zip(end_points.itertuples(), _relative_gaps(end_points))
    ]
    return markdown_table(pd.DataFrame(rows))


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    """The prose's values: the setting, the end-point table and the IGR-M strengths."""
    betas = ", ".join(map(str, settings.betas))
    return {
        "input": str(settings.input),
        "target": str(settings.target),
        "start": str(settings.start),
        "effective_step": str(settings.effective_step),
        "steps": str(settings.steps),
        "betas": betas,
        "probe_tolerance": f"{settings.probe_tolerance:g}",
        "end_points": _end_point_table(tables["end_points"]),
        "strengths": ", ".join(f"{(1 + b) / (1 - b):.4g}" for b in settings.betas),
        "flow_sharpness": f"{_flow_sharpness(settings):.4f}",
        "flattest_sharpness": f"{2 * settings.input * settings.target:.4g}",
    }


REPRODUCTION = Reproduction(
    name="flatness-toy",
    title="Heavy ball ends at flatter minima as β grows (Ghosh et al., IGR-M on a two-parameter toy)",
    settings=Settings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__),
    single_thread=True,
)
