"""Reproductions `cifar-small-margin` and `digits-small-margin`: Figure 4 of Jelassi & Li — GD vs GD+M with
10% of the training and test images made small-margin (lower resolution, Gaussian noise of variance
0.005, RGB channels shuffled; :mod:`momentumlab.data.corruption`), tested on the corrupted subset and on
the clean rest.

One protocol, two datasets (two declarations below that differ only in their settings' defaults):

- `cifar-small-margin` is the paper's: CIFAR-10, ResNet-18 without batch norm, full batch, 300 epochs,
  5 runs (seeds). The paper reports test accuracy on the corrupted subset over the clean rest: GD+M
  80.36/83.32 = 0.97, GD 65.14/73.69 = 0.88. Its learning rate and weight decay are not given; our
  default (η = 0.1 for both, GD+M in the EMA form with γ = 0.9, cosine decay after 5 warm-up epochs,
  weight decay 5·10⁻⁴) is a GPU configuration not yet run end to end. Its smoke variant trains on a
  16/16-image subset for 2 epochs on the CPU: a check that the pipeline runs, not a result.
- `digits-small-margin` runs the protocol on a CPU: scikit-learn's 8×8 digits, the small CNN (width 16),
  η = 0.5 for both optimizers, 800 epochs, 6 seeds; shuffling the one channel of grey images is a no-op.

One seed draws the data (split, subsets, corrupted examples) and the initialization, shared by GD and
GD+M. The claim "GD+M's ratio exceeds GD's" is reported whatever its outcome.

The ratio is measured on a larger held-out set than the protocol's 10% of the test split: after
training, every test image is classified twice, as it is and corrupted (its own corruption draw, from a
stream no training run uses), so the corrupted accuracy rests on all test images (360 digits instead of
36; 10 000 CIFAR-10 images instead of 1 000) and each corrupted image has its clean original beside it.
The test images are never trained on, so this is held-out data; the corruption is the protocol's. The
claim is the paired difference over seeds of GD+M's and GD's held-out ratios with a bootstrap 95%
interval; the protocol's own ratio (on the 10% split) stays in the tables, the detail and the report.

Calibration of the digits, on training behaviour only (the test split was not looked at to choose
anything): with η = 0.5 for both (GD+M in the EMA form with γ = 0.9, so both move by η times a gradient
average) GD is the slower one, at about 99% train accuracy after 600 epochs for seed 0 and 99.5% after
800 for seeds 1 and 2, so both train for 800 epochs. The 360 test images hold 36 corrupted ones: one
misclassified corrupted image moves that seed's corrupted accuracy by 0.028, and the standard error of
one seed's ratio from test sampling alone is about √(0.79·0.21/36)/0.97 ≈ 0.07, the size of Figure 4's
effect (0.97 − 0.88 = 0.09); on the 360 held-out corrupted images it is ≈ 0.022. Six seeds were chosen
from that a priori (digits_small_margin.md, "Power"), before the held-out runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch
from pydantic import model_validator
from scipy import stats

from momentumlab.claims import Claim
from momentumlab.data.corruption import corrupt_small_margin
from momentumlab.data.images import ImageDataConfig
from momentumlab.experiments.reproduction import (
    ClaimFunction,
    Reproduction,
    ReproductionSettings,
    Seeds,
    Tables,
    read_prose,
)
from momentumlab.experiments.tables import by_group, run_list, run_tables
from momentumlab.optim.momentum import OptimizerConfig
from momentumlab.report import COLORS, Panel, compare_panels, markdown_table, save_figure
from momentumlab.runs import RunRecord
from momentumlab.runs.image import CIFAR_TRAIN, ImageModelConfig, ImageRunConfig, ImageTrainConfig
from momentumlab.seeds import held_out_corruption_seed
from momentumlab.statistics import Estimate, paired_difference
from momentumlab.store import RunStore
from momentumlab.train.images import build_image_data, build_image_model, data_seed, predict, standardize

LABELS = {"GD": "gd", "GD+M": "gdm"}  # report label → settings field
FITS = 0.99  # train accuracy both optimizers must reach
# Figure 4 (CIFAR-10): test accuracy (%) on the small-margin subset and on the rest, and their ratio
PAPER = {
    "GD+M": {"corrupted": 80.36, "clean": 83.32, "ratio": 0.97},
    "GD": {"corrupted": 65.14, "clean": 73.69, "ratio": 0.88},
}
PAPER_EFFECT = PAPER["GD+M"]["ratio"] - PAPER["GD"]["ratio"]  # 0.09: the difference the claim tests


class Settings(ReproductionSettings):
    """Figure 4's protocol: the data with its corrupted fraction, the network, how it trains, and GD's and
    GD+M's optimizers. The declarations below set the defaults."""

    seeds: Seeds
    data: ImageDataConfig
    model: ImageModelConfig
    train: ImageTrainConfig
    gd: OptimizerConfig
    gdm: OptimizerConfig

    @model_validator(mode="after")
    def _runs_are_valid(self) -> Settings:
        for label in LABELS:  # e.g. train.batch_size > data.train_size fails here, before anything runs
            self.run_config(label, self.seeds[0])
        return self

    def run_config(self, label: str, seed: int) -> ImageRunConfig:
        """The run of one optimizer (a key of LABELS) and seed."""
        optimizer = getattr(self, LABELS[label])
        return ImageRunConfig(
            seed=seed, data=self.data, model=self.model, optimizer=optimizer, train=self.train
        )


