"""Reproduction `cifar-momentum`: Figure 1 of Jelassi & Li — momentum improves full-batch GD's test
accuracy on CIFAR-10/100 with ResNet-18 and WideResNet-16 (no augmentation, dropout or batch norm).

Runs: {ResNet-18, WRN-16-8} × {CIFAR-10, CIFAR-100} × {GD, GD+M (full batch, 50 000 images), SGD,
SGD+M (batch 128)} × 3 seeds, 300 epochs each; within a seed every optimizer starts from the same
initialization. The paper grid-searched the (scheduled) learning rate and the weight decay per
algorithm and does not report the winners. We run one point of that grid for all four optimizers, so
that momentum is the only change: η = 0.1 (the momentum runs in the paper's EMA form with γ = 0.9,
which moves by η times a gradient average), cosine decay after 5 warm-up epochs, coupled weight decay
5·10⁻⁴; change them with `--set gd.lr=…`, `--set gdm.lr=…` and `--set train.weight_decay=…`. The
widen factor of the paper's WideResNet-16 is not stated; we use k = 8. A full run is a GPU job (CUDA,
bf16 autocast, channels-last). The smoke variant trains on 32 train / 32 test images for 2 epochs on
the CPU, with the small CNN in ResNet-18's place and WRN-16-1 in WRN-16-8's: a check that the pipeline
runs, not a result.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from pydantic import Field, model_validator

from momentumlab.claims import Claim
from momentumlab.data.images import ImageDataConfig
from momentumlab.experiments.reproduction import (
    ClaimFunction,
    Reproduction,
    ReproductionSettings,
    Seeds,
    Tables,
    read_prose,
)
from momentumlab.experiments.tables import by_group, run_tables
from momentumlab.optim.momentum import OptimizerConfig
from momentumlab.report import markdown_table, plot_mean_band, save_figure
from momentumlab.runs.image import CIFAR_TRAIN, ImageModelConfig, ImageRunConfig, ImageTrainConfig
from momentumlab.statistics import paired_difference
from momentumlab.store import RunStore

# label → (its update rule, a Settings field; whether it trains on minibatches of Settings.minibatch)
OPTIMIZERS = {"GD": ("gd", False), "GD+M": ("gdm", False), "SGD": ("gd", True), "SGD+M": ("gdm", True)}
COLORS = {"GD": "#d1495b", "GD+M": "#00798c", "SGD": "#edae49", "SGD+M": "#30638e"}
FITS = 0.99  # train accuracy every run must reach
# Figure 1, test accuracy (%) at the end of training, by (model, dataset)
PAPER = {
    ("ResNet-18", "CIFAR-10"): {"GD": 75.83, "GD+M": 84.68, "SGD": 86.15, "SGD+M": 85.91},
    ("ResNet-18", "CIFAR-100"): {"GD": 43.32, "GD+M": 51.99, "SGD": 53.81, "SGD+M": 58.01},
    ("WRN-16-8", "CIFAR-10"): {"GD": 75.02, "GD+M": 84.48, "SGD": 84.83, "SGD+M": 87.85},
    ("WRN-16-8", "CIFAR-100"): {"GD": 42.95, "GD+M": 51.33, "SGD": 55.09, "SGD+M": 60.83},
}
PAPER_MODELS = ("ResNet-18", "WRN-16-8")
PAPER_DATASETS = ("CIFAR-10", "CIFAR-100")


class Settings(ReproductionSettings):
    """Figure 1's networks and datasets (keyed by the paper's labels), how they train, and the two update
    rules, each run with the full batch (GD, GD+M) and with minibatches (SGD, SGD+M)."""

    seeds: Seeds = (0, 1, 2)
    models: dict[str, ImageModelConfig] = Field(
        default_factory=lambda: {
            "ResNet-18": ImageModelConfig(name="resnet18", norm="none"),
            "WRN-16-8": ImageModelConfig(name="wide_resnet16", widen_factor=8, norm="none"),
        }
    )
    datasets: dict[str, ImageDataConfig] = Field(
        default_factory=lambda: {
            "CIFAR-10": ImageDataConfig(name="cifar10"),
            "CIFAR-100": ImageDataConfig(name="cifar100"),
        }
    )
    train: ImageTrainConfig = CIFAR_TRAIN
    gd: OptimizerConfig = OptimizerConfig(name="gd", lr=0.1)
    gdm: OptimizerConfig = OptimizerConfig(name="ema_momentum", lr=0.1, momentum=0.9)
    minibatch: int = Field(128, ge=1, description="batch size of SGD and SGD+M")

    @classmethod
    def smoke(cls) -> Settings:
        """32 images per set, 2 epochs on the CPU, and stand-ins for the networks (ResNet-18 alone takes
        most of a minute there); the networks themselves are tested in tests/models."""
        return cls(
            seeds=(0,),
            models={
                "ResNet-18": ImageModelConfig(name="small_cnn", width=8),
                "WRN-16-8": ImageModelConfig(name="wide_resnet16", widen_factor=1, norm="none"),
            },
            datasets={
                "CIFAR-10": ImageDataConfig(name="cifar10", train_size=32, test_size=32),
                "CIFAR-100": ImageDataConfig(name="cifar100", train_size=32, test_size=32),
            },
            train=ImageTrainConfig(
                epochs=2, chunk_size=16, weight_decay=5e-4, device="cpu", sharpness_at_end=False
            ),
            minibatch=16,
        )

    @model_validator(mode="after")
    def _valid(self) -> Settings:
        for field, labels, allowed in (
            ("models", self.models, PAPER_MODELS),
            ("datasets", self.datasets, PAPER_DATASETS),
        ):
            if sorted(labels) != sorted(allowed):
                raise ValueError(f"{field} has the keys {list(labels)}; allowed: the paper's {list(allowed)}")
        if self.train.batch_size is not None:
            raise ValueError(
                f"train.batch_size = {self.train.batch_size}: GD and GD+M use the full batch and SGD and "
                "SGD+M the minibatch setting; allowed: null"
            )
        for model in self.models:  # e.g. minibatch > data.train_size fails here, before anything runs
            for dataset in self.datasets:
                for label in OPTIMIZERS:
                    self.run_config(model, dataset, label, self.seeds[0])
        return self

    def run_config(self, model: str, dataset: str, label: str, seed: int) -> ImageRunConfig:
        """One run of Figure 1: a model and dataset (keys of `models`, `datasets`), an optimizer
        (a key of OPTIMIZERS) and a seed."""
        field, minibatch = OPTIMIZERS[label]
        return ImageRunConfig(
            seed=seed,
            data=self.datasets[dataset],
            model=self.models[model],
            optimizer=getattr(self, field),
            train=self.train.model_copy(update={"batch_size": self.minibatch if minibatch else None}),
        )


def measure(settings: Settings, store: RunStore) -> Tables:
    """Train (or load) every run; tables keyed by (model, dataset, optimizer, seed)."""
    parts = []
    for model in settings.models:
        for dataset in settings.datasets:
            runs = {
                label: [
                    store.run(settings.run_config(model, dataset, label, seed)) for seed in settings.seeds
                ]
                for label in OPTIMIZERS
            }
            tables = run_tables(runs)
            tables["runs"]["train_images"] = [
                run.extra["train_size"] for group in runs.values() for run in group
            ]
            parts.append({name: table.assign(model=model, dataset=dataset) for name, table in tables.items()})
    return {name: pd.concat([part[name] for part in parts], ignore_index=True) for name in parts[0]}


def _final(tables: Tables, model: str, dataset: str, label: str, column: str) -> pd.Series:
    """The final `column` of one optimizer's runs by seed (NaN where a run did not log it)."""
    final = tables["final"]
    rows = final[(final["model"] == model) & (final["dataset"] == dataset) & (final["optimizer"] == label)]
    rows = rows.set_index("seed")
    return rows[column] if column in rows else pd.Series(math.nan, index=rows.index)


