"""Reproduction `noise-level`: the search-direction noise of SGD, SHB and NSHB, the degree of smoothing δ it
implies, and test accuracy (Sato & Iiduka, arXiv 2402.02325; SPEC §3).

SmallCNN on the digits, minibatch training with one constant learning rate η for every setting, a fixed
number of epochs (so a larger batch takes fewer steps, as in the paper), batch sizes 16–512 and momentum
β ∈ {0, 0.5, 0.9, 0.99} for SHB (m ← βm + g) and NSHB (m ← βm + (1−β)g); β = 0 is SGD for both. At
evenly spaced steps, including the first and the last, each run measures ‖ω_t‖ = ‖d_t − ∇f(x_t)‖ with the
full training gradient, and C²(x_t) and ‖∇f(x_t)‖ from per-sample gradients. Per setting, C² and K are the
maxima of those measurements over its runs and steps, and δ is the theory's formula with them. All runs
of one seed share the initialization and the order of the minibatches (per batch size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch.func import grad
from torch.nn import functional as F
from torch.nn.utils import vector_to_parameters

from momentumlab import atomic
from momentumlab.claims import Claim
from momentumlab.data.digits import DigitsData, load_digits_dataset
from momentumlab.experiments.base import ReproductionOptions, ReproductionResult, ignored_overrides_note
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
from momentumlab.probes.smoothing import smoothed_loss, unit_ball
from momentumlab.report import claims_table, save_figure
from momentumlab.store import RunStore
from momentumlab.threads import single_thread

NAME = "noise-level"
TITLE = "Search-direction noise, the smoothing it implies, and test accuracy (Sato & Iiduka)"
BATCH_SIZES = (16, 32, 64, 128, 256, 512)
MOMENTA = (0.0, 0.5, 0.9, 0.99)  # 0 = SGD
DEFAULT_SEEDS = (0, 1, 2)
LEARNING_RATE = 0.2  # η, the same for every setting
EPOCHS = 15
MEASUREMENTS = 5  # measured steps per run, evenly spaced from the first to the last
DATA_SEED = 0  # the train/test split; seeds drive initialization and minibatch order
ORDER_SEED_OFFSET = 1000  # minibatch order of seed s is drawn from a generator seeded with 1000 + s
CHUNK_SIZE = 512  # per-sample gradients held at once
SLOPE_TARGET, SLOPE_TOLERANCE = -0.5, 0.1  # claim (a): slope in [−0.6, −0.4]
SMOOTHING_PAIRS = 8  # antithetic pairs ±u of unit-ball draws per point of the smoothed curve
SMOOTHING_POINTS = 21  # points along the line
LINE_SEED = 0  # the random direction of the smoothing line and the ball draws
TRACE_PROBES = 30  # Hutchinson probes for tr(H) at the trained x*
CHANCE_LEVEL = 0.5  # settings below this mean test accuracy are counted in the section
GOOD_ACCURACY = 0.9  # the section gives the noise band of the settings at or above this accuracy
METHOD_STYLE = {"sgd": ("black", "o"), "shb": ("#d1495b", "s"), "nshb": ("#00798c", "^")}  # color, marker
MOMENTUM_COLORS = {0.0: "black", 0.5: "#edae49", 0.9: "#d1495b", 0.99: "#66a182"}


@dataclass(frozen=True)
class Setting:
    method: Method
    momentum: float
    batch_size: int

    @property
    def label(self) -> str:
        return "SGD" if self.method == "sgd" else f"{self.method.upper()} β={self.momentum:g}"


def settings(batch_sizes: tuple[int, ...], momenta: tuple[float, ...]) -> list[Setting]:
    """SGD, and SHB and NSHB for every non-zero β, at every batch size."""
    if 0.0 not in momenta:
        raise ValueError(f"momenta={momenta}: must contain 0 (SGD), which claim (a) and the smoothing use")
    rules = [("sgd", 0.0)] + [(method, beta) for method in ("shb", "nshb") for beta in momenta if beta > 0]
    return [Setting(method, beta, b) for b in batch_sizes for method, beta in rules]


@dataclass(frozen=True)
class RunResult:
    setting: Setting
    seed: int
    measurements: list[dict[str, float]]  # step, ‖ω‖, ‖∇f‖, C² at each measured step
    test_accuracy: float
    final: torch.Tensor  # flat parameters after training


@single_thread()
def train(
    data: DigitsData, setting: Setting, seed: int, lr: float, epochs: int, measurements: int
) -> RunResult:
    """One run: x_{t+1} = x_t − η d_t with d_t the setting's search direction; ω_t measured on the way."""
    model = SmallCNN(generator=torch.Generator().manual_seed(seed))
    loss, point = flat_model_loss(model, F.cross_entropy)
    stochastic_gradient = grad(loss)
    inputs, labels = data.train.inputs, data.train.labels
    count, b = len(labels), setting.batch_size
    steps_per_epoch = count // b  # the last, incomplete minibatch of an epoch is dropped
    total = epochs * steps_per_epoch
    measured = {round(k * (total - 1) / max(measurements - 1, 1)) for k in range(measurements)}
    order = torch.Generator().manual_seed(ORDER_SEED_OFFSET + seed)
    buffer, rows, step = torch.zeros_like(point), [], 0
    for _ in range(epochs):
        permutation = torch.randperm(count, generator=order)
        for start in range(0, steps_per_epoch * b, b):
            batch = permutation[start : start + b]
            gradient = stochastic_gradient(point, inputs[batch], labels[batch])  # g_t
            direction = search_direction(setting.method, setting.momentum, buffer, gradient)  # d_t
            if step in measured:
                statistics = gradient_statistics(loss, point, inputs, labels, CHUNK_SIZE)
                noise = search_noise(direction, statistics.full_gradient)  # ω_t
                rows.append(
                    {
                        "step": step,
                        "noise_norm": noise.norm().item(),
                        "gradient_norm": statistics.gradient_norm,
                        "variance": statistics.variance,
                    }
                )
            point, buffer, step = point - lr * direction, direction, step + 1
    accuracy, _ = flat_model_loss(model, lambda logits, y: (logits.argmax(1) == y).double().mean())
    return RunResult(setting, seed, rows, accuracy(point, data.test.inputs, data.test.labels).item(), point)