class CifarSettings(Settings):
    """Figure 4 as in the paper: CIFAR-10 on a GPU (the smoke variant: a tiny subset on the CPU)."""

    seeds: Seeds = (0, 1, 2, 3, 4)
    data: ImageDataConfig = ImageDataConfig(name="cifar10", corrupted_fraction=0.1)
    model: ImageModelConfig = ImageModelConfig(name="resnet18", norm="none")
    train: ImageTrainConfig = CIFAR_TRAIN
    gd: OptimizerConfig = OptimizerConfig(name="gd", lr=0.1)
    gdm: OptimizerConfig = OptimizerConfig(name="ema_momentum", lr=0.1, momentum=0.9)

    @classmethod
    def smoke(cls) -> CifarSettings:
        """16 train and 16 test images, 2 epochs on the CPU, and no sharpness at the end (Lanczos on
        ResNet-18's 11 M parameters takes many minutes there)."""
        return cls(
            seeds=(0,),
            data=ImageDataConfig(name="cifar10", corrupted_fraction=0.1, train_size=16, test_size=16),
            train=ImageTrainConfig(
                epochs=2, chunk_size=16, weight_decay=5e-4, device="cpu", sharpness_at_end=False
            ),
        )


class DigitsSettings(Settings):
    """Figure 4's protocol on the digits with the small CNN, sized for a CPU."""

    seeds: Seeds = (0, 1, 2, 3, 4, 5)  # six: see digits_small_margin.md, "Power"
    data: ImageDataConfig = ImageDataConfig(name="digits", corrupted_fraction=0.1)
    model: ImageModelConfig = ImageModelConfig(name="small_cnn", width=16)
    train: ImageTrainConfig = ImageTrainConfig(
        epochs=800, chunk_size=2000, log_every_epochs=10, checkpoint_every_epochs=100
    )
    gd: OptimizerConfig = OptimizerConfig(name="gd", lr=0.5)
    gdm: OptimizerConfig = OptimizerConfig(name="ema_momentum", lr=0.5, momentum=0.9)

    @classmethod
    def smoke(cls) -> DigitsSettings:
        """One seed, 300 training images, 40 epochs."""
        return cls(
            seeds=(0,),
            data=ImageDataConfig(name="digits", corrupted_fraction=0.1, train_size=300),
            train=ImageTrainConfig(
                epochs=40, chunk_size=2000, log_every_epochs=10, checkpoint_every_epochs=100
            ),
        )


def held_out_accuracies(run: RunRecord) -> dict[str, float]:
    """The run's final weights on every test image as it is and corrupted (Figure 4's corruption, a draw of
    its own): accuracies and their ratio. The test images are held out from training; the inputs are
    standardized with the training set's statistics, as in training."""
    config = run.config
    trained = build_image_data(config)
    clean = build_image_data(
        config.model_copy(update={"data": config.data.model_copy(update={"corrupted_fraction": 0.0})})
    ).test
    corrupted = corrupt_small_margin(
        clean,
        1.0,
        seed=held_out_corruption_seed(data_seed(config)),  # a stream of the data seed, like the split
        noise_variance=config.data.noise_variance,
        downsample=config.data.downsample,
    )
    device = torch.device(config.train.device if torch.cuda.is_available() else "cpu")
    _, inputs = standardize(trained.train.images, torch.cat([clean.images, corrupted.images]))
    model = build_image_model(config, inputs.shape[1], inputs.shape[-1], trained.num_classes)
    model.load_state_dict(run.load_weights())
    labels = torch.cat([clean.labels, corrupted.labels])
    _, correct = predict(model.to(device), inputs.to(device), labels.to(device), config.train.chunk_size)
    clean_correct, corrupted_correct = correct.cpu().double().chunk(2)
    clean_accuracy, corrupted_accuracy = clean_correct.mean().item(), corrupted_correct.mean().item()
    return {
        "held_out_images": len(clean),
        "held_out_clean_accuracy": clean_accuracy,
        "held_out_corrupted_accuracy": corrupted_accuracy,
        "held_out_ratio": corrupted_accuracy / clean_accuracy if clean_accuracy > 0 else math.nan,
    }