def _gain(tables: Tables, model: str, dataset: str, plain: str, momentum: str) -> pd.Series:
    """Momentum's final test-accuracy gain by seed, `momentum` minus `plain` (same initialization)."""
    base = _final(tables, model, dataset, plain, "test_accuracy")
    return _final(tables, model, dataset, momentum, "test_accuracy").reindex(base.index) - base


def _paper_gain(model: str, dataset: str, plain: str, momentum: str) -> float:
    paper = PAPER[(model, dataset)]
    return paper[momentum] - paper[plain]


def _cell_id(model: str, dataset: str) -> str:
    return f"{model.lower()}-{dataset.lower()}"


def _gdm_above_gd(model: str, dataset: str) -> ClaimFunction:
    def gdm_above_gd(settings: Settings, tables: Tables) -> Claim:
        """Full-batch GD+M ends with a higher test accuracy than full-batch GD.

        References: Jelassi & Li (2022), Figure 1: GD+M's final test accuracy exceeds GD's by about 9
        points on CIFAR-10 and CIFAR-100, with ResNet-18 and WideResNet-16."""
        gd = _final(tables, model, dataset, "GD", "test_accuracy")
        gdm = _final(tables, model, dataset, "GD+M", "test_accuracy")
        return Claim.from_estimate(
            f"gdm-above-gd-{_cell_id(model, dataset)}",
            f"{model}, {dataset}: GD+M's test accuracy exceeds GD's (paired difference over seeds > 0)",
            paired_difference(gdm.tolist(), gd.reindex(gdm.index).tolist()),
            0.0,
            ">",
            {"GD": float(gd.mean()), "GD+M": float(gdm.mean()), "paper": PAPER[(model, dataset)]},
        )

    return gdm_above_gd


