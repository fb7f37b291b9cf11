"""Reproduction `noise-level`: the search-direction noise of SGD, SHB and NSHB, the degree of smoothing δ it
implies, and test accuracy (Sato & Iiduka, arXiv 2402.02325; SPEC §3).

SmallCNN on the digits, minibatch training with one constant learning rate η for every setting.

(a) Noise against batch size at matched parameter points. Along one reference SGD run per seed (batch size
`reference_batch_size`), at the steps `checkpoints` (initialization included), the N per-sample gradients
are taken once and SGD's noise ‖ω‖ = ‖g_B − ∇f‖ is measured for every batch size b over `draws` minibatches
drawn without replacement: every b is measured at the same iterates, so the slope of log RMS‖ω‖ against
log b is the batch size's effect alone (with a fixed number of epochs, large batches take few steps and
are measured near the initialization, where C² is much smaller). Sampling without replacement predicts
E‖ω‖² = (C²/b)(N − b)/(N − 1).

(b, c) The grid: SGD, SHB (m ← βm + g) and NSHB (m ← βm + (1−β)g) for every β in `momenta` at every b in
`train_batch_sizes`, each run for the same number of steps (an equal step budget, so a large batch is
not measured near its initialization only). At evenly spaced steps, first and last included, each run
measures ‖ω_t‖ = ‖d_t − ∇f(x_t)‖ with the full training gradient, and C²(x_t) and ‖∇f(x_t)‖ from
per-sample gradients. Per setting, C² and K are the maxima of those measurements over its runs and
steps, and δ is the theory's formula with them. A run has converged when it ends with train accuracy
≥ CONVERGED (set before the runs); only converged runs enter the correlation of test accuracy with the
noise level, which is stated per batch size and pooled, with bootstrap intervals over runs. All runs of
one seed share the initialization and the order of the minibatches (per batch size). Around SGD's trained
x* (reference batch size, first seed) the smoothed training loss f̂_δ is measured along a line and at x*
against δ.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
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
    finite_population_noise,
    flat_model_loss,
    gradient_statistics,
    minibatch_noise_norms,
    per_sample_gradients,
    search_direction,
    search_noise,
    smoothing_degree,
)
from momentumlab.probes.smoothing import quadratic_lift, smoothed_line, smoothing_lift, unit_ball
from momentumlab.report import markdown_table, save_figure
from momentumlab.seeds import ORDER_SEED_OFFSET
from momentumlab.statistics import Estimate, bootstrap_mean
from momentumlab.store import RunStore

SLOPE_TARGET, SLOPE_TOLERANCE = -0.5, 0.1  # claim (a): slope in [−0.6, −0.4]
CONVERGED = 0.9  # a run has converged when its final train accuracy is at least this (set before the runs)
CONFIDENCE, RESAMPLES = 0.95, 2000  # bootstrap intervals of the rank correlations
RAW_LABEL = "f (raw)"  # the unsmoothed loss in the smoothing line's table
METHOD_STYLE = {"sgd": ("black", "o"), "shb": ("#d1495b", "s"), "nshb": ("#00798c", "^")}  # color, marker
MOMENTUM_COLORS = {0.0: "black", 0.5: "#edae49", 0.9: "#d1495b", 0.99: "#66a182"}
BatchSizes = Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=2)]


class SmoothingSettings(StrictModel):
    """The smoothed loss around SGD's trained x*: along a line, and its lift at x* against δ."""

    points: int = Field(21, ge=1, description="points along the line")
    pairs: int = Field(8, ge=2, description="antithetic pairs ±u of unit-ball draws per point")
    lift_points: int = Field(9, ge=1, description="δ of the lift, geometric from δ_max/100 to 2δ_max")
    trace_probes: int = Field(30, ge=2, description="Hutchinson probes for tr(H) at x*")
    line_seed: int = Field(0, ge=0, description="the line's random direction, the ball draws and probes")