def measure(settings: Settings, store: RunStore) -> Tables:
    """Train (or load) GD and GD+M for every seed; the numbers of train and test images per run and each
    run's accuracies on the held-out set, clean and corrupted (:func:`held_out_accuracies`)."""
    runs = {
        label: [store.run(settings.run_config(label, seed)) for seed in settings.seeds] for label in LABELS
    }
    tables = run_tables(runs)
    records = [run for label in LABELS for run in runs[label]]
    tables["runs"]["train_images"] = [run.extra["train_size"] for run in records]
    tables["runs"]["test_images"] = [run.extra["test_size"] for run in records]
    nan = dict.fromkeys(
        ("held_out_clean_accuracy", "held_out_corrupted_accuracy", "held_out_ratio"), math.nan
    )
    tables["held_out"] = pd.DataFrame(
        {
            "optimizer": label,
            "seed": run.config.seed,
            **(held_out_accuracies(run) if run.status == "complete" else nan),
        }
        for label in LABELS
        for run in runs[label]
    )
    return tables


def _per_seed(tables: Tables, label: str, column: str) -> pd.Series:
    """One optimizer's final `column` by seed (NaN where no run logged it)."""
    final = tables["final"]
    rows = final[final["optimizer"] == label].set_index("seed")
    return rows[column] if column in rows else pd.Series(math.nan, index=rows.index)


def _mean(tables: Tables, label: str, column: str) -> float:
    return float(_per_seed(tables, label, column).mean())


def _fits_train(label: str) -> ClaimFunction:
    def fits_train(settings: Settings, tables: Tables) -> Claim:
        """The optimizer fits its training set, so that test accuracies compare two fitted networks.

        References: Jelassi & Li (2022), Figure 4 (Section 5): GD and GD+M are trained to zero training
        error before their test accuracies on the small-margin and clean subsets are compared."""
        return Claim(
            f"{LABELS[label]}-fits-train",
            f"{label} reaches train accuracy ≥ {FITS} (mean over seeds)",
            _mean(tables, label, "train_accuracy"),
            FITS,
            ">=",
        )

    return fits_train


def _held_out(tables: Tables, label: str, column: str) -> pd.Series:
    """One optimizer's held-out `column` by seed."""
    held_out = tables["held_out"]
    return held_out[held_out["optimizer"] == label].set_index("seed")[column]


def ratio_difference(tables: Tables) -> Estimate:
    """GD+M's held-out ratio minus GD's, paired by seed, with its bootstrap 95% interval."""
    gd, gdm = (_held_out(tables, label, "held_out_ratio") for label in LABELS)
    return paired_difference(gdm.tolist(), gd.reindex(gdm.index).tolist())


def gdm_ratio_above_gd(settings: Settings, tables: Tables) -> Claim:
    """GD+M classifies the small-margin test images relatively better than GD does.

    References: Jelassi & Li (2022), Figure 4: test accuracy on the small-margin subset over the rest is
    0.97 for GD+M against 0.88 for GD on CIFAR-10."""
    gd, gdm = (_held_out(tables, label, "held_out_ratio") for label in LABELS)
    split_gd, split_gdm = (_per_seed(tables, label, "test_accuracy_ratio") for label in LABELS)
    return Claim.from_estimate(
        "gdm-ratio-above-gd",
        "GD+M's held-out test accuracy ratio corrupted/clean exceeds GD's (paired difference over seeds > 0)",
        ratio_difference(tables),
        0.0,
        ">",
        {
            "GD": float(gd.mean()),
            "GD+M": float(gdm.mean()),
            "seeds_where_gdm_above_gd": int((gdm > gd.reindex(gdm.index)).sum()),
            "held_out_images_per_seed": int(tables["held_out"]["held_out_images"].iloc[0]),
            "protocol split (10% of the test images corrupted), difference of mean ratios": {
                "GD": float(split_gd.mean()),
                "GD+M": float(split_gdm.mean()),
                "difference": float(split_gdm.mean()) - float(split_gd.mean()),
            },
            "paper (CIFAR-10, Figure 4)": {label: PAPER[label]["ratio"] for label in PAPER},
            "paper effect": PAPER_EFFECT,
        },
    )


