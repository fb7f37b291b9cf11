"""Reproduction `noise-level`: the search-direction noise of SGD, SHB and NSHB, the degree of smoothing δ it
implies, and test accuracy (Sato & Iiduka, arXiv 2402.02325; SPEC §3).

SmallCNN on the digits, minibatch training with one constant learning rate η for every setting, a fixed
number of epochs (so a larger batch takes fewer steps, as in the paper), batch sizes 16–512 and momentum
β ∈ {0, 0.5, 0.9, 0.99} for SHB (m ← βm + g) and NSHB (m ← βm + (1−β)g); β = 0 is SGD for both. At
evenly spaced steps, including the first and the last, each run measures ‖ω_t‖ = ‖d_t − ∇f(x_t)‖ with the
full training gradient, and C²(x_t) and ‖∇f(x_t)‖ from per-sample gradients. Per setting, C² and K are the
maxima of those measurements over its runs and steps, and δ is the theory's formula with them. All runs
of one seed share the initialization and the order of the minibatches (per batch size). Around SGD's
trained x* (first batch size, first seed) the smoothed training loss f̂_δ is measured along a line and
at x* against δ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from scipy.stats import spearmanr
from torch.func import grad
from torch.nn import functional as F
from torch.nn.utils import vector_to_parameters

from momentumlab.claims import Claim
from momentumlab.config import StrictModel
from momentumlab.data.digits import DigitsData, load_digits_dataset
from momentumlab.experiments.reproduction import (
    Reproduction,
    ReproductionSettings,
    Seeds,
    Tables,
    read_prose,
)
from momentumlab.models.conv import SmallCNN
from momentumlab.probes.curvature import hutchinson_trace, model_hvp
from momentumlab.probes.noise import (
    Method,
    flat_model_loss,
    gradient_statistics,
    search_direction,
    search_noise,
    smoothing_degree,
)
from momentumlab.probes.smoothing import quadratic_lift, smoothed_line, smoothing_lift, unit_ball
from momentumlab.report import markdown_table, save_figure
from momentumlab.seeds import ORDER_SEED_OFFSET
from momentumlab.store import RunStore

SLOPE_TARGET, SLOPE_TOLERANCE = -0.5, 0.1  # claim (a): slope in [−0.6, −0.4]
CHANCE_LEVEL = 0.5  # settings below this mean test accuracy are counted in the report
GOOD_ACCURACY = 0.9  # the report gives the noise band of the settings at or above this accuracy
RAW_LABEL = "f (raw)"  # the unsmoothed loss in the smoothing line's table
METHOD_STYLE = {"sgd": ("black", "o"), "shb": ("#d1495b", "s"), "nshb": ("#00798c", "^")}  # color, marker
MOMENTUM_COLORS = {0.0: "black", 0.5: "#edae49", 0.9: "#d1495b", 0.99: "#66a182"}


class SmoothingSettings(StrictModel):
    """The smoothed loss around SGD's trained x*: along a line, and its lift at x* against δ."""

    points: int = Field(21, ge=1, description="points along the line")
    pairs: int = Field(8, ge=2, description="antithetic pairs ±u of unit-ball draws per point")
    lift_points: int = Field(9, ge=1, description="δ of the lift, geometric from δ_max/100 to 2δ_max")
    trace_probes: int = Field(30, ge=2, description="Hutchinson probes for tr(H) at x*")
    line_seed: int = Field(0, ge=0, description="the line's random direction, the ball draws and probes")