class Settings(ReproductionSettings):
    """The matched-point noise study, the grid of optimizers and batch sizes, the training protocol, the
    measurements and the smoothing."""

    seeds: Seeds = (0, 1, 2)  # seed s: initialization from s, minibatch order from ORDER_SEED_OFFSET + s
    batch_sizes: BatchSizes = Field((16, 32, 64, 128, 256, 512), description="b of the matched-point study")
    train_batch_sizes: BatchSizes = Field((16, 32, 64), description="b of the trained grid")
    momenta: tuple[Annotated[float, Field(ge=0, lt=1)], ...] = Field((0.0, 0.5, 0.9), min_length=1)
    lr: float = Field(0.2, gt=0, description="η, the same for every setting")
    steps: int = Field(800, ge=1, description="the equal step budget of every run")
    reference_batch_size: int = Field(64, ge=1, description="b of the reference SGD run (a train batch size)")
    checkpoints: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        (0, 300), min_length=1, description="steps of the reference run at which every b is measured"
    )
    draws: int = Field(200, ge=2, description="minibatches per b and checkpoint in the matched-point study")
    measurements: int = Field(3, ge=1, description="measured steps per run, evenly spaced, first to last")
    width: int = Field(16, ge=1, description="SmallCNN's channels")
    data_seed: int = Field(0, ge=0, description="the digits' train/test split")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of the digits held out for testing")
    chunk_size: int = Field(512, ge=1, description="per-sample gradients held in memory at once")
    smoothing: SmoothingSettings = SmoothingSettings()

    @model_validator(mode="after")
    def _grid_is_well_formed(self) -> Settings:
        if 0.0 not in self.momenta:
            raise ValueError(f"momenta = {list(self.momenta)}: must contain 0 (SGD), the reference run's")
        for field in ("batch_sizes", "train_batch_sizes", "momenta", "checkpoints"):
            values = getattr(self, field)
            if len(set(values)) != len(values):
                raise ValueError(f"{field} = {list(values)}: every value must appear once")
        if self.reference_batch_size not in self.train_batch_sizes:
            raise ValueError(
                f"reference_batch_size = {self.reference_batch_size}: allowed are the train_batch_sizes "
                f"{list(self.train_batch_sizes)}"
            )
        if max(self.checkpoints) > self.steps:
            raise ValueError(f"checkpoints = {list(self.checkpoints)}: allowed are steps 0..{self.steps}")
        return self

    @classmethod
    def smoke(cls) -> Settings:
        return cls(
            seeds=(0,),
            batch_sizes=(16, 64, 256),
            train_batch_sizes=(64, 256),
            momenta=(0.0, 0.9),
            steps=40,
            checkpoints=(0, 40),
            draws=20,
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
    """SGD, and SHB and NSHB for every non-zero β, at every train batch size (batch size first)."""
    rules = [("sgd", 0.0)] + [
        (method, beta) for method in ("shb", "nshb") for beta in settings.momenta if beta > 0
    ]
    return [OptimizerSetting(method, beta, b) for b in settings.train_batch_sizes for method, beta in rules]


def _minibatches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Minibatches of a fresh permutation per epoch, the last incomplete one of each epoch dropped."""
    while True:
        permutation = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            yield permutation[start : start + batch_size]


@dataclass(frozen=True)
class TrainedRun:
    """One run of the grid: its measured steps, final accuracies, final point and the kept iterates."""

    rows: list[dict[str, float]]  # step, noise_norm, gradient_norm, variance at the measured steps
    train_accuracy: float
    test_accuracy: float
    final: torch.Tensor
    kept: dict[int, torch.Tensor]  # step → x_step for the steps asked for
    diverged_at: int | None  # first step with a non-finite point, or None


def _train(
    settings: Settings, data: DigitsData, setting: OptimizerSetting, seed: int, keep: tuple[int, ...] = ()
) -> TrainedRun:
    """One run of `settings.steps` steps, x_{t+1} = x_t − η d_t with d_t the setting's search direction,
    measuring (‖ω_t‖, ‖∇f(x_t)‖, C²(x_t)) at evenly spaced steps and keeping x_t for t in `keep`."""
    model = SmallCNN(width=settings.width, generator=torch.Generator().manual_seed(seed))
    loss, point = flat_model_loss(model, F.cross_entropy)
    stochastic_gradient = grad(loss)
    inputs, labels = data.train.inputs, data.train.labels
    total, measurements = settings.steps, settings.measurements
    measured = {round(k * (total - 1) / max(measurements - 1, 1)) for k in range(measurements)}
    batches = _minibatches(
        len(labels), setting.batch_size, torch.Generator().manual_seed(ORDER_SEED_OFFSET + seed)
    )
    buffer, rows, kept, diverged_at = torch.zeros_like(point), [], {}, None
    for step in range(total + 1):
        if step in keep:
            kept[step] = point.clone()
        if step == total:
            break
        batch = next(batches)
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
        point, buffer = point - settings.lr * direction, direction
        if not torch.isfinite(point).all():
            diverged_at = step + 1
            break
    accuracy, _ = flat_model_loss(model, lambda logits, y: (logits.argmax(1) == y).double().mean())
    train, test = (
        accuracy(point, inputs, labels).item(),
        accuracy(point, data.test.inputs, data.test.labels).item(),
    )
    if diverged_at is not None:
        train = test = math.nan
    return TrainedRun(rows, train, test, point, kept, diverged_at)


def _matched_noise(
    settings: Settings, data: DigitsData, seed: int, points: dict[int, torch.Tensor]
) -> list[dict[str, float]]:
    """SGD's noise for every b at the reference run's kept iterates: RMS‖ω‖ over `draws` minibatches, C²
    there and the finite-population prediction √((C²/b)(N − b)/(N − 1))."""
    model = SmallCNN(width=settings.width, generator=torch.Generator())  # parameters come from `points`
    loss, _ = flat_model_loss(model, F.cross_entropy)
    inputs, labels = data.train.inputs, data.train.labels
    count, rows = len(labels), []
    for step, point in points.items():
        gradients = per_sample_gradients(loss, point, inputs, labels, settings.chunk_size)  # rows ∇f_i
        variance = (gradients - gradients.mean(0)).pow(2).sum(1).mean().item()  # C²(x)
        generator = torch.Generator().manual_seed(seed)
        for b in settings.batch_sizes:
            norms = minibatch_noise_norms(gradients, b, settings.draws, generator)
            rows.append(
                {
                    "seed": seed,
                    "step": step,
                    "batch_size": b,
                    "noise_rms": norms.pow(2).mean().sqrt().item(),  # √(mean over draws of ‖ω‖²)
                    "variance": variance,
                    "predicted_rms": math.sqrt(finite_population_noise(variance, b, count)),
                }
            )
    return rows


def _summarize(settings: Settings, measurements: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting: RMS‖ω‖, η·RMS‖ω‖, C² and K (maxima over runs and steps), δ, the ratio, the test
    accuracy over all runs and over the converged ones, and how many converged."""
    lr, rows = settings.lr, []
    for setting in optimizer_settings(settings):
        key = (setting.method, setting.momentum, setting.batch_size)
        frame = measurements[_matches(measurements, key)]
        noise_rms = math.sqrt((frame["noise_norm"] ** 2).mean())  # √(mean over steps and seeds of ‖ω_t‖²)
        variance, bound = frame["variance"].max(), frame["gradient_norm"].max()  # C², K
        delta = smoothing_degree(setting.method, lr, setting.batch_size, setting.momentum, variance, bound)
        setting_runs = runs[_matches(runs, key)]
        converged = setting_runs[setting_runs["converged"]]
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
                "train_accuracy": float(setting_runs["train_accuracy"].mean()),
                "test_accuracy": float(setting_runs["test_accuracy"].mean()),
                "test_accuracy_converged": float(converged["test_accuracy"].mean()),
                "converged": len(converged),
                "runs": len(setting_runs),
            }
        )
    return pd.DataFrame(rows)