def _gd_gain_above_sgd_gain(model: str, dataset: str) -> ClaimFunction:
    def gd_gain_above_sgd_gain(settings: Settings, tables: Tables) -> Claim:
        """Momentum improves full-batch GD's test accuracy more than SGD's.

        References: Jelassi & Li (2022), Section 1 and Figure 1: "momentum improves generalization more
        significantly for full batch GD than for SGD in CIFAR object recognition tasks" — GD+M − GD is
        8.4–9.5 points, SGD+M − SGD −0.2 to 5.7."""
        full_batch = _gain(tables, model, dataset, "GD", "GD+M")
        minibatch = _gain(tables, model, dataset, "SGD", "SGD+M")
        paper_full, paper_mini = (
            _paper_gain(model, dataset, *pair) for pair in (("GD", "GD+M"), ("SGD", "SGD+M"))
        )
        return Claim.from_estimate(
            f"gd-gain-above-sgd-gain-{_cell_id(model, dataset)}",
            f"{model}, {dataset}: momentum's test-accuracy gain is larger with the full batch than with "
            "minibatches ((GD+M − GD) − (SGD+M − SGD), paired over seeds, > 0)",
            paired_difference(full_batch.tolist(), minibatch.reindex(full_batch.index).tolist()),
            0.0,
            ">",
            {
                "GD+M − GD": float(full_batch.mean()),
                "SGD+M − SGD": float(minibatch.mean()),
                "paper (points)": {
                    "GD+M − GD": round(paper_full, 2),
                    "SGD+M − SGD": round(paper_mini, 2),
                    "difference": round(paper_full - paper_mini, 2),
                },
            },
        )

    return gd_gain_above_sgd_gain


def all_fit_train(settings: Settings, tables: Tables) -> Claim:
    """Every run fits its training set, so that test accuracies compare fitted networks.

    References: Jelassi & Li (2022), Figure 1 (Section 5): every optimizer is trained for 300 epochs to
    zero training error before test accuracies are compared."""
    final = tables["final"]
    lowest = final["train_accuracy"].min(skipna=False) if "train_accuracy" in final else math.nan
    return Claim(
        "all-fit-train",
        f"every run reaches train accuracy ≥ {FITS} (the lowest one is measured)",
        float(lowest),
        FITS,
        ">=",
    )


CLAIMS = (
    *(_gdm_above_gd(model, dataset) for model in PAPER_MODELS for dataset in PAPER_DATASETS),
    *(_gd_gain_above_sgd_gain(model, dataset) for model in PAPER_MODELS for dataset in PAPER_DATASETS),
    all_fit_train,
)


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """Test (top) and train (bottom) accuracy against epochs, one column per model and dataset."""
    curves = tables["curves"]
    cells = list(curves.groupby(["model", "dataset"], sort=False))
    figure, axes = plt.subplots(2, len(cells), figsize=(4.2 * len(cells), 6.4), squeeze=False)
    for column, ((model, dataset), cell) in enumerate(cells):
        for row, metric in enumerate(("test_accuracy", "train_accuracy")):
            axis = axes[row, column]
            for label, frame in by_group(cell).items():
                plot_mean_band(axis, frame.assign(step=frame["epoch"]), metric, label, COLORS[label])
            axis.set_title(f"{model}, {dataset}: {metric.replace('_', ' ')}", fontsize=10)
            axis.set_xlabel("epoch")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    figure.suptitle("GD / GD+M (full batch) and SGD / SGD+M (mean over seeds, band = min–max)")
    return [save_figure(figure, out_dir / "accuracy.png")]