class Settings(ReproductionSettings):
    """The grid of optimizers and batch sizes, the training protocol, the measurements and the smoothing."""

    seeds: Seeds = (0, 1, 2)  # seed s: initialization from s, minibatch order from ORDER_SEED_OFFSET + s
    batch_sizes: tuple[Annotated[int, Field(ge=1)], ...] = Field((16, 32, 64, 128, 256, 512), min_length=2)
    momenta: tuple[Annotated[float, Field(ge=0, lt=1)], ...] = Field((0.0, 0.5, 0.9, 0.99), min_length=1)
    lr: float = Field(0.2, gt=0, description="η, the same for every setting")
    epochs: int = Field(15, ge=1)
    measurements: int = Field(5, ge=1, description="measured steps per run, evenly spaced, first to last")
    width: int = Field(16, ge=1, description="SmallCNN's channels")
    data_seed: int = Field(0, ge=0, description="the digits' train/test split")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of the digits held out for testing")
    chunk_size: int = Field(512, ge=1, description="per-sample gradients held in memory at once")
    smoothing: SmoothingSettings = SmoothingSettings()

    @model_validator(mode="after")
    def _grid_is_well_formed(self) -> Settings:
        if 0.0 not in self.momenta:
            raise ValueError(f"momenta = {list(self.momenta)}: must contain 0 (SGD), which claim (a) uses")
        for field in ("batch_sizes", "momenta"):
            values = getattr(self, field)
            if len(set(values)) != len(values):
                raise ValueError(f"{field} = {list(values)}: every value must appear once")
        return self

    @classmethod
    def smoke(cls) -> Settings:
        return cls(
            seeds=(0,),
            batch_sizes=(64, 256),
            momenta=(0.0, 0.9),
            epochs=1,
            measurements=2,
            smoothing=SmoothingSettings(points=3, pairs=2, trace_probes=2),
        )


@dataclass(frozen=True)
class OptimizerSetting:
    """One point of the grid: the search direction's rule, its β and the batch size b."""

    method: Method
    momentum: float
    batch_size: int

    @property
    def label(self) -> str:
        return "SGD" if self.method == "sgd" else f"{self.method.upper()} β={self.momentum:g}"


def optimizer_settings(settings: Settings) -> list[OptimizerSetting]:
    """SGD, and SHB and NSHB for every non-zero β, at every batch size (batch size first)."""
    rules = [("sgd", 0.0)] + [
        (method, beta) for method in ("shb", "nshb") for beta in settings.momenta if beta > 0
    ]
    return [OptimizerSetting(method, beta, b) for b in settings.batch_sizes for method, beta in rules]


def _train(
    settings: Settings, data: DigitsData, setting: OptimizerSetting, seed: int
) -> tuple[list[dict[str, float]], float, torch.Tensor]:
    """One run, x_{t+1} = x_t − η d_t with d_t the setting's search direction: the measured steps (‖ω_t‖,
    ‖∇f(x_t)‖, C²(x_t)), the final test accuracy and the final flat parameters."""
    model = SmallCNN(width=settings.width, generator=torch.Generator().manual_seed(seed))
    loss, point = flat_model_loss(model, F.cross_entropy)
    stochastic_gradient = grad(loss)
    inputs, labels = data.train.inputs, data.train.labels
    count, b = len(labels), setting.batch_size
    steps_per_epoch = count // b  # the last, incomplete minibatch of an epoch is dropped
    total = settings.epochs * steps_per_epoch
    measurements = settings.measurements
    measured = {round(k * (total - 1) / max(measurements - 1, 1)) for k in range(measurements)}
    order = torch.Generator().manual_seed(ORDER_SEED_OFFSET + seed)
    buffer, rows, step = torch.zeros_like(point), [], 0
    for _ in range(settings.epochs):
        permutation = torch.randperm(count, generator=order)
        for start in range(0, steps_per_epoch * b, b):
            batch = permutation[start : start + b]
            gradient = stochastic_gradient(point, inputs[batch], labels[batch])  # g_t
            direction = search_direction(setting.method, setting.momentum, buffer, gradient)  # d_t
            if step in measured:
                statistics = gradient_statistics(loss, point, inputs, labels, settings.chunk_size)
                noise = search_noise(direction, statistics.full_gradient)  # ω_t
                rows.append(
                    {
                        "step": step,
                        "noise_norm": noise.norm().item(),
                        "gradient_norm": statistics.gradient_norm,
                        "variance": statistics.variance,
                    }
                )
            point, buffer, step = point - settings.lr * direction, direction, step + 1
    accuracy, _ = flat_model_loss(model, lambda logits, y: (logits.argmax(1) == y).double().mean())
    return rows, accuracy(point, data.test.inputs, data.test.labels).item(), point