def _matches(table: pd.DataFrame, key: tuple[str, float, int]) -> pd.Series:
    method, momentum, batch_size = key
    return (table["method"] == method) & (table["momentum"] == momentum) & (table["batch_size"] == batch_size)


def _smoothing_deltas(summary: pd.DataFrame, reference_batch_size: int) -> dict[str, float]:
    """The δ of the smoothing line: SGD's measured noise level and theory's δ at the reference batch size,
    and the largest measured noise level of a setting whose runs all converged (of any, if none did)."""
    sgd = summary[summary["method"] == "sgd"]
    base = sgd[sgd["batch_size"] == reference_batch_size].iloc[0]
    trained = summary[summary["converged"] == summary["runs"]]
    candidates = trained if len(trained) else summary
    loudest = candidates.loc[candidates["noise_level"].idxmax()]
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
    """Train every setting for every seed for the same number of steps, measuring the noise on the way; at
    the reference SGD run's checkpoints, SGD's noise for every b; summarize per setting; then the smoothing
    around the reference run's x* (first seed). The runs are not a registered kind: nothing goes through
    `store`, and the runner caches these tables."""
    data = load_digits_dataset(settings.test_fraction, seed=settings.data_seed)
    count = len(data.train)
    if max(settings.batch_sizes + settings.train_batch_sizes) > count:
        raise ValueError(
            f"batch_sizes = {list(settings.batch_sizes)}, train_batch_sizes = "
            f"{list(settings.train_batch_sizes)}: each must be at most the {count} training images"
        )
    reference = OptimizerSetting("sgd", 0.0, settings.reference_batch_size)
    measured, runs, matched, solution = [], [], [], None
    for setting in optimizer_settings(settings):
        for seed in settings.seeds:
            keep = settings.checkpoints if setting == reference else ()
            run = _train(settings, data, setting, seed, keep)
            key = {
                "method": setting.method,
                "momentum": setting.momentum,
                "batch_size": setting.batch_size,
                "label": setting.label,
                "seed": seed,
            }
            measured += [{**key, **row} for row in run.rows]
            runs.append(
                {
                    **key,
                    "steps": settings.steps,
                    "noise_level": settings.lr
                    * math.sqrt(np.mean([row["noise_norm"] ** 2 for row in run.rows])),
                    "train_accuracy": run.train_accuracy,
                    "test_accuracy": run.test_accuracy,
                    "converged": run.train_accuracy >= CONVERGED,  # NaN (diverged) is not converged
                    "diverged_at": run.diverged_at if run.diverged_at is not None else math.nan,
                }
            )
            if setting == reference:
                matched += _matched_noise(settings, data, seed, run.kept)
                solution = run.final if solution is None else solution  # the first seed's x*
    measurements, runs = pd.DataFrame(measured), pd.DataFrame(runs)
    summary = _summarize(settings, measurements, runs)
    problem = {"parameters": solution.numel(), "train_examples": count, "test_examples": len(data.test)}
    deltas = _smoothing_deltas(summary, settings.reference_batch_size)
    return {
        "matched_noise": pd.DataFrame(matched),
        "measurements": measurements,
        "runs": runs,
        "summary": summary,
        **_smoothing_tables(settings, data, deltas, solution),
        "problem": pd.DataFrame([problem]),
    }