def summarize(runs: list[RunResult], lr: float) -> pd.DataFrame:
    """Per setting: RMS‖ω‖, η·RMS‖ω‖, C² and K (maxima over runs and steps), δ, the ratio, test accuracy."""
    rows = []
    for setting in dict.fromkeys(run.setting for run in runs):
        group = [run for run in runs if run.setting == setting]
        frame = pd.DataFrame([row for run in group for row in run.measurements])
        noise_rms = math.sqrt((frame["noise_norm"] ** 2).mean())  # √(mean over steps and seeds of ‖ω_t‖²)
        variance, bound = frame["variance"].max(), frame["gradient_norm"].max()  # C², K
        delta = smoothing_degree(setting.method, lr, setting.batch_size, setting.momentum, variance, bound)
        accuracies = [run.test_accuracy for run in group]
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


def sgd_slope(summary: pd.DataFrame, column: str = "noise_rms") -> float:
    """Least-squares slope of log `column` against log b over the SGD settings."""
    sgd = summary[summary["method"] == "sgd"]
    return float(np.polyfit(np.log(sgd["batch_size"]), np.log(sgd[column]), 1)[0])


@dataclass(frozen=True)
class Smoothing:
    """The smoothed training loss around a trained x*: along a line, and its lift at x* against δ."""

    line: pd.DataFrame  # offset s, label, delta, mean, se: f and f̂_δ at x* + s·v
    lift: pd.DataFrame  # delta, mean, se: f̂_δ(x*) − f(x*)
    trace: float  # Hutchinson estimate of tr(H) at x*
    trace_error: float
    dim: int