def _summarize(settings: Settings, measurements: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting: RMS‖ω‖, η·RMS‖ω‖, C² and K (maxima over runs and steps), δ, the ratio, test accuracy."""
    lr, rows = settings.lr, []
    for setting in optimizer_settings(settings):
        key = (setting.method, setting.momentum, setting.batch_size)
        frame = measurements[_matches(measurements, key)]
        noise_rms = math.sqrt((frame["noise_norm"] ** 2).mean())  # √(mean over steps and seeds of ‖ω_t‖²)
        variance, bound = frame["variance"].max(), frame["gradient_norm"].max()  # C², K
        delta = smoothing_degree(setting.method, lr, setting.batch_size, setting.momentum, variance, bound)
        accuracies = runs[_matches(runs, key)]["test_accuracy"].tolist()
        rows.append(
            {
                "method": setting.method,
                "momentum": setting.momentum,
                "batch_size": setting.batch_size,
                "label": setting.label,
                "noise_rms": noise_rms,
                "noise_level": lr * noise_rms,  # η·RMS‖ω‖, comparable with δ
                "variance": variance,
                "gradient_bound": bound,
                "delta": delta,
                "ratio": lr * noise_rms / delta,
                "noise_over_c": math.sqrt((frame["noise_norm"] ** 2 / frame["variance"]).mean()),
                "test_accuracy": float(np.mean(accuracies)),
                "test_accuracy_min": min(accuracies),
                "test_accuracy_max": max(accuracies),
            }
        )
    return pd.DataFrame(rows)


def _matches(table: pd.DataFrame, key: tuple[str, float, int]) -> pd.Series:
    method, momentum, batch_size = key
    return (table["method"] == method) & (table["momentum"] == momentum) & (table["batch_size"] == batch_size)


def _smoothing_deltas(summary: pd.DataFrame) -> dict[str, float]:
    """The δ of the smoothing line: SGD's measured noise level and theory's δ at the first batch size, and
    the largest measured noise level of any setting."""
    base = summary.iloc[0]  # SGD at the first batch size
    loudest = summary.loc[summary["noise_level"].idxmax()]
    where = f"b={base['batch_size']}"
    return {
        f"δ = η·RMS‖ω‖ of SGD {where} = {base['noise_level']:.3g}": base["noise_level"],
        f"δ = the theory's δ of SGD {where} = {base['delta']:.3g}": base["delta"],
        f"δ = η·RMS‖ω‖ of {loudest['label']} b={loudest['batch_size']} = {loudest['noise_level']:.3g} "
        "(the largest)": loudest["noise_level"],
    }


def _smoothing_tables(
    settings: Settings, data: DigitsData, deltas: dict[str, float], solution: torch.Tensor
) -> Tables:
    """f and f̂_δ (training loss) along x* + s·v, v a random unit vector, s ∈ [−2δ_max, 2δ_max], for each
    named δ; f̂_δ(x*) − f(x*) on a geometric grid of δ; and tr(H) at x* for the quadratic prediction.

    One set of antithetic ball draws serves every point and δ.
    """
    smoothing = settings.smoothing
    model = SmallCNN(width=settings.width, generator=torch.Generator())  # its weights are replaced by x*
    vector_to_parameters(solution, model.parameters())
    loss, _ = flat_model_loss(model, F.cross_entropy)
    inputs, labels = data.train.inputs, data.train.labels
    generator = torch.Generator().manual_seed(smoothing.line_seed)
    direction = torch.randn(solution.shape, generator=generator)
    direction /= direction.norm()
    ball = unit_ball(smoothing.pairs, direction.numel(), generator, dtype=solution.dtype)  # used as ±u
    trace = hutchinson_trace(
        model_hvp(model, F.cross_entropy, inputs, labels), solution.numel(), smoothing.trace_probes, generator
    )

    def f(x: torch.Tensor) -> torch.Tensor:
        return loss(x, inputs, labels)

    largest = max(deltas.values())
    offsets = np.linspace(-2 * largest, 2 * largest, smoothing.points)
    line = [
        {
            "offset": s,
            "label": RAW_LABEL,
            "delta": 0.0,
            "mean": f(solution + float(s) * direction).item(),
            "se": 0.0,
        }
        for s in offsets
    ]
    for label, delta in deltas.items():
        values = smoothed_line(f, solution, direction, offsets, delta, ball)
        line += [
            {"offset": s, "label": label, "delta": delta, "mean": value.mean, "se": value.standard_error}
            for s, value in zip(offsets, values)
        ]
    lift_deltas = np.geomspace(largest / 100, 2 * largest, smoothing.lift_points)
    lifts = smoothing_lift(f, solution, lift_deltas, ball)
    return {
        "smoothing_line": pd.DataFrame(line),
        "smoothing_lift": pd.DataFrame(
            {"delta": lift_deltas, "mean": [v.mean for v in lifts], "se": [v.standard_error for v in lifts]}
        ),
        "smoothing_trace": pd.DataFrame([{"trace": trace.trace, "trace_error": trace.standard_error}]),
    }


def measure(settings: Settings, store: RunStore) -> Tables:
    """Train every setting for every seed, measuring the noise on the way; summarize per setting; then the
    smoothing around SGD's x*. The runs are not a registered kind: nothing goes through `store`, and the
    runner caches these tables."""
    data = load_digits_dataset(settings.test_fraction, seed=settings.data_seed)
    count = len(data.train)
    if max(settings.batch_sizes) > count:
        raise ValueError(
            f"batch_sizes = {list(settings.batch_sizes)}: each must be at most the {count} training images"
        )
    measured, runs, solution = [], [], None
    for setting in optimizer_settings(settings):
        for seed in settings.seeds:
            rows, test_accuracy, final = _train(settings, data, setting, seed)
            key = {
                "method": setting.method,
                "momentum": setting.momentum,
                "batch_size": setting.batch_size,
                "label": setting.label,
                "seed": seed,
            }
            measured += [{**key, **row} for row in rows]
            runs.append(
                {
                    **key,
                    "steps": settings.epochs * (count // setting.batch_size),
                    "noise_level": settings.lr * math.sqrt(np.mean([row["noise_norm"] ** 2 for row in rows])),
                    "test_accuracy": test_accuracy,
                }
            )
            solution = final if solution is None else solution  # SGD at the first batch size, first seed
    measurements, runs = pd.DataFrame(measured), pd.DataFrame(runs)
    summary = _summarize(settings, measurements, runs)
    problem = {"parameters": solution.numel(), "train_examples": count, "test_examples": len(data.test)}
    return {
        "measurements": measurements,
        "runs": runs,
        "summary": summary,
        **_smoothing_tables(settings, data, _smoothing_deltas(summary), solution),
        "problem": pd.DataFrame([problem]),
    }


def _sgd_slope(summary: pd.DataFrame, column: str = "noise_rms") -> float:
    """Least-squares slope of log `column` against log b over the SGD settings."""
    sgd = summary[summary["method"] == "sgd"]
    return float(np.polyfit(np.log(sgd["batch_size"]), np.log(sgd[column]), 1)[0])


def _spearman(x: pd.Series, y: pd.Series) -> float:
    return float(spearmanr(x, y).statistic)


def _correlations(tables: Tables) -> dict[str, float]:
    """Spearman ρ of test accuracy with the noise level and with δ over settings, and over runs."""
    summary, runs = tables["summary"], tables["runs"]
    return {
        "noise_level": _spearman(summary["noise_level"], summary["test_accuracy"]),
        "delta": _spearman(summary["delta"], summary["test_accuracy"]),
        "noise_level_per_run": _spearman(runs["noise_level"], runs["test_accuracy"]),
    }


def _ratios_by_method(summary: pd.DataFrame) -> dict[str, float]:
    return {f"max_ratio_{method}": float(rows["ratio"].max()) for method, rows in summary.groupby("method")}


def sgd_noise_falls_as_inverse_sqrt_batch(settings: Settings, tables: Tables) -> Claim:
    """SGD's search-direction noise falls like 1/√b.

    References: Sato & Iiduka (arXiv 2402.02325), the bound on SGD's search-direction noise behind
    δ = ηC/√b (SPEC §3): E‖ω_t‖² ≤ C²/b, so the noise falls like 1/√b."""
    summary = tables["summary"]
    slope, normalized_slope = _sgd_slope(summary), _sgd_slope(summary, "noise_over_c")
    low, high = SLOPE_TARGET - SLOPE_TOLERANCE, SLOPE_TARGET + SLOPE_TOLERANCE
    return Claim(
        "sgd-noise-falls-as-inverse-sqrt-batch",
        f"SGD: the measured noise RMS‖ω‖ falls like 1/√b, log–log slope within [{low:g}, {high:g}] "
        "(measured: |slope + 0.5|)",
        abs(slope - SLOPE_TARGET),
        SLOPE_TOLERANCE,
        "<=",
        {"slope": slope, "slope_of_noise_over_c": normalized_slope},
    )


def noise_within_smoothing_degree(settings: Settings, tables: Tables) -> Claim:
    """Every setting's noise level stays within the theory's degree of smoothing δ.

    References: Sato & Iiduka (arXiv 2402.02325), the degree of smoothing of SGD, SHB and NSHB (SPEC §3):
    η√E‖ω_t‖² ≤ δ with δ = ηC/√b, η√(C²/b + β̂(C²/b + K²)) and η√(C²/b + 4β²(C²/b + K²))."""
    summary = tables["summary"]
    worst = summary.loc[summary["ratio"].idxmax()]
    return Claim(
        "noise-within-smoothing-degree",
        "for every setting RMS(η‖ω_t‖) ≤ δ, the theory's degree of smoothing with the measured C² and "
        "K (measured: the largest ratio RMS(η‖ω‖)/δ)",
        float(worst["ratio"]),
        1.0,
        "<=",
        {"worst_setting": f"{worst['label']}, b={worst['batch_size']}", **_ratios_by_method(summary)},
    )


def lower_noise_higher_accuracy(settings: Settings, tables: Tables) -> Claim:
    """Lower search-direction noise goes with higher test accuracy.

    References: Sato & Iiduka (arXiv 2402.02325), versions 1–3 (SPEC §3): generalization correlates
    with the noise level; version 4 reverses this ("Momentum does not reduce stochastic noise")."""
    correlations = _correlations(tables)
    return Claim(
        "lower-noise-higher-accuracy",
        "test accuracy correlates negatively with the noise level (lower noise, higher accuracy), as "
        "versions 1–3 of the paper claim (measured: Spearman ρ over settings of η·RMS‖ω‖ and test "
        "accuracy)",
        correlations["noise_level"],
        0.0,
        "<",
        correlations,
    )


CLAIMS = (sgd_noise_falls_as_inverse_sqrt_batch, noise_within_smoothing_degree, lower_noise_higher_accuracy)


def _plot_noise(summary: pd.DataFrame, path: Path) -> Path:
    """Measured η·RMS‖ω‖ and δ against b (one panel per method) and against β (SHB, NSHB)."""
    figure, axes = plt.subplots(2, 3, figsize=(14, 8.2))
    for axis, method in zip(axes[0], ("sgd", "shb", "nshb")):
        for beta, rows in summary[summary["method"] == method].groupby("momentum"):
            color, rows = MOMENTUM_COLORS.get(beta, "gray"), rows.sort_values("batch_size")
            axis.plot(
                rows["batch_size"],
                rows["noise_level"],
                color=color,
                marker="o",
                label=f"measured, β={beta:g}",
            )
            axis.plot(rows["batch_size"], rows["delta"], color=color, linestyle="--", label=f"δ, β={beta:g}")
        axis.set_title(f"{method.upper()}: η·RMS‖ω‖ (solid) and δ (dashed)", fontsize=10)
        axis.set_xlabel("batch size b")
    sgd = summary[summary["method"] == "sgd"].sort_values("batch_size")
    reference = sgd["noise_level"].iloc[0] * np.sqrt(sgd["batch_size"].iloc[0] / sgd["batch_size"])
    axes[0, 0].plot(sgd["batch_size"], reference, color="gray", linestyle=":", label="∝ 1/√b")
    batch_colors = plt.cm.viridis(np.linspace(0, 0.9, summary["batch_size"].nunique()))
    for axis, method in zip(axes[1][:2], ("shb", "nshb")):
        for color, b in zip(batch_colors, sorted(summary["batch_size"].unique())):
            rows = summary[(summary["batch_size"] == b) & summary["method"].isin(["sgd", method])]
            rows = rows.sort_values("momentum")
            one_minus = 1 - rows["momentum"]
            axis.plot(one_minus, rows["noise_level"], color=color, marker="o", label=f"measured, b={b}")
            axis.plot(one_minus, rows["delta"], color=color, linestyle="--")
        axis.set_title(f"{method.upper()}: η·RMS‖ω‖ (solid) and δ (dashed) against β", fontsize=10)
        axis.set_xlabel("β (log scale of 1 − β)")
        axis.set_xscale("log")
        ticks = sorted(summary["momentum"].unique())
        axis.set_xticks([1 - beta for beta in ticks], [f"{beta:g}" for beta in ticks])
        axis.minorticks_off()
        axis.invert_xaxis()
    for axis in axes[0]:
        axis.set_xscale("log")
        batch_sizes = sorted(summary["batch_size"].unique())
        axis.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        axis.minorticks_off()
    _plot_ratio(summary, axes[1, 2])
    for axis in axes.flat:
        axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
        if axis.get_legend_handles_labels()[0]:  # a grid without momentum leaves SHB and NSHB empty
            axis.legend(fontsize=7)
    return save_figure(figure, path, dpi=110)


def _plot_ratio(summary: pd.DataFrame, axis: plt.Axes) -> None:
    for method, (color, marker) in METHOD_STYLE.items():
        rows = summary[summary["method"] == method]
        axis.scatter(rows["delta"], rows["ratio"], color=color, marker=marker, label=method.upper())
    axis.axhline(1, color="gray", linestyle="--", linewidth=1, label="RMS(η‖ω‖) = δ")
    axis.set_title("RMS(η‖ω‖)/δ per setting (claim b: ≤ 1)", fontsize=10)
    axis.set_xscale("log")
    axis.set_xlabel("δ")


def _plot_accuracy(summary: pd.DataFrame, correlations: dict[str, float], path: Path) -> Path:
    """Test accuracy against the measured noise level and against δ, one marker per setting."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    batch_sizes = sorted(summary["batch_size"].unique())
    batch_colors = dict(zip(batch_sizes, plt.cm.viridis(np.linspace(0, 0.9, len(batch_sizes)))))
    for axis, column, name in (
        (axes[0], "noise_level", "measured noise level η·RMS‖ω‖"),
        (axes[1], "delta", "the theory's δ"),
    ):
        for _, row in summary.iterrows():
            color, marker = batch_colors[row["batch_size"]], METHOD_STYLE[row["method"]][1]
            error = [
                [row["test_accuracy"] - row["test_accuracy_min"]],
                [row["test_accuracy_max"] - row["test_accuracy"]],
            ]
            axis.errorbar(
                row[column], row["test_accuracy"], yerr=error, color=color, marker=marker, capsize=2
            )
        axis.set_xscale("log")
        axis.set_xlabel(name)
        axis.set_title(
            f"test accuracy against {name} (Spearman ρ = {correlations[column]:+.2f})", fontsize=10
        )
        axis.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color="gray", marker=style[1], linestyle="none", label=method.upper())
        for method, style in METHOD_STYLE.items()
    ] + [
        plt.Line2D([], [], color=color, marker="o", linestyle="none", label=f"b={b}")
        for b, color in batch_colors.items()
    ]
    axes[0].legend(handles=handles, fontsize=7, ncol=2)
    axes[0].set_ylabel("test accuracy (mean over seeds, min–max bars)")
    return save_figure(figure, path, dpi=110)