def _slope(frame: pd.DataFrame, column: str) -> float:
    """Least-squares slope of log `column` against log b."""
    return float(np.polyfit(np.log(frame["batch_size"]), np.log(frame[column]), 1)[0])


def matched_slopes(tables: Tables) -> pd.DataFrame:
    """Per seed and checkpoint: the measured slope of log RMS‖ω‖ against log b and the predicted one."""
    rows = [
        {
            "seed": seed,
            "step": step,
            "slope": _slope(frame, "noise_rms"),
            "predicted": _slope(frame, "predicted_rms"),
        }
        for (seed, step), frame in tables["matched_noise"].groupby(["seed", "step"])
    ]
    return pd.DataFrame(rows)


def _training_slope(summary: pd.DataFrame) -> float:
    """SGD's slope of log RMS‖ω‖ against log b along the trained runs (not at matched points)."""
    return _slope(summary[summary["method"] == "sgd"], "noise_rms")


def _spearman(frame: pd.DataFrame) -> float:
    """Spearman ρ of the noise level and the test accuracy over the rows (NaN when either is constant)."""
    if frame["noise_level"].nunique() < 2 or frame["test_accuracy"].nunique() < 2:
        return math.nan
    return float(spearmanr(frame["noise_level"], frame["test_accuracy"]).statistic)


