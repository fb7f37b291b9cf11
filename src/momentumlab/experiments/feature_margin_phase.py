"""Reproduction `feature-margin-phase`: small-margin test accuracy over learning rate × momentum.

The feature–margin reproduction compares GD and GD+M at one step size (η = 0.5). Here the same
data and model are trained over a grid of η and γ (the paper's EMA form; γ = 0 is GD), ≥ 3 seeds,
all points of a seed sharing one batched computation. Each optimizer is then tuned on the
validation split (:mod:`momentumlab.compare`: best mean validation accuracy over seeds, diverged
settings last) and its test accuracies at that setting are reported. The paper's claim is that GD
does not learn the small-margin data; a prototype suggested that GD with a large enough η does.
The report states for which η that holds, as measured, and whether the size of GD's first step along
the feature, c(1) = max_r |c_r(1)| (from a one-step rerun of each GD run: deterministic, the same
first step), predicts which GD runs learn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from momentumlab.claims import Claim
from momentumlab.compare import compare, to_markdown
from momentumlab.data.feature_margin import FeatureMarginDataConfig
from momentumlab.experiments.reproduction import Reproduction, ReproductionSettings, Seeds, Tables, read_prose
from momentumlab.optim.momentum import OptimizerConfig
from momentumlab.probes.projections import largest_signal
from momentumlab.report import save_figure
from momentumlab.runs.feature_margin import CubicCNNConfig, FeatureMarginRunConfig, FeatureMarginTrainConfig
from momentumlab.store import RunStore
from momentumlab.sweep import result_table

PAPER_LR = 0.5  # η of the feature-margin reproduction, at which the paper's GD claim is checked
SEPARATES = 0.9  # AUC of c(1) at which we say c(1) predicts GD's outcome ("excellent discrimination")
LEARNS = 0.9  # mean small-margin test accuracy at which we say an optimizer learns the small-margin data
FAILS = 0.75  # mean small-margin test accuracy at or below which GD does not learn it
FAMILIES = {"GD": "gd", "GD+M": "gd+ema_momentum"}  # label → optimizer family of momentumlab.compare


class Settings(ReproductionSettings):
    """The grid of η and γ, and the feature–margin data, model and training of every grid point."""

    seeds: Seeds = (0, 1, 2)
    learning_rates: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (0.25, 0.5, 1.0, 2.0, 4.0, 8.0), min_length=1, description="η of the grid"
    )
    momenta: tuple[Annotated[float, Field(ge=0, lt=1)], ...] = Field(
        (0.0, 0.9, 0.99), min_length=1, description="γ of the grid (EMA form; 0 is GD)"
    )
    data: FeatureMarginDataConfig = FeatureMarginDataConfig()
    model: CubicCNNConfig = CubicCNNConfig()
    train: FeatureMarginTrainConfig = FeatureMarginTrainConfig(
        steps=5000, log_every=500, checkpoint_every=1000
    )

    @classmethod
    def smoke(cls) -> Settings:
        return cls(
            learning_rates=(0.5, 4.0),
            momenta=(0.0, 0.9),
            data=FeatureMarginDataConfig(n_train=2000, n_test=500, n_val=500),
            train=FeatureMarginTrainConfig(steps=300, log_every=500, checkpoint_every=1000),
        )

    @model_validator(mode="after")
    def _grid(self) -> Settings:
        for name in ("seeds", "learning_rates", "momenta"):
            values = getattr(self, name)
            if len(set(values)) < len(values):
                raise ValueError(f"{name} = {list(values)}: each value may appear once")
        if 0.0 not in self.momenta:
            raise ValueError(f"momenta = {list(self.momenta)}: must include 0 (GD), which the claims compare")
        return self

    def first_step_config(self, lr: float, seed: int) -> FeatureMarginRunConfig:
        """GD's grid point (η, seed) stopped after one step, logged at steps 0 and 1."""
        config = self.run_config(lr, 0.0, seed)
        train = config.train.model_copy(
            update={
                "steps": 1,
                "log_every": 1,
                "log_geometric": False,
                "sharpness_every": None,
                "checkpoint_every": 1,
            }
        )
        return config.model_copy(update={"train": train})

    def run_config(self, lr: float, momentum: float, seed: int) -> FeatureMarginRunConfig:
        """One grid point: GD when γ = 0, else GD+M in the paper's EMA form."""
        return FeatureMarginRunConfig(
            seed=seed,
            data=self.data,
            model=self.model,
            optimizer=OptimizerConfig(
                name="gd" if momentum == 0 else "ema_momentum", lr=lr, momentum=momentum
            ),
            train=self.train,
        )