def _plot_smoothing(settings: Settings, tables: Tables, path: Path) -> Path:
    """Left: f and f̂_δ along the line; right: the lift f̂_δ(x*) − f(x*) against δ and its prediction."""
    line, lift = tables["smoothing_line"], tables["smoothing_lift"]
    trace, trace_error = tables["smoothing_trace"].iloc[0][["trace", "trace_error"]]
    d = int(tables["problem"]["parameters"].iloc[0])
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = ["black", "#00798c", "#edae49", "#d1495b"]
    curves = list(line.groupby("label", sort=False))
    for color, (label, rows) in zip(colors, curves):
        raw = label == RAW_LABEL
        left.plot(rows["offset"], rows["mean"], color=color, label=label, marker=None if raw else ".")
        low, high = rows["mean"] - 2 * rows["se"], rows["mean"] + 2 * rows["se"]
        left.fill_between(rows["offset"], low, high, color=color, alpha=0.2, linewidth=0)
    left.set_xlabel("s: distance from the trained x* along a random unit direction v")
    left.set_ylabel("training loss")
    left.set_title(
        f"training loss f through SGD's x* (b={settings.batch_sizes[0]}, seed {settings.seeds[0]}) and "
        f"E f(x − δu)\n(u uniform in the unit ball, {2 * settings.smoothing.pairs} draws per point, ±2 SE)",
        fontsize=10,
    )
    left.legend(fontsize=8)
    right.errorbar(
        lift["delta"],
        lift["mean"],
        yerr=2 * lift["se"],
        color="#d1495b",
        marker="o",
        capsize=2,
        linestyle="none",
        label="measured E f(x* − δu) − f(x*) (±2 SE)",
    )
    grid = np.geomspace(lift["delta"].min(), lift["delta"].max(), 100)
    right.plot(
        grid,
        quadratic_lift(grid, trace, d),
        color="black",
        label=f"δ²·tr(H)/(2(d+2)), tr(H) = {trace:.3g} ± {trace_error:.2g} (Hutchinson)",
    )
    for color, (_, rows) in zip(colors[1:], curves[1:]):
        right.axvline(rows["delta"].iloc[0], color=color, linestyle=":", linewidth=1.2)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("δ (dotted: the δ of the left panel)")
    right.set_ylabel("lift of the smoothed loss at x*")
    right.set_title(f"smoothing lifts the loss by the mean curvature (d = {d})", fontsize=10)
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    return save_figure(figure, path, dpi=110)


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """Noise and δ against b and β; test accuracy against both; the smoothed loss around SGD's x*."""
    summary = tables["summary"]
    return [
        _plot_noise(summary, out_dir / "noise.png"),
        _plot_accuracy(summary, _correlations(tables), out_dir / "accuracy_vs_noise.png"),
        _plot_smoothing(settings, tables, out_dir / "smoothing.png"),
    ]