CLAIMS = (*(_fits_train(label) for label in LABELS), gdm_ratio_above_gd)


def _plot_held_out(tables: Tables, path: Path) -> Path:
    """Per seed, GD's and GD+M's held-out ratio (joined: the pair), and the paired differences with the
    claim's 95% interval beside Figure 4's difference."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    gd, gdm = (_held_out(tables, label, "held_out_ratio") for label in LABELS)
    for seed in gdm.index:
        left.plot([0, 1], [gd[seed], gdm[seed]], color="gray", linewidth=0.8, marker="o")
    for position, (label, values) in enumerate((("GD", gd), ("GD+M", gdm))):
        left.plot([position], [values.mean()], marker="_", markersize=30, color=COLORS[label])
    left.set_xticks([0, 1], list(LABELS))
    left.set_xlim(-0.4, 1.4)
    left.set_ylabel("held-out accuracy corrupted / clean")
    left.set_title("per seed (same data and initialization)", fontsize=10)
    estimate = ratio_difference(tables)
    differences = gdm - gd.reindex(gdm.index)
    right.plot(range(len(differences)), differences, "o", color=COLORS["GD+M"], label="seed")
    right.errorbar(
        len(differences) + 0.5,
        estimate.mean,
        yerr=[[estimate.mean - estimate.low], [estimate.high - estimate.mean]],
        color="black",
        marker="s",
        capsize=4,
        label="mean, 95% interval",
    )
    right.axhline(0, color="black", linewidth=0.8)
    right.axhline(PAPER_EFFECT, color="gray", linestyle="--", linewidth=1, label="Figure 4: 0.97 − 0.88")
    right.set_xticks(range(len(differences)), [str(seed) for seed in differences.index])
    right.set_xlabel("seed")
    right.set_ylabel("GD+M − GD, held-out ratio")
    right.set_title("paired differences", fontsize=10)
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    return save_figure(figure, path)


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """Accuracies on the corrupted and clean subsets, their ratio and the training loss against steps, and
    the held-out ratios per seed."""
    return [
        compare_panels(
            by_group(tables["curves"]),
            [
                Panel("test_accuracy_corrupted", "test accuracy, corrupted (small margin)"),
                Panel("test_accuracy_clean", "test accuracy, clean"),
                Panel("test_accuracy_ratio", "test accuracy ratio corrupted/clean"),
                Panel("train_accuracy", "train accuracy", reference=FITS, reference_label=f"{FITS}"),
                Panel("train_accuracy_corrupted", "train accuracy, corrupted"),
                Panel("train_loss", "training loss (cross-entropy)", "log"),
            ],
            out_dir / "small_margin.png",
            title="GD vs GD+M on small-margin data (mean over seeds, band = min–max)",
        ),
        _plot_held_out(tables, out_dir / "held_out.png"),
    ]


RATIO_COLUMNS = {
    "train_accuracy": "train accuracy",
    "test_accuracy_clean": "test clean",
    "test_accuracy_corrupted": "test corrupted",
    "test_accuracy_ratio": "ratio corrupted/clean",
    "sharpness": "sharpness",
}


def _ratio_table(final: pd.DataFrame) -> str:
    """Final accuracies per optimizer (mean ± std over seeds) beside the paper's ratio."""
    rows = []
    for label, group in by_group(final).items():
        row = {"optimizer": label}
        for column, description in RATIO_COLUMNS.items():
            values = group.get(column)
            row[description] = "n/a" if values is None else f"{values.mean():.4f} ± {values.std(ddof=0):.4f}"
        paper = PAPER[label]
        row["paper (CIFAR-10)"] = f"{paper['corrupted']:.2f}/{paper['clean']:.2f} = {paper['ratio']:.2f}"
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))