def _converged(tables: Tables) -> pd.DataFrame:
    runs = tables["runs"]
    return runs[runs["converged"].astype(bool)]


def correlation(frame: pd.DataFrame, by_batch_size: bool) -> Estimate:
    """Spearman ρ(noise level, test accuracy) over the runs of `frame` (pooled), or its mean over batch
    sizes (`by_batch_size`), with a percentile-bootstrap interval: runs resampled with replacement (within
    each batch size for the mean over batch sizes). A group whose noise or accuracy is constant has no ρ and
    is left out of the mean; NaN when no group has one."""
    groups = [rows for _, rows in frame.groupby("batch_size")] if by_batch_size else [frame]

    def statistic(parts: list[pd.DataFrame]) -> float:
        values = [rho for rho in map(_spearman, parts) if not math.isnan(rho)]
        return float(np.mean(values)) if values else math.nan

    point = statistic(groups) if len(frame) else math.nan
    if math.isnan(point):
        return Estimate(math.nan, math.nan, math.nan, len(frame), CONFIDENCE)
    generator = np.random.default_rng(0)
    resampled = np.array(
        [
            statistic([group.iloc[generator.integers(0, len(group), len(group))] for group in groups])
            for _ in range(RESAMPLES)
        ]
    )
    tail = (1 - CONFIDENCE) / 2  # α/2
    low, high = np.quantile(resampled[~np.isnan(resampled)], [tail, 1 - tail])
    return Estimate(point, float(low), float(high), len(frame), CONFIDENCE)


def _ratios_by_method(summary: pd.DataFrame) -> dict[str, float]:
    return {f"max_ratio_{method}": float(rows["ratio"].max()) for method, rows in summary.groupby("method")}


def _convergence_counts(runs: pd.DataFrame) -> dict[int, str]:
    """Per batch size: 'converged/runs'."""
    return {
        int(b): f"{int(rows['converged'].astype(bool).sum())}/{len(rows)}"
        for b, rows in runs.groupby("batch_size")
    }