def smoothing_view(
    run: RunResult,
    data: DigitsData,
    deltas: dict[str, float],
    points: int,
    pairs: int,
    trace_probes: int = TRACE_PROBES,
) -> Smoothing:
    """f and f̂_δ (training loss) along x* + s·v, v a random unit vector, s ∈ [−2δ_max, 2δ_max], for each
    named δ; and f̂_δ(x*) − f(x*) on a grid of δ beside the quadratic prediction δ²·tr(H)/(2(d+2)).

    The ball draws come in antithetic pairs ±u, which cancel the first-order term δ⟨∇f, u⟩; one set of
    draws serves every point and δ.
    """
    model = SmallCNN(generator=torch.Generator())  # its initial weights are overwritten by x*
    vector_to_parameters(run.final, model.parameters())
    loss, _ = flat_model_loss(model, F.cross_entropy)
    inputs, labels = data.train.inputs, data.train.labels
    generator = torch.Generator().manual_seed(LINE_SEED)
    direction = torch.randn(run.final.shape, generator=generator)
    direction /= direction.norm()
    ball = unit_ball(pairs, direction.numel(), generator, dtype=run.final.dtype)  # used as ±u
    largest = max(deltas.values())

    def f(x: torch.Tensor) -> torch.Tensor:
        return loss(x, inputs, labels)

    line, lift = [], []
    with single_thread():
        trace = hutchinson_trace(
            model_hvp(model, F.cross_entropy, inputs, labels), run.final.numel(), trace_probes, generator
        )
        with torch.no_grad():
            for offset in np.linspace(-2 * largest, 2 * largest, points):
                x = run.final + float(offset) * direction
                line.append(
                    {"offset": offset, "label": "f (raw)", "delta": 0.0, "mean": f(x).item(), "se": 0.0}
                )
                for label, delta in deltas.items():
                    value = smoothed_loss(f, x, delta, ball, antithetic=True)
                    line.append(
                        {
                            "offset": offset,
                            "label": label,
                            "delta": delta,
                            "mean": value.mean,
                            "se": value.standard_error,
                        }
                    )
            at_solution = f(run.final).item()
            for delta in np.geomspace(largest / 100, 2 * largest, 9):
                value = smoothed_loss(f, run.final, float(delta), ball, antithetic=True)
                lift.append({"delta": delta, "mean": value.mean - at_solution, "se": value.standard_error})
    return Smoothing(
        pd.DataFrame(line), pd.DataFrame(lift), trace.trace, trace.standard_error, run.final.numel()
    )


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