def _held_out_table(tables: Tables) -> str:
    """Per seed: each optimizer's held-out clean and corrupted accuracy and ratio, and the ratio's
    difference (the claim's paired values)."""
    columns = ("held_out_clean_accuracy", "held_out_corrupted_accuracy", "held_out_ratio")
    gd, gdm = (
        tables["held_out"][lambda t, x=label: t["optimizer"] == x].set_index("seed") for label in LABELS
    )
    rows = [
        {
            "seed": seed,
            **{
                f"{label} clean / corrupted / ratio": " / ".join(f"{frame.loc[seed, c]:.4f}" for c in columns)
                for label, frame in (("GD", gd), ("GD+M", gdm))
            },
            "GD+M − GD, ratio": f"{gdm.loc[seed, 'held_out_ratio'] - gd.loc[seed, 'held_out_ratio']:+.4f}",
            "GD+M − GD, clean": (
                f"{gdm.loc[seed, 'held_out_clean_accuracy'] - gd.loc[seed, 'held_out_clean_accuracy']:+.4f}"
            ),
        }
        for seed in gdm.index
    ]
    return markdown_table(pd.DataFrame(rows))


def _power(tables: Tables) -> str:
    """The measured interval's half-width against Figure 4's effect."""
    estimate = ratio_difference(tables)
    half_width = (estimate.high - estimate.low) / 2
    gd, gdm = (_held_out(tables, label, "held_out_ratio") for label in LABELS)
    differences = gdm - gd.reindex(gdm.index)
    clean = paired_difference(
        _held_out(tables, "GD+M", "held_out_clean_accuracy").tolist(),
        _held_out(tables, "GD", "held_out_clean_accuracy").tolist(),
    )
    spread = differences.std(ddof=1) if len(differences) > 1 else math.nan
    t_half = (
        stats.t.ppf(0.975, len(differences) - 1) * spread / math.sqrt(len(differences))
        if len(differences) > 1
        else math.nan
    )
    paper_inside = estimate.low <= PAPER_EFFECT <= estimate.high
    return (
        f"Measured: {estimate.n} seeds, paired differences of the held-out ratio with standard deviation "
        f"{spread:.4f}; mean {estimate.mean:+.4f}, 95% interval [{estimate.low:+.4f}, {estimate.high:+.4f}], "
        f"half-width {half_width:.4f} = {half_width / PAPER_EFFECT:.2f} × the paper's effect {PAPER_EFFECT:.2f}, "
        f"which the interval {'contains' if paper_inside else 'excludes'}. For comparison, Student's t "
        f"interval mean ± t₀.₉₇₅·SD/√n = [{estimate.mean - t_half:+.4f}, {estimate.mean + t_half:+.4f}] "
        f"(the expanded bootstrap interval is built to match its width). On clean "
        f"held-out images GD+M − GD = {clean.mean:+.4f} [{clean.low:+.4f}, {clean.high:+.4f}]."
    )


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    first = tables["runs"].iloc[0]
    optimizers = "; ".join(
        f"{label}: {json.dumps(getattr(settings, field).model_dump())}" for label, field in LABELS.items()
    )
    train = json.dumps(settings.train.model_dump(exclude={"device", "bf16", "channels_last"}))
    return {
        "ratios": _ratio_table(tables["final"]),
        "held_out": _held_out_table(tables),
        "power": _power(tables),
        "setting": (
            f"Images: {first['train_images']} train, {first['test_images']} test, "
            f"{settings.data.corrupted_fraction:.0%} of each corrupted; held-out set: every one of the "
            f"{int(tables['held_out']['held_out_images'].iloc[0])} test images clean and corrupted; model "
            f"{settings.model.name} (norm {settings.model.norm}); {settings.train.epochs} epochs; {optimizers}; "
            f"train: {train}."
        ),
        "runs": run_list(tables["runs"]),
    }


CIFAR = Reproduction(
    name="cifar-small-margin",
    title="Momentum classifies small-margin (corrupted) CIFAR-10 images almost as well as the rest (Figure 4)",
    settings=CifarSettings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__, "cifar_small_margin"),
    cpu_sized=False,
    single_thread=True,  # a full run computes on the GPU; the CPU smoke ran 2–4× faster on one thread
)

DIGITS = Reproduction(
    name="digits-small-margin",
    title="Momentum and small-margin (corrupted) images, Figure 4's protocol on the digits (CPU)",
    settings=DigitsSettings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__, "digits_small_margin"),
    single_thread=True,
)