def _accuracy_table(final: pd.DataFrame) -> str:
    """Final test accuracy (%) per model, dataset and optimizer, mean ± std over seeds, paper's beside."""
    rows = []
    for (model, dataset), cell in final.groupby(["model", "dataset"], sort=False):
        row = {"model": model, "dataset": dataset}
        for label, group in by_group(cell).items():
            accuracy = 100 * group["test_accuracy"] if "test_accuracy" in group else pd.Series(math.nan)
            paper = PAPER[(model, dataset)][label]
            row[f"{label} (paper)"] = f"{accuracy.mean():.2f} ± {accuracy.std(ddof=0):.2f} ({paper:.2f})"
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))


def _gain_table(settings: Settings, tables: Tables) -> str:
    """Momentum's gain in points per cell, full batch and minibatch, with the paired difference's 95%
    interval over seeds (the paper's beside)."""
    rows = []
    for model in PAPER_MODELS:
        for dataset in PAPER_DATASETS:
            full_batch = 100 * _gain(tables, model, dataset, "GD", "GD+M")
            minibatch = 100 * _gain(tables, model, dataset, "SGD", "SGD+M")
            difference = paired_difference(full_batch.tolist(), minibatch.reindex(full_batch.index).tolist())
            paper_full, paper_mini = (
                _paper_gain(model, dataset, *pair) for pair in (("GD", "GD+M"), ("SGD", "SGD+M"))
            )
            rows.append(
                {
                    "model": model,
                    "dataset": dataset,
                    "GD+M − GD (paper)": f"{full_batch.mean():+.2f} ({paper_full:+.2f})",
                    "SGD+M − SGD (paper)": f"{minibatch.mean():+.2f} ({paper_mini:+.2f})",
                    "difference [95% interval] (paper)": (
                        f"{difference.mean:+.2f} [{difference.low:+.2f}, {difference.high:+.2f}] "
                        f"({paper_full - paper_mini:+.2f})"
                    ),
                }
            )
    return markdown_table(pd.DataFrame(rows))


def _network(model: ImageModelConfig) -> str:
    size = {"wide_resnet16": f", k = {model.widen_factor}", "small_cnn": f", width {model.width}"}
    return f"{model.name} (norm {model.norm}{size.get(model.name, '')})"


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    train, runs = settings.train, tables["runs"]
    networks = ", ".join(f"{label} = {_network(model)}" for label, model in settings.models.items())
    run_lines = "\n".join(
        f"- {row.model}, {row.dataset}, {row.optimizer}, seed {row.seed}: `{row.run_id}` ({row.status})"
        for row in runs.itertuples()
    )
    return {
        "accuracy": _accuracy_table(tables["final"]),
        "gains": _gain_table(settings, tables),
        "setting": (
            f"Networks: {networks}; {train.epochs} epochs; η = {settings.gd.lr} for GD and SGD, {settings.gdm.lr} for GD+M and "
            f"SGD+M (momentum in the EMA form, γ = {settings.gdm.momentum}); minibatch {settings.minibatch} "
            f"for SGD/SGD+M; weight decay {train.weight_decay}; schedule {train.lr_schedule.name} (warm-up "
            f"{train.lr_schedule.warmup_epochs}); training images per run: {runs['train_images'].iloc[0]}."
        ),
        "runs": run_lines,
    }


REPRODUCTION = Reproduction(
    name="cifar-momentum",
    title="Momentum improves full-batch GD's test accuracy on CIFAR-10/100 (Figure 1)",
    settings=Settings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__),
    cpu_sized=False,
    single_thread=True,  # a full run computes on the GPU; the CPU smoke ran 2–4× faster on one thread
)