def sgd_noise_falls_as_inverse_sqrt_batch(settings: Settings, tables: Tables) -> Claim:
    """At matched parameter points, SGD's search-direction noise falls like 1/√b.

    References: Sato & Iiduka (arXiv 2402.02325), the bound on SGD's search-direction noise behind
    δ = ηC/√b (SPEC §3): E‖ω_t‖² ≤ C²/b at a point x_t, so at the same point the noise falls like 1/√b."""
    slopes = matched_slopes(tables)
    worst = slopes.assign(deviation=(slopes["slope"] - SLOPE_TARGET).abs()).groupby("seed")["deviation"].max()
    low, high = SLOPE_TARGET - SLOPE_TOLERANCE, SLOPE_TARGET + SLOPE_TOLERANCE
    return Claim.from_estimate(
        "sgd-noise-falls-as-inverse-sqrt-batch",
        f"SGD at matched points (the same iterates for every b): log–log slope of RMS‖ω‖ against b within "
        f"[{low:g}, {high:g}] at every checkpoint (measured: worst |slope + 0.5| per seed, mean over seeds)",
        bootstrap_mean(worst.tolist()),
        SLOPE_TOLERANCE,
        "<=",
        {
            "slopes": {f"seed {row.seed}, step {row.step}": row.slope for row in slopes.itertuples()},
            "predicted_slopes": {
                f"seed {row.seed}, step {row.step}": row.predicted for row in slopes.itertuples()
            },
            "slope_along_training_runs": _training_slope(tables["summary"]),
        },
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
    """Generalization depends on the noise level: lower noise, higher test accuracy (pooled over b).

    References: Sato & Iiduka (arXiv 2402.02325), abstract of versions 1–3 (SPEC §3): "higher
    generalizability correlates with lower noise levels"; "model generalizability depends on the
    stochastic noise level". Version 4 reverses the conclusion ("Momentum does not reduce stochastic
    noise")."""
    converged = _converged(tables)
    return Claim.from_estimate(
        "lower-noise-higher-accuracy",
        f"over the converged runs (train accuracy ≥ {CONVERGED:g}) at an equal step budget, test accuracy "
        "falls with the noise level η·RMS‖ω‖ (Spearman ρ < 0, pooled over batch sizes, 95% bootstrap "
        "interval over runs)",
        correlation(converged, by_batch_size=False),
        0.0,
        "<",
        {"converged_per_batch_size": _convergence_counts(tables["runs"])},
    )


def lower_noise_higher_accuracy_within_batch_size(settings: Settings, tables: Tables) -> Claim:
    """The same dependence within each batch size, where momentum alone moves the noise level.

    References: Sato & Iiduka (arXiv 2402.02325), abstract of versions 1–3 (SPEC §3): momentum's noise
    level, set by η, b and β, determines generalization; at a fixed b the settings differ in β only."""
    converged = _converged(tables)
    per_batch_size = {
        int(b): correlation(rows, by_batch_size=False) for b, rows in converged.groupby("batch_size")
    }
    return Claim.from_estimate(
        "lower-noise-higher-accuracy-within-batch-size",
        "within each batch size, over its converged runs, test accuracy falls with the noise level "
        "(Spearman ρ < 0; mean of the per-b ρ, 95% bootstrap interval resampling runs within each b)",
        correlation(converged, by_batch_size=True),
        0.0,
        "<",
        {
            "rho_per_batch_size": {
                b: {"rho": e.mean, "interval": [e.low, e.high], "runs": e.n}
                for b, e in per_batch_size.items()
            }
        },
    )


CLAIMS = (
    sgd_noise_falls_as_inverse_sqrt_batch,
    noise_within_smoothing_degree,
    lower_noise_higher_accuracy,
    lower_noise_higher_accuracy_within_batch_size,
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


def _plot_matched(settings: Settings, tables: Tables, path: Path) -> Path:
    """SGD's RMS‖ω‖ against b at each checkpoint of the reference run (one line per seed) with the
    finite-population prediction and a 1/√b line."""
    matched = tables["matched_noise"]
    steps = sorted(matched["step"].unique())
    figure, axes = plt.subplots(1, len(steps), figsize=(6 * len(steps), 4.6), squeeze=False)
    slopes = matched_slopes(tables).set_index(["seed", "step"])
    for axis, step in zip(axes[0], steps):
        for seed, rows in matched[matched["step"] == step].groupby("seed"):
            slope = slopes.loc[(seed, step), "slope"]
            axis.plot(
                rows["batch_size"], rows["noise_rms"], marker="o", label=f"seed {seed}: slope {slope:.3f}"
            )
            axis.plot(rows["batch_size"], rows["predicted_rms"], color="gray", linestyle="--", linewidth=1)
        first = matched[matched["step"] == step].groupby("batch_size")["noise_rms"].mean()
        reference = first.iloc[0] * np.sqrt(first.index[0] / first.index.to_numpy())
        axis.plot(first.index, reference, color="black", linestyle=":", label="∝ 1/√b")
        axis.plot([], [], color="gray", linestyle="--", label="√((C²/b)(N − b)/(N − 1))")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(list(first.index), [str(b) for b in first.index])
        axis.minorticks_off()
        axis.set_xlabel("batch size b")
        axis.set_ylabel("RMS‖g_B − ∇f‖")
        axis.set_title(
            f"SGD's noise at step {step} of the reference run (b = {settings.reference_batch_size}), "
            f"{settings.draws} draws per b",
            fontsize=10,
        )
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    return save_figure(figure, path, dpi=110)


def _plot_accuracy(tables: Tables, path: Path) -> Path:
    """Test accuracy against the noise level per run: converged runs filled, the others hollow (their
    accuracy is NaN when they diverged, so they are not drawn); one color per batch size."""
    runs = tables["runs"]
    batch_sizes = sorted(runs["batch_size"].unique())
    colors = dict(zip(batch_sizes, plt.cm.viridis(np.linspace(0, 0.9, len(batch_sizes)))))
    pooled = correlation(_converged(tables), by_batch_size=False)
    figure, axis = plt.subplots(figsize=(8, 5))
    for row in runs.itertuples():
        color, marker = colors[row.batch_size], METHOD_STYLE[row.method][1]
        converged = bool(row.converged)
        axis.scatter(
            row.noise_level,
            row.test_accuracy,
            marker=marker,
            s=36,
            facecolors=color if converged else "none",
            edgecolors=color,
        )
    handles = [
        plt.Line2D([], [], color="gray", marker=style[1], linestyle="none", label=method.upper())
        for method, style in METHOD_STYLE.items()
    ] + [
        plt.Line2D([], [], color=color, marker="o", linestyle="none", label=f"b={b}")
        for b, color in colors.items()
    ]
    handles.append(
        plt.Line2D(
            [], [], color="gray", marker="o", markerfacecolor="none", linestyle="none", label="not converged"
        )
    )
    axis.legend(handles=handles, fontsize=7, ncol=2)
    axis.set_xscale("log")
    axis.set_xlabel("noise level η·RMS‖ω‖ of the run")
    axis.set_ylabel("test accuracy after the step budget")
    axis.set_title(
        f"per run; converged = train accuracy ≥ {CONVERGED:g} (filled). Pooled Spearman ρ over converged "
        f"runs {pooled.mean:+.2f} [{pooled.low:+.2f}, {pooled.high:+.2f}]",
        fontsize=9,
    )
    axis.grid(alpha=0.3)
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
        f"training loss f through SGD's x* (b={settings.reference_batch_size}, seed {settings.seeds[0]}) and "
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
    """SGD's noise at matched points; noise and δ against b and β; test accuracy against the noise; the
    smoothed loss around SGD's x*."""
    return [
        _plot_matched(settings, tables, out_dir / "matched_noise.png"),
        _plot_noise(tables["summary"], out_dir / "noise.png"),
        _plot_accuracy(tables, out_dir / "accuracy_vs_noise.png"),
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
            "converged / runs": [f"{row.converged} / {row.runs}" for row in summary.itertuples()],
            "train accuracy": summary["train_accuracy"],
            "test accuracy": summary["test_accuracy"],
            "test accuracy (converged)": summary["test_accuracy_converged"],
        }
    )
    formats = {column: ".3g" for column in ("RMS‖ω‖", "C²", "K", "η·RMS‖ω‖", "δ")}
    accuracies = {
        column: ".3f" for column in ("train accuracy", "test accuracy", "test accuracy (converged)")
    }
    return markdown_table(table, {**formats, "ratio": ".3f", **accuracies})


def _matched_table(tables: Tables) -> str:
    """Per checkpoint: C² and the slopes, measured and predicted, per seed."""
    slopes = matched_slopes(tables)
    variances = (
        tables["matched_noise"].drop_duplicates(["seed", "step"]).set_index(["seed", "step"])["variance"]
    )
    table = pd.DataFrame(
        {
            "seed": slopes["seed"],
            "step": slopes["step"],
            "C²(x)": [variances[(row.seed, row.step)] for row in slopes.itertuples()],
            "slope (measured)": slopes["slope"],
            "slope (finite population)": slopes["predicted"],
        }
    )
    return markdown_table(
        table, {"C²(x)": ".4g", "slope (measured)": ".3f", "slope (finite population)": ".3f"}
    )


def _correlation_table(tables: Tables) -> str:
    """Per batch size and pooled: runs, converged runs and Spearman ρ with its interval."""
    runs, converged = tables["runs"], _converged(tables)
    lines = ["| batch size | converged / runs | Spearman ρ (95% interval) |", "|---|---|---|"]

    def cell(estimate: Estimate) -> str:
        if math.isnan(estimate.mean):
            return "— (fewer than two distinct values)"
        return f"{estimate.mean:+.3f} [{estimate.low:+.3f}, {estimate.high:+.3f}]"

    for b, rows in runs.groupby("batch_size"):
        kept = converged[converged["batch_size"] == b]
        lines.append(f"| {b} | {len(kept)} / {len(rows)} | {cell(correlation(kept, by_batch_size=False))} |")
    lines.append(
        f"| pooled | {len(converged)} / {len(runs)} | {cell(correlation(converged, by_batch_size=False))} |"
    )
    lines.append(f"| mean over b | | {cell(correlation(converged, by_batch_size=True))} |")
    return "\n".join(lines)


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    summary, runs, line = tables["summary"], tables["runs"], tables["smoothing_line"]
    problem, trace = tables["problem"].iloc[0], tables["smoothing_trace"].iloc[0]
    worst = summary.loc[summary["ratio"].idxmax()]
    at_solution = line[line["offset"].abs() == line["offset"].abs().min()]
    slopes = matched_slopes(tables)
    count = int(problem["train_examples"])
    diverged = runs[runs["diverged_at"].notna()]
    return {
        "width": str(settings.width),
        "dim": str(problem["parameters"]),
        "train": str(count),
        "test": str(problem["test_examples"]),
        "data_seed": str(settings.data_seed),
        "lr": f"{settings.lr:g}",
        "steps": str(settings.steps),
        "epochs": ", ".join(f"b={b}: {settings.steps * b / count:.1f}" for b in settings.train_batch_sizes),
        "betas": ", ".join(f"{beta:g}" for beta in settings.momenta if beta > 0),
        "train_batch_sizes": ", ".join(map(str, settings.train_batch_sizes)),
        "batch_sizes": ", ".join(map(str, settings.batch_sizes)),
        "reference": str(settings.reference_batch_size),
        "checkpoints": ", ".join(map(str, settings.checkpoints)),
        "draws": str(settings.draws),
        "seeds": str(list(settings.seeds)),
        "offset": str(ORDER_SEED_OFFSET),
        "measurements": str(settings.measurements),
        "converged_level": f"{CONVERGED:g}",
        "matched_table": _matched_table(tables),
        "mean_slope": f"{slopes['slope'].mean():.3f}",
        "mean_predicted": f"{slopes['predicted'].mean():.3f}",
        "training_slope": f"{_training_slope(summary):.3f}",
        "worst_ratio": f"{worst['ratio']:.3f}",
        "worst_setting": f"{worst['label']}, b={worst['batch_size']}",
        "ratios_by_method": ", ".join(
            f"{key.removeprefix('max_ratio_').upper()} {value:.3f}"
            for key, value in _ratios_by_method(summary).items()
        ),
        "correlation_table": _correlation_table(tables),
        "not_converged": str(int((~runs["converged"].astype(bool)).sum())),
        "run_count": str(len(runs)),
        "diverged": str(len(diverged)),
        "momentum_effect": _momentum_effect(summary),
        "summary": _summary_table(summary),
        "samples": str(2 * settings.smoothing.pairs),
        "where": f"b={settings.reference_batch_size}",
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