def _momentum_effect(summary: pd.DataFrame) -> str:
    """Per method and β: its noise level over SGD's at the same b, as a range over b."""
    sgd = summary[summary["method"] == "sgd"].set_index("batch_size")["noise_level"]
    parts = []
    for (method, beta), rows in summary[summary["method"] != "sgd"].groupby(["method", "momentum"]):
        ratios = rows.set_index("batch_size")["noise_level"] / sgd
        parts.append(f"{method.upper()} β={beta:g}: {ratios.min():.2f}–{ratios.max():.2f}")
    return "; ".join(parts)


def _good_band(summary: pd.DataFrame) -> str:
    """Where the well-trained settings lie on the noise axis."""
    good = summary[summary["test_accuracy"] >= GOOD_ACCURACY]
    if good.empty:
        return f"No setting reaches {GOOD_ACCURACY:.0%} mean test accuracy."
    low, high = good["noise_level"].min(), good["noise_level"].max()
    below = int((summary["noise_level"] < low).sum())
    above = int((summary["noise_level"] > high).sum())
    return (
        f"The {len(good)} settings with mean test accuracy ≥ {GOOD_ACCURACY:.0%} have noise levels in "
        f"[{low:.3g}, {high:.3g}]; {below} settings lie below that band and {above} above it, so the sign of "
        "the correlation depends on how many settings sit on each side."
    )