def _plot_smoothing(smoothing: Smoothing, title: str, path: Path) -> Path:
    """Left: f and f̂_δ along the line; right: the lift f̂_δ(x*) − f(x*) against δ and its prediction."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = ["black", "#00798c", "#edae49", "#d1495b"]
    for color, (label, rows) in zip(colors, smoothing.line.groupby("label", sort=False)):
        raw = label == "f (raw)"
        left.plot(rows["offset"], rows["mean"], color=color, label=label, marker=None if raw else ".")
        low, high = rows["mean"] - 2 * rows["se"], rows["mean"] + 2 * rows["se"]
        left.fill_between(rows["offset"], low, high, color=color, alpha=0.2, linewidth=0)
    left.set_xlabel("s: distance from the trained x* along a random unit direction v")
    left.set_ylabel("training loss")
    left.set_title(title, fontsize=10)
    left.legend(fontsize=8)
    lift, d = smoothing.lift, smoothing.dim
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
        grid**2 * smoothing.trace / (2 * (d + 2)),
        color="black",
        label=f"δ²·tr(H)/(2(d+2)), tr(H) = {smoothing.trace:.3g} ± {smoothing.trace_error:.2g} (Hutchinson)",
    )
    for color, (label, rows) in zip(colors[1:], list(smoothing.line.groupby("label", sort=False))[1:]):
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


def run(
    store: RunStore,
    out_dir: Path,
    options: ReproductionOptions,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    momenta: tuple[float, ...] = MOMENTA,
    epochs: int = EPOCHS,
    measurements: int = MEASUREMENTS,
    smoothing_points: int = SMOOTHING_POINTS,
    smoothing_pairs: int = SMOOTHING_PAIRS,
    trace_probes: int = TRACE_PROBES,
) -> ReproductionResult:
    """Train every setting for every seed, then write the figures, claims.json and the section."""
    seeds = options.seeds or DEFAULT_SEEDS
    data = load_digits_dataset(seed=DATA_SEED)
    grid = settings(batch_sizes, momenta)
    runs = [
        train(data, setting, seed, LEARNING_RATE, epochs, measurements) for setting in grid for seed in seeds
    ]
    summary = summarize(runs, LEARNING_RATE)
    per_run = pd.DataFrame(
        {"noise_level": LEARNING_RATE * _rms(run.measurements), "test_accuracy": run.test_accuracy}
        for run in runs
    )
    correlations = {
        "noise_level": _spearman(summary["noise_level"], summary["test_accuracy"]),
        "delta": _spearman(summary["delta"], summary["test_accuracy"]),
        "noise_level_per_run": _spearman(per_run["noise_level"], per_run["test_accuracy"]),
    }
    slope, normalized_slope = sgd_slope(summary), sgd_slope(summary, "noise_over_c")
    worst = summary.loc[summary["ratio"].idxmax()]
    low, high = SLOPE_TARGET - SLOPE_TOLERANCE, SLOPE_TARGET + SLOPE_TOLERANCE
    claims = [
        Claim(
            "sgd-noise-falls-as-inverse-sqrt-batch",
            f"SGD: the measured noise RMS‖ω‖ falls like 1/√b, log–log slope within [{low:g}, {high:g}] "
            "(measured: |slope + 0.5|)",
            abs(slope - SLOPE_TARGET),
            SLOPE_TOLERANCE,
            "<=",
            {"slope": slope, "slope_of_noise_over_c": normalized_slope},
        ),
        Claim(
            "noise-within-smoothing-degree",
            "for every setting RMS(η‖ω_t‖) ≤ δ, the theory's degree of smoothing with the measured C² and "
            "K (measured: the largest ratio RMS(η‖ω‖)/δ)",
            float(worst["ratio"]),
            1.0,
            "<=",
            {"worst_setting": f"{worst['label']}, b={worst['batch_size']}", **_ratios_by_method(summary)},
        ),
        Claim(
            "lower-noise-higher-accuracy",
            "test accuracy correlates negatively with the noise level (lower noise, higher accuracy), as "
            "versions 1–3 of the paper claim (measured: Spearman ρ over settings of η·RMS‖ω‖ and test "
            "accuracy)",
            correlations["noise_level"],
            0.0,
            "<",
            correlations,
        ),
    ]

    out_dir.mkdir(parents=True, exist_ok=True)
    base = summary.iloc[0]  # SGD at the smallest batch size
    loudest = summary.loc[summary["noise_level"].idxmax()]
    where = f"b={base['batch_size']}"
    deltas = {
        f"δ = η·RMS‖ω‖ of SGD {where} = {base['noise_level']:.3g}": base["noise_level"],
        f"δ = the theory's δ of SGD {where} = {base['delta']:.3g}": base["delta"],
        f"δ = η·RMS‖ω‖ of {loudest['label']} b={loudest['batch_size']} = {loudest['noise_level']:.3g} "
        "(the largest)": loudest["noise_level"],
    }
    solution = next(r for r in runs if r.setting == grid[0] and r.seed == seeds[0])
    smoothing = smoothing_view(solution, data, deltas, smoothing_points, smoothing_pairs, trace_probes)
    smoothing_title = (
        f"training loss f through SGD's x* ({where}, seed {seeds[0]}) and E f(x − δu)\n"
        f"(u uniform in the unit ball, {2 * smoothing_pairs} draws per point, ±2 SE)"
    )
    figures = [
        _plot_noise(summary, out_dir / "noise.png"),
        _plot_accuracy(summary, correlations, out_dir / "accuracy_vs_noise.png"),
        _plot_smoothing(smoothing, smoothing_title, out_dir / "smoothing.png"),
    ]
    atomic.write_json(out_dir / "claims.json", [claim.to_json() for claim in claims])
    measured_steps = pd.DataFrame(
        {"label": run.setting.label, "batch_size": run.setting.batch_size, "seed": run.seed, **row}
        for run in runs
        for row in run.measurements
    )
    atomic.write_text(out_dir / "measurements.csv", measured_steps.to_csv(index=False))
    atomic.write_text(out_dir / "summary.csv", summary.to_csv(index=False))
    atomic.write_text(out_dir / "smoothing.csv", smoothing.line.to_csv(index=False))

    count = len(data.train)
    command = f"momentumlab reproduce {NAME} --seeds {','.join(map(str, seeds))}"
    ignored = ignored_overrides_note(options)
    steps = ", ".join(f"b={b}: {epochs * (count // b)}" for b in batch_sizes)
    betas = ", ".join(f"{b:g}" for b in momenta if b > 0)
    at_solution = smoothing.line[smoothing.line["offset"].abs() == smoothing.line["offset"].abs().min()]
    lifts = "; ".join(
        f"{row['label']}: {row['mean']:.4g} ± {row['se']:.2g}" for _, row in at_solution.iterrows()
    )
    chance = summary[summary["test_accuracy"] < CHANCE_LEVEL]
    sgd_variances = ", ".join(
        f"{row['variance']:.3g} at b={row['batch_size']}"
        for _, row in summary[summary["method"] == "sgd"].iterrows()
    )
    by_method = ", ".join(
        f"{k.removeprefix('max_ratio_').upper()} {v:.3f}" for k, v in _ratios_by_method(summary).items()
    )
    measured = (
        f"Measured. (a) SGD's log–log slope of RMS‖ω‖ against b is {slope:.3f}. The runs do not sit at the "
        "same points: with a fixed number of epochs the large-batch runs take few steps and stay near the "
        f"initial plateau, where C²(x_t) is much smaller (C² = {sgd_variances}). The slope of "
        f"RMS(‖ω‖/C(x_t)), which divides that out, is {normalized_slope:.3f} (sampling without replacement "
        "alone makes E‖ω‖² = C²/b·(N−b)/(N−1)). "
        f"(b) The largest ratio RMS(η‖ω‖)/δ is {worst['ratio']:.3f} ({worst['label']}, "
        f"b={worst['batch_size']}); by method: {by_method}. For SHB and NSHB the K² term makes δ loose. "
        f"(c) Spearman ρ between noise level and mean test accuracy over the {len(summary)} settings: "
        f"{correlations['noise_level']:+.3f}; between δ and accuracy: {correlations['delta']:+.3f}; over the "
        f"{len(per_run)} runs: {correlations['noise_level_per_run']:+.3f}. {len(chance)} of {len(summary)} "
        f"settings end below {CHANCE_LEVEL:.0%} mean test accuracy: large batches that took too few steps to "
        "leave the plateau (low noise) and SHB with large β, whose effective step η/(1−β) is too large to "
        "train (high noise); both ends of the noise axis hold untrained networks, which a rank correlation "
        f"over all settings mixes together. {_good_band(summary)}"
    )
    section = "\n\n".join(
        [
            f"## {TITLE}\n\nCommand: `{command}`.{ignored}",
            SETUP_NOTE.format(
                dim=solution.final.numel(),
                train=count,
                test=len(data.test),
                data_seed=DATA_SEED,
                lr=LEARNING_RATE,
                epochs=epochs,
                steps=steps,
                betas=betas,
                seeds=list(seeds),
                offset=ORDER_SEED_OFFSET,
                measurements=measurements,
            ),
            "### Claims\n\n" + claims_table(claims),
            measured,
            VERSION_NOTE + " " + _momentum_effect(summary),
            "### Per setting\n\n" + _summary_table(summary),
            f"![noise against batch size and momentum]({NAME}/noise.png)",
            f"![test accuracy against noise]({NAME}/accuracy_vs_noise.png)",
            SMOOTHING_NOTE.format(
                samples=2 * smoothing_pairs,
                where=where,
                seed=seeds[0],
                line_seed=LINE_SEED,
                dim=smoothing.dim,
                trace=smoothing.trace,
                trace_error=smoothing.trace_error,
                probes=trace_probes,
                lifts=lifts,
            ),
            f"![smoothed loss]({NAME}/smoothing.png)",
            (
                "Tables as CSV: `summary.csv` (per setting), `measurements.csv` (per measured step), "
                "`smoothing.csv` (the line)."
            ),
        ]
    )
    return ReproductionResult(NAME, TITLE, claims, section, figures)


def _rms(measurements: list[dict[str, float]]) -> float:
    return math.sqrt(np.mean([row["noise_norm"] ** 2 for row in measurements]))


def _spearman(x: pd.Series, y: pd.Series) -> float:
    return float(spearmanr(x, y).statistic)


SETUP_NOTE = (
    "Setup. SmallCNN (width 16, {dim} parameters) on the digits ({train} training and {test} test images, "
    "split seed {data_seed}), cross-entropy, η = {lr} for every setting, {epochs} epochs of shuffled "
    "minibatches (the last, incomplete one dropped), so the number of steps falls with b ({steps}). SGD, "
    "SHB (m ← βm + g, x ← x − ηm; PyTorch's SGD with momentum) and NSHB (m ← βm + (1−β)g) with "
    "β ∈ {{{betas}}}; seeds {seeds} (seed s: initialization from s, minibatch order from {offset} + s, "
    "shared by all settings). At {measurements} evenly spaced steps per run (first to last) "
    "ω_t = d_t − ∇f(x_t) is measured with the full training gradient, and C²(x_t) = E_i‖∇f_i − ∇f‖² from "
    "the per-sample gradients. Per setting the theory's constants are estimated as C² = max C²(x_t) and "
    "K = max ‖∇f(x_t)‖ over its runs' measured steps (a bound measured at a few points can miss a larger "
    "value between them), and δ is SPEC §3's formula: SGD ηC/√b, SHB η√(C²/b + β̂(C²/b + K²)), NSHB "
    "η√(C²/b + 4β²(C²/b + K²)). The noise level of a setting is η·RMS‖ω_t‖ over its measured steps and "
    "seeds, on the same scale as δ."
)
SMOOTHING_NOTE = (
    "### Smoothing\n\nThe smoothed training loss f̂_δ(x) = E_{{u ~ unit ball}} f(x − δu), by Monte Carlo "
    "({samples} draws in antithetic pairs ±u, direction uniform on the sphere, radius U^(1/d), the same "
    "draws everywhere), along the line x* + s·v through SGD's trained x* ({where}, seed {seed}), v a random "
    "unit vector (seed {line_seed}), for δ from the measured noise and from the theory. In d = {dim} "
    "dimensions u lies almost on the sphere and almost orthogonal to v, so the smoothing does little "
    "averaging along the line: it lifts the loss by about δ²·tr(H)/(2(d+2)), the mean curvature over "
    "random directions (right panel; tr(H) = {trace:.4g} ± {trace_error:.2g} at x*, Hutchinson, "
    "{probes} probes). "
    "At x*: {lifts}."
)
VERSION_NOTE = (
    "Versions 1–3 of the paper conclude that momentum's search-direction noise smooths the objective and "
    'that lower noise goes with better generalization; version 4 reverses its conclusion ("Momentum does '
    'not reduce stochastic noise"). The measurements, not either version, decide here.'
)


def _momentum_effect(summary: pd.DataFrame) -> str:
    """One sentence per method: its noise level over SGD's at the same b, as a range over b, for each β."""
    sgd = summary[summary["method"] == "sgd"].set_index("batch_size")["noise_level"]
    parts = []
    for (method, beta), rows in summary[summary["method"] != "sgd"].groupby(["method", "momentum"]):
        ratios = rows.set_index("batch_size")["noise_level"] / sgd
        parts.append(f"{method.upper()} β={beta:g}: {ratios.min():.2f}–{ratios.max():.2f}")
    return (
        "What they say: the measured noise level of momentum over SGD's at the same batch size "
        f"(range over b) — {'; '.join(parts)}. A ratio below 1 means that momentum reduced the noise."
    )


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


def _ratios_by_method(summary: pd.DataFrame) -> dict[str, float]:
    return {f"max_ratio_{method}": float(rows["ratio"].max()) for method, rows in summary.groupby("method")}


def _summary_table(summary: pd.DataFrame) -> str:
    lines = [
        "| setting | b | RMS‖ω‖ | C² | K | η·RMS‖ω‖ | δ | ratio | test accuracy (min–max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in summary.iterrows():
        lines.append(
            f"| {row['label']} | {row['batch_size']} | {row['noise_rms']:.3g} | {row['variance']:.3g} | "
            f"{row['gradient_bound']:.3g} | {row['noise_level']:.3g} | {row['delta']:.3g} | "
            f"{row['ratio']:.3f} | "
            f"{row['test_accuracy']:.3f} ({row['test_accuracy_min']:.3f}–{row['test_accuracy_max']:.3f}) |"
        )
    return "\n".join(lines)
