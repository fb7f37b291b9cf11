"""Reproduction `cifar-momentum`: Figure 1 of Jelassi & Li — momentum improves full-batch GD's test
accuracy on CIFAR-10/100 with ResNet-18 and WideResNet-16 (no augmentation, dropout or batch norm).

Runs: {ResNet-18, WRN-16-8} × {CIFAR-10, CIFAR-100} × {GD, GD+M (full batch, 50 000 images),
SGD, SGD+M (batch 128)} × 3 seeds, 300 epochs each; within a seed every optimizer starts from the same
initialization. The paper grid-searched the (scheduled) learning rate and the weight decay per
algorithm and does not report the winners. We run one point of that grid for all four optimizers, so
that momentum is the only change: η = 0.1 (the momentum runs in the paper's EMA form with γ = 0.9,
which moves by η times a gradient average), cosine decay after 5 warm-up epochs, coupled weight decay
5·10⁻⁴; sweep others with `--set optimizer.lr=…` and `--set train.weight_decay=…`. The widen factor of
the paper's WideResNet-16 is not stated; we use k = 8. A full run is a GPU job (CUDA, bf16 autocast,
channels-last). `--scale smoke` trains on 32 train / 32 test images for 2 epochs on the CPU: a check
that the pipeline runs, not a result.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from momentumlab import atomic
from momentumlab.claims import Claim
from momentumlab.config import ImageRunConfig, apply_overrides, validate
from momentumlab.experiments.base import ReproductionOptions, ReproductionResult
from momentumlab.experiments.cifar_small_margin import (
    FIT_THRESHOLD,
    SMOKE_TRAIN,
    TRAIN,
    curves,
    final_rows,
    run_image,
)
from momentumlab.report import claims_table, plot_mean_band, save_figure
from momentumlab.store import RunStore

NAME = "cifar-momentum"
TITLE = "Momentum improves full-batch GD's test accuracy on CIFAR-10/100 (Figure 1)"
CPU_SIZED = False
DEFAULT_SEEDS = (0, 1, 2)
SMOKE_SEEDS = (0,)
MODELS = {
    "ResNet-18": {"name": "resnet18", "norm": "none"},
    "WRN-16-8": {"name": "wide_resnet16", "widen_factor": 8, "norm": "none"},
}
DATASETS = {"CIFAR-10": "cifar10", "CIFAR-100": "cifar100"}
LEARNING_RATE = 0.1
MOMENTUM = 0.9
MINIBATCH = 128
OPTIMIZERS: dict[str, tuple[dict[str, Any], int | None]] = {  # label → (optimizer, batch size)
    "GD": ({"name": "gd", "lr": LEARNING_RATE}, None),
    "GD+M": ({"name": "ema_momentum", "lr": LEARNING_RATE, "momentum": MOMENTUM}, None),
    "SGD": ({"name": "gd", "lr": LEARNING_RATE}, MINIBATCH),
    "SGD+M": ({"name": "ema_momentum", "lr": LEARNING_RATE, "momentum": MOMENTUM}, MINIBATCH),
}
COLORS = {"GD": "#d1495b", "GD+M": "#00798c", "SGD": "#edae49", "SGD+M": "#30638e"}
SMOKE_DATA = {"train_size": 32, "test_size": 32}
SMOKE_MINIBATCH = 16
# Figure 1, test accuracy (%) at the end of training
PAPER = {
    ("ResNet-18", "CIFAR-10"): {"GD": 75.83, "GD+M": 84.68, "SGD": 86.15, "SGD+M": 85.91},
    ("ResNet-18", "CIFAR-100"): {"GD": 43.32, "GD+M": 51.99, "SGD": 53.81, "SGD+M": 58.01},
    ("WRN-16-8", "CIFAR-10"): {"GD": 75.02, "GD+M": 84.48, "SGD": 84.83, "SGD+M": 87.85},
    ("WRN-16-8", "CIFAR-100"): {"GD": 42.95, "GD+M": 51.33, "SGD": 55.09, "SGD+M": 60.83},
}
SMOKE_NOTE = "**Smoke scale**: a tiny subset for 2 epochs checks the pipeline; its numbers are not results."
GRID_NOTE = (
    "The paper grid-searched the learning rate and weight decay per algorithm and did not report the "
    "winners; we run one point of that grid for all optimizers (below)."
)
Setting = tuple[str, str]  # (model label, dataset label)


def run_config(setting: Setting, label: str, seed: int, options: ReproductionOptions) -> ImageRunConfig:
    """One run of Figure 1 (the smoke subset under `options.scale == "smoke"`)."""
    smoke = options.scale == "smoke"
    optimizer, batch_size = OPTIMIZERS[label]
    if smoke and batch_size is not None:
        batch_size = SMOKE_MINIBATCH
    raw: dict[str, Any] = {
        "seed": seed,
        "data": {"name": DATASETS[setting[1]], **(SMOKE_DATA if smoke else {})},
        "model": MODELS[setting[0]],
        "optimizer": optimizer,
        "train": {**TRAIN, **(SMOKE_TRAIN if smoke else {}), "batch_size": batch_size},
    }
    return validate(ImageRunConfig, apply_overrides(raw, list(options.overrides)))


def _claims(final: dict[Setting, dict[str, pd.DataFrame]]) -> list[Claim]:
    claims = []
    for (model, dataset), groups in final.items():
        gd, gdm = groups["GD"]["test_accuracy"].mean(), groups["GD+M"]["test_accuracy"].mean()
        claims.append(
            Claim(
                f"gdm-above-gd-{model.lower()}-{dataset.lower()}",
                f"{model}, {dataset}: GD+M's test accuracy exceeds GD's (difference > 0)",
                float(gdm - gd),
                0.0,
                ">",
                {"GD": float(gd), "GD+M": float(gdm), "paper": PAPER[(model, dataset)]},
            )
        )
    lowest = min(frame["train_accuracy"].min() for groups in final.values() for frame in groups.values())
    claims.append(
        Claim(
            "all-fit-train",
            f"every run reaches train accuracy ≥ {FIT_THRESHOLD} (the lowest one is measured)",
            float(lowest) if not math.isnan(lowest) else math.nan,
            FIT_THRESHOLD,
            ">=",
        )
    )
    return claims


def _table(final: dict[Setting, dict[str, pd.DataFrame]]) -> str:
    lines = [
        "| model | dataset | " + " | ".join(f"{label} (paper)" for label in OPTIMIZERS) + " |",
        "|---|---|" + "---|" * len(OPTIMIZERS),
    ]
    for (model, dataset), groups in final.items():
        cells = []
        for label, frame in groups.items():
            accuracy = 100 * frame["test_accuracy"]
            cells.append(
                f"{accuracy.mean():.2f} ± {accuracy.std(ddof=0):.2f} ({PAPER[(model, dataset)][label]:.2f})"
            )
        lines.append(f"| {model} | {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(frames: dict[Setting, dict[str, pd.DataFrame]], path: Path) -> Path:
    """Test (top) and train (bottom) accuracy against epochs, one column per model and dataset."""
    figure, axes = plt.subplots(2, len(frames), figsize=(4.2 * len(frames), 6.4), squeeze=False)
    for column, ((model, dataset), groups) in enumerate(frames.items()):
        for row, metric in enumerate(("test_accuracy", "train_accuracy")):
            axis = axes[row, column]
            for label, frame in groups.items():
                plot_mean_band(axis, frame.assign(step=frame["epoch"]), metric, label, COLORS[label])
            axis.set_title(f"{model}, {dataset}: {metric.replace('_', ' ')}", fontsize=10)
            axis.set_xlabel("epoch")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    figure.suptitle("GD / GD+M (full batch) and SGD / SGD+M (mean over seeds, band = min–max)")
    return save_figure(figure, path)


def run(store: RunStore, out_dir: Path, options: ReproductionOptions) -> ReproductionResult:
    """Train every run of Figure 1, then write the figure, claims.json and the report section."""
    seeds = options.seeds or (SMOKE_SEEDS if options.scale == "smoke" else DEFAULT_SEEDS)
    settings = [(model, dataset) for model in MODELS for dataset in DATASETS]
    configs = {
        setting: {
            label: [run_config(setting, label, seed, options) for seed in seeds] for label in OPTIMIZERS
        }
        for setting in settings
    }
    records = {
        setting: {label: [run_image(c, store, options) for c in group] for label, group in groups.items()}
        for setting, groups in configs.items()
    }
    frames = {s: {label: curves(group) for label, group in g.items()} for s, g in records.items()}
    final = {s: {label: final_rows(group) for label, group in g.items()} for s, g in records.items()}
    claims = _claims(final)
    figure = _figure(frames, out_dir / "accuracy.png")
    atomic.write_json(out_dir / "claims.json", [claim.to_json() for claim in claims])
    table = pd.concat(
        {f"{m}/{d}/{label}": frame for (m, d), groups in final.items() for label, frame in groups.items()},
        names=["run"],
    )
    atomic.write_text(out_dir / "final_metrics.csv", table.to_csv())

    command = " ".join(
        [f"momentumlab reproduce {NAME} --seeds {','.join(map(str, seeds))}"]
        + (["--scale smoke"] if options.scale == "smoke" else [])
        + [f"--set {override}" for override in options.overrides]
    )
    first = configs[settings[0]]["GD"][0]
    run_lines = [
        f"- {m}, {d}, {label}, seed {config.seed}: `{record.run_id}` ({record.status['status']})"
        for (m, d), groups in configs.items()
        for label, group in groups.items()
        for config, record in zip(group, records[(m, d)][label])
    ]
    setting = (
        f"{first.train.epochs} epochs; η = {first.optimizer.lr} for every optimizer (momentum in the EMA "
        f"form, γ = {MOMENTUM}); minibatch {configs[settings[0]]['SGD'][0].train.batch_size} for SGD/SGD+M; "
        f"weight decay {first.train.weight_decay}; schedule {first.train.lr_schedule.name} "
        f"(warm-up {first.train.lr_schedule.warmup_epochs}); training images per run: "
        f"{records[settings[0]]['GD'][0].status['extra']['train_size']}."
    )
    section = "\n\n".join(
        [
            f"## {TITLE}\n\nCommand: `{command}`.",
            *([SMOKE_NOTE] if options.scale == "smoke" else []),
            GRID_NOTE,
            "### Claims\n\n" + claims_table(claims),
            "### Final test accuracy (%), mean ± std over seeds (paper's in parentheses)\n\n" + _table(final),
            setting,
            f"![accuracy]({NAME}/accuracy.png)",
            "### Runs\n\n" + "\n".join(run_lines),
        ]
    )
    return ReproductionResult(NAME, TITLE, claims, section, [figure])