def measure(settings: Settings, store: RunStore) -> Tables:
    """Train (or load) the grid, batched; one row per run, and each optimizer tuned on validation."""
    configs = [
        settings.run_config(lr, momentum, seed)
        for momentum in settings.momenta
        for lr in settings.learning_rates
        for seed in settings.seeds
    ]
    store.run_many(configs)
    results = result_table(configs, store)
    first_steps = [
        settings.first_step_config(lr, seed) for lr in settings.learning_rates for seed in settings.seeds
    ]
    first_step = pd.DataFrame(
        {
            "optimizer.lr": config.optimizer.lr,
            "seed": config.seed,
            "c1": float(largest_signal(run.metrics().query("step == 1")).iloc[0])
            if run.status == "complete"
            else math.nan,
        }
        for config, run in zip(first_steps, store.run_many(first_steps))
    )
    return {"results": results, "compare": compare(results, "val_accuracy"), "first_step": first_step}


def _cell_means(results: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean over seeds per (γ, η), rows γ and columns η; NaN where any seed diverged."""
    complete = results.assign(value=results[column].where(results["status"] == "complete"))
    cells = complete.groupby(["optimizer.momentum", "optimizer.lr"])["value"]
    return cells.agg(lambda values: values.mean(skipna=False)).unstack("optimizer.lr")


def _learning_rates_where_gd_learns(gd: pd.Series) -> tuple[list[float], list[float]]:
    """(η at which GD's mean small-margin test accuracy `gd[η]` ≥ LEARNS, η at which it completes but
    stays below)."""
    return [lr for lr, v in gd.items() if v >= LEARNS], [lr for lr, v in gd.items() if v < LEARNS]


def _tuned(tables: Tables, label: str) -> float:
    """Mean small-margin test accuracy of an optimizer (a key of FAMILIES) at the setting chosen on
    validation."""
    tuned = tables["compare"].set_index("optimizer")
    family = FAMILIES[label]
    return float(tuned.loc[family, "test_accuracy_small mean"]) if family in tuned.index else math.nan


def tuned_gdm_learns_small_margin(settings: Settings, tables: Tables) -> Claim:
    """GD+M, tuned on validation, classifies the small-margin test data.

    References: Jelassi & Li (2022), Theorem 3.2: GD+M's test error is o(μ), so it learns the
    small-margin data."""
    return Claim(
        "tuned-gdm-learns-small-margin",
        f"GD+M tuned on validation: small-margin test accuracy ≥ {LEARNS}",
        _tuned(tables, "GD+M"),
        LEARNS,
        ">=",
    )


def tuned_gd_fails_small_margin(settings: Settings, tables: Tables) -> Claim:
    """GD, even tuned on validation over the grid of η, misclassifies the small-margin test data.

    References: Jelassi & Li (2022), Theorem 3.1: GD's test error is Ω(μ) — it misclassifies a constant
    fraction of the small-margin data."""
    return Claim(
        "tuned-gd-fails-small-margin",
        f"GD tuned on validation: small-margin test accuracy ≤ {FAILS} (the paper: GD does not learn it)",
        _tuned(tables, "GD"),
        FAILS,
        "<=",
    )


def gd_fails_at_paper_step(settings: Settings, tables: Tables) -> Claim:
    """GD at the feature-margin reproduction's step size misclassifies the small-margin test data.

    References: Jelassi & Li (2022), Theorem 3.1: GD's test error is Ω(μ) (for a small enough step η)."""
    gd = _cell_means(tables["results"], "test_accuracy_small").loc[0.0]
    return Claim(
        "gd-fails-at-paper-step",
        f"GD at η = {PAPER_LR:g}: small-margin test accuracy ≤ {FAILS}",
        float(gd.get(PAPER_LR, math.nan)),
        FAILS,
        "<=",
    )


def _gd_outcomes(tables: Tables) -> pd.DataFrame:
    """GD's completed runs with c(1) and whether each learns the small-margin data (accuracy ≥ LEARNS)."""
    results = tables["results"]
    gd = results[(results["optimizer.momentum"] == 0) & (results["status"] == "complete")]
    merged = gd.merge(tables["first_step"], on=["optimizer.lr", "seed"])
    return merged.assign(learns=merged["test_accuracy_small"] >= LEARNS)


def separation_auc(scores: pd.Series, positive: pd.Series) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2 (the ROC AUC, Mann–Whitney);
    NaN unless both classes occur."""
    high, low = scores[positive].to_numpy(), scores[~positive].to_numpy()
    if not (len(high) and len(low)):
        return math.nan
    greater = (high[:, None] > low[None, :]).mean()
    ties = (high[:, None] == low[None, :]).mean()
    return float(greater + ties / 2)


def first_step_predicts_gd(settings: Settings, tables: Tables) -> Claim:
    """The size of GD's first step along the feature, c(1) = max_r |c_r(1)|, separates the GD runs of
    the grid that learn the small-margin data from those that do not.

    References: Jelassi & Li (2022), Lemma 4.1 — GD's feature learning grows c by Θ(ηα³c²) per step, so
    at ηα³σ0 ≳ 1 it happens within the first step, outside the analysis; issue 13's finding that c(1)
    decides GD's outcome at large η ("c(1) predicts"), stated as a ROC AUC ≥ 0.9 over the grid's GD runs."""
    outcomes = _gd_outcomes(tables)
    learners, others = outcomes[outcomes["learns"]], outcomes[~outcomes["learns"]]
    return Claim(
        "first-step-predicts-gd",
        f"c(1) separates GD runs that learn the small-margin data (accuracy ≥ {LEARNS}) from the rest: "
        f"AUC ≥ {SEPARATES}",
        separation_auc(outcomes["c1"], outcomes["learns"]),
        SEPARATES,
        ">=",
        {
            "learners": len(learners),
            "others": len(others),
            "smallest c(1) of a learner": float(learners["c1"].min()) if len(learners) else math.nan,
            "largest c(1) of the others": float(others["c1"].max()) if len(others) else math.nan,
        },
    )


CLAIMS = (
    tuned_gdm_learns_small_margin,
    tuned_gd_fails_small_margin,
    gd_fails_at_paper_step,
    first_step_predicts_gd,
)


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """Heat maps over (η, γ) of the small-margin test, train and validation accuracies."""
    panels = [
        ("test_accuracy_small", "small-margin test accuracy"),
        ("train_accuracy", "train accuracy"),
        ("val_accuracy", "validation accuracy (selects η, γ)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.2))
    for axis, (column, title) in zip(axes, panels):
        means = _cell_means(tables["results"], column)
        image = axis.imshow(
            means.to_numpy(), cmap="viridis", vmin=0.4, vmax=1.0, origin="lower", aspect="auto"
        )
        for i, momentum in enumerate(means.index):
            for j, lr in enumerate(means.columns):
                value = means.loc[momentum, lr]
                text = "div." if math.isnan(value) else f"{value:.2f}"
                color = "white" if value < 0.75 else "k"
                axis.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
        axis.set_xticks(range(len(means.columns)), [f"{lr:g}" for lr in means.columns])
        axis.set_yticks(range(len(means.index)), [f"{m:g}" for m in means.index])
        axis.set_xlabel("learning rate η")
        axis.set_ylabel("momentum γ (0 = GD)")
        axis.set_title(f"{title}, mean over seeds", fontsize=10)
        figure.colorbar(image, ax=axis, shrink=0.85)
    figure.suptitle("Feature–margin data: GD and GD+M over (η, γ); 'div.' = a seed diverged")
    paths = [save_figure(figure, out_dir / "phase.png")]
    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    outcomes = _gd_outcomes(tables)
    scatter = axis.scatter(
        outcomes["c1"], outcomes["test_accuracy_small"], c=np.log2(outcomes["optimizer.lr"]), cmap="viridis"
    )
    axis.axhline(LEARNS, color="gray", linestyle="--", linewidth=1, label=f"learns: accuracy ≥ {LEARNS}")
    axis.set_xscale("log")
    axis.set_xlabel("c(1) = max_r |c_r| after GD's first step")
    axis.set_ylabel("small-margin test accuracy at T")
    axis.set_title("GD runs of the grid: first step c(1) against the outcome", fontsize=10)
    axis.legend(fontsize=8)
    figure.colorbar(scatter, ax=axis, label="log₂ η")
    paths.append(save_figure(figure, out_dir / "first_step.png"))
    return paths


def _finding(gd: pd.Series) -> str:
    """For which η GD learns the small-margin data (`gd`: its mean small-margin test accuracy per η)."""
    learns, does_not = _learning_rates_where_gd_learns(gd)
    if not learns:
        return (
            f"GD (γ = 0) does not reach mean small-margin test accuracy {LEARNS} at any η of the grid that "
            f"completed ({', '.join(f'{lr:g}' for lr in does_not)})."
        )
    return (
        f"GD (γ = 0) reaches mean small-margin test accuracy ≥ {LEARNS} at η ∈ "
        f"{{{', '.join(f'{lr:g}' for lr in learns)}}} and stays below it at η ∈ "
        f"{{{', '.join(f'{lr:g}' for lr in does_not)}}}. In this setting a large enough step lets plain GD "
        "learn the small-margin data too, so the paper's separation is a statement about GD at small step "
        "sizes, not about every tuned GD."
    )


def _means_table(means: pd.DataFrame) -> str:
    lines = ["| γ \\ η | " + " | ".join(f"{lr:g}" for lr in means.columns) + " |"]
    lines.append("|---|" + "---|" * len(means.columns))
    for momentum, row in means.iterrows():
        lines.append(f"| {momentum:g} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)


def _first_step_table(tables: Tables) -> str:
    """c(1) and small-margin test accuracy of each GD run, rows η and one column pair per seed."""
    outcomes = _gd_outcomes(tables).sort_values(["optimizer.lr", "seed"])
    lines = ["| η | c(1), small-margin test accuracy (per seed) |", "|---|---|"]
    for lr, rows in outcomes.groupby("optimizer.lr"):
        cells = ", ".join(
            f"{c1:.3g} → {accuracy:.2f}" for c1, accuracy in zip(rows["c1"], rows["test_accuracy_small"])
        )
        lines.append(f"| {lr:g} | {cells} |")
    return "\n".join(lines)


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    results = tables["results"]
    means = _cell_means(results, "test_accuracy_small")
    diverged = results[results["status"] == "diverged"]
    diverged_cells = sorted(set(zip(diverged["optimizer.lr"], diverged["optimizer.momentum"])))
    return {
        "grid": (
            f"{len(results)} runs ({len(settings.learning_rates)} η × {len(settings.momenta)} γ × "
            f"{len(settings.seeds)} seeds), T = {settings.train.steps} steps, "
            + (
                "full batch"
                if settings.train.batch_size is None
                else f"minibatch {settings.train.batch_size}"
            )
        ),
        "finding": _finding(means.loc[0.0]),
        "tuned": to_markdown(tables["compare"]),
        "means": _means_table(means),
        "diverged": ", ".join(f"({lr:g}, {m:g})" for lr, m in diverged_cells) or "none",
        "first_step": _first_step_table(tables),
    }


REPRODUCTION = Reproduction(
    name="feature-margin-phase",
    title="Where GD also learns small-margin data: a learning-rate × momentum phase diagram (Jelassi & Li)",
    settings=Settings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__),
    single_thread=True,  # a cubic CNN of 5 filters: a second thread mostly waits (see threads.py)
)