def _summary_table(summary: pd.DataFrame) -> str:
    table = pd.DataFrame(
        {
            "setting": summary["label"],
            "b": summary["batch_size"],
            "RMS‖ω‖": summary["noise_rms"],
            "C²": summary["variance"],
            "K": summary["gradient_bound"],
            "η·RMS‖ω‖": summary["noise_level"],
            "δ": summary["delta"],
            "ratio": summary["ratio"],
            "test accuracy (min–max)": [
                f"{row.test_accuracy:.3f} ({row.test_accuracy_min:.3f}–{row.test_accuracy_max:.3f})"
                for row in summary.itertuples()
            ],
        }
    )
    formats = {column: ".3g" for column in ("RMS‖ω‖", "C²", "K", "η·RMS‖ω‖", "δ")}
    return markdown_table(table, {**formats, "ratio": ".3f"})


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    summary, runs, line = tables["summary"], tables["runs"], tables["smoothing_line"]
    problem, trace = tables["problem"].iloc[0], tables["smoothing_trace"].iloc[0]
    correlations = _correlations(tables)
    worst = summary.loc[summary["ratio"].idxmax()]
    sgd = summary[summary["method"] == "sgd"]
    at_solution = line[line["offset"].abs() == line["offset"].abs().min()]
    steps = runs.drop_duplicates("batch_size")
    return {
        "width": str(settings.width),
        "dim": str(problem["parameters"]),
        "train": str(problem["train_examples"]),
        "test": str(problem["test_examples"]),
        "data_seed": str(settings.data_seed),
        "lr": f"{settings.lr:g}",
        "epochs": str(settings.epochs),
        "steps": ", ".join(f"b={row.batch_size}: {row.steps}" for row in steps.itertuples()),
        "betas": ", ".join(f"{beta:g}" for beta in settings.momenta if beta > 0),
        "seeds": str(list(settings.seeds)),
        "offset": str(ORDER_SEED_OFFSET),
        "measurements": str(settings.measurements),
        "slope": f"{_sgd_slope(summary):.3f}",
        "sgd_variances": ", ".join(f"{row.variance:.3g} at b={row.batch_size}" for row in sgd.itertuples()),
        "normalized_slope": f"{_sgd_slope(summary, 'noise_over_c'):.3f}",
        "worst_ratio": f"{worst['ratio']:.3f}",
        "worst_setting": f"{worst['label']}, b={worst['batch_size']}",
        "ratios_by_method": ", ".join(
            f"{key.removeprefix('max_ratio_').upper()} {value:.3f}"
            for key, value in _ratios_by_method(summary).items()
        ),
        "setting_count": str(len(summary)),
        "rho_noise": f"{correlations['noise_level']:+.3f}",
        "rho_delta": f"{correlations['delta']:+.3f}",
        "run_count": str(len(runs)),
        "rho_runs": f"{correlations['noise_level_per_run']:+.3f}",
        "below_chance": str(int((summary["test_accuracy"] < CHANCE_LEVEL).sum())),
        "chance_level": f"{CHANCE_LEVEL:.0%}",
        "good_band": _good_band(summary),
        "momentum_effect": _momentum_effect(summary),
        "summary": _summary_table(summary),
        "samples": str(2 * settings.smoothing.pairs),
        "where": f"b={settings.batch_sizes[0]}",
        "seed": str(settings.seeds[0]),
        "line_seed": str(settings.smoothing.line_seed),
        "trace": f"{trace['trace']:.4g}",
        "trace_error": f"{trace['trace_error']:.2g}",
        "probes": str(settings.smoothing.trace_probes),
        "lifts": "; ".join(f"{row.label}: {row.mean:.4g} ± {row.se:.2g}" for row in at_solution.itertuples()),
    }


REPRODUCTION = Reproduction(
    name="noise-level",
    title="Search-direction noise, the smoothing it implies, and test accuracy (Sato & Iiduka)",
    settings=Settings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__),
    single_thread=True,
)
