"""Reproduction `graduated-optimization`: Sato & Iiduka's implicit graduated optimization at a CPU size —
the degree of smoothing δ decayed over the epochs by the learning rate, the batch size or the momentum,
against the same optimizer at constant δ (arXiv 2402.02325; SPEC §3).

The small CNN on scikit-learn's 8×8 digits (the `image` run kind, through the store), M epochs. δ is the
theory's smoothing degree of (η, b, β, C², K) (:func:`~momentumlab.probes.noise.smoothing_degree`); the
schedules (:mod:`momentumlab.optim.graduated`) follow δ_{m+1} = γ_m δ_m, γ_m = ((M − m)/(M − m + 1))^p,
p = 0.9, by moving one hyperparameter while the others stay at their first-epoch values:

- SGD with η_m = η_1 δ_m/δ_1 (control `lr`) and SGD with b_m = b_1 (δ_1/δ_m)² (control `batch_size`),
  both against SGD at constant (η_1, b_1);
- SHB (PyTorch's heavy ball) with β_m solving δ(η_1, b_1, β_m) = δ_m (control `momentum`), against SHB at
  constant β_1.

The constants C² and K that the momentum schedule needs are measured per seed at the network's
initialization (per-sample gradients over the training set, :func:`~momentumlab.probes.noise.gradient_statistics`);
the lr and batch-size schedules do not depend on them. Each seed draws the initialization and the minibatch
order, shared by all arms; the data split is fixed. The claims compare final test accuracy, decayed − constant,
paired by seed, with a bootstrap interval; the threshold 0 is the paper's statement ("better"), set before
the runs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from torch.nn import functional as F

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
from momentumlab.optim.graduated import GRADUATION_POWER, GraduatedConfig
from momentumlab.optim.momentum import OptimizerConfig
from momentumlab.probes.noise import flat_model_loss, gradient_statistics, smoothing_degree
from momentumlab.report import markdown_table, save_figure
from momentumlab.runs.image import ImageModelConfig, ImageRunConfig, ImageTrainConfig
from momentumlab.statistics import paired_difference
from momentumlab.store import RunStore
from momentumlab.train.images import build_image_data, build_image_model, epoch_hyperparameters, standardize

# arm → (optimizer rule, graduated control or None for constant δ); each decayed arm has its constant one
ARMS = {
    "SGD, constant δ": ("gd", None),
    "SGD, η decayed": ("gd", "lr"),
    "SGD, b increased": ("gd", "batch_size"),
    "SHB, constant δ": ("heavy_ball", None),
    "SHB, β decayed": ("heavy_ball", "momentum"),
}
COMPARISONS = {  # claim id → (decayed arm, constant arm)
    "lr-decay-beats-constant": ("SGD, η decayed", "SGD, constant δ"),
    "batch-increase-beats-constant": ("SGD, b increased", "SGD, constant δ"),
    "momentum-decay-beats-constant": ("SHB, β decayed", "SHB, constant δ"),
}
DIGITS_TRAIN_IMAGES = 1437  # the digits' training split (test fraction 0.2)
SMOOTHING_METHOD = {"gd": "sgd", "heavy_ball": "shb"}  # Sato & Iiduka's names of the rules
COLORS = {
    "SGD, constant δ": "black",
    "SGD, η decayed": "#00798c",
    "SGD, b increased": "#edae49",
    "SHB, constant δ": "#7d7d7d",
    "SHB, β decayed": "#d1495b",
}


class Settings(ReproductionSettings):
    """The data, the network, M epochs, the first epoch's (η, b, β) and the graduation power p."""

    seeds: Seeds = (0, 1, 2, 3, 4)  # initialization and minibatch order; the data split is fixed
    data: ImageDataConfig = ImageDataConfig(name="digits", seed=0)
    width: int = Field(16, ge=1, description="channels of the small CNN")
    epochs: int = Field(10, ge=2, description="M")
    lr: float = Field(0.2, gt=0, description="η_1 of every arm")
    batch_size: int = Field(16, ge=1, description="b_1 of every arm")
    momentum: float = Field(0.9, gt=0, lt=1, description="β_1 of the SHB arms")
    power: float = Field(GRADUATION_POWER, gt=0, description="p in γ_m = ((M − m)/(M − m + 1))^p")

    @model_validator(mode="after")
    def _batch_schedule_fits(self) -> Settings:
        """The batch-size schedule ends at b_1 M^{2p}; it must not exceed the training set."""
        last = self.batch_size * self.epochs ** (2 * self.power)  # b_M = b_1 (δ_1/δ_M)², δ_1/δ_M = M^p
        size = self.data.train_size or DIGITS_TRAIN_IMAGES
        if last > size:
            raise ValueError(
                f"batch_size = {self.batch_size}, epochs = {self.epochs}: the batch-size schedule ends at "
                f"b_1·M^(2p) = {last:.0f} > {size} training images; allowed: smaller batch_size or epochs"
            )
        return self

    @classmethod
    def smoke(cls) -> Settings:
        """Two seeds, 300 training images, 3 epochs."""
        return cls(seeds=(0, 1), data=ImageDataConfig(name="digits", seed=0, train_size=300), epochs=3)

    def run_config(self, arm: str, seed: int, variance: float, gradient_bound: float) -> ImageRunConfig:
        """One arm's run for one seed; C² (`variance`) and K (`gradient_bound`) enter the graduated ones."""
        rule, control = ARMS[arm]
        graduated = (
            None
            if control is None
            else GraduatedConfig(
                control=control, variance=variance, gradient_bound=gradient_bound, power=self.power
            )
        )
        return ImageRunConfig(
            seed=seed,
            data=self.data,
            model=ImageModelConfig(name="small_cnn", width=self.width),
            optimizer=OptimizerConfig(
                name=rule, lr=self.lr, momentum=self.momentum if rule == "heavy_ball" else 0.0
            ),
            train=ImageTrainConfig(
                epochs=self.epochs,
                batch_size=self.batch_size,
                chunk_size=2000,
                checkpoint_every_epochs=self.epochs,
                sharpness_at_end=False,
                graduated=graduated,
            ),
        )


def initial_constants(settings: Settings, seed: int) -> tuple[float, float]:
    """(C², K) at the initialization of `seed`'s network: the variance of a single-sample gradient and
    the full gradient's norm, from per-sample gradients on the standardized training set."""
    config = settings.run_config("SGD, constant δ", seed, 1.0, 1.0)  # only data and model are used
    data = build_image_data(config)
    inputs, _ = standardize(
        torch.as_tensor(data.train.images, dtype=torch.float32),
        torch.as_tensor(data.test.images, dtype=torch.float32),
    )
    model = build_image_model(config, inputs.shape[1], inputs.shape[-1], data.num_classes)
    loss, point = flat_model_loss(model, F.cross_entropy)
    statistics = gradient_statistics(
        loss, point, inputs, torch.as_tensor(data.train.labels, dtype=torch.long)
    )
    return statistics.variance, statistics.gradient_norm


def measure(settings: Settings, store: RunStore) -> Tables:
    """C² and K per seed, every arm's run per seed (through the store), and the epochs' (η, b, β, δ)."""
    constants, curves, final, schedules = [], [], [], []
    for seed in settings.seeds:
        variance, bound = initial_constants(settings, seed)
        constants.append({"seed": seed, "variance": variance, "gradient_bound": bound})
        for arm, (rule, _) in ARMS.items():
            config = settings.run_config(arm, seed, variance, bound)
            run = store.run(config)
            key = {"arm": arm, "seed": seed}
            curves.append(run.metrics().assign(**key))
            final.append({**key, "status": run.status, "run_id": run.run_id, **run.final()})
            for epoch, (lr, batch_size, momentum) in enumerate(epoch_hyperparameters(config), start=1):
                delta = smoothing_degree(SMOOTHING_METHOD[rule], lr, batch_size, momentum, variance, bound)
                schedules.append(
                    {
                        **key,
                        "epoch": epoch,
                        "lr": lr,
                        "batch_size": batch_size,
                        "momentum": momentum,
                        "delta": delta,
                    }
                )
    return {
        "constants": pd.DataFrame(constants),
        "curves": pd.concat(curves, ignore_index=True),
        "final": pd.DataFrame(final),
        "schedules": pd.DataFrame(schedules),
    }


def _final(tables: Tables, arm: str, column: str = "test_accuracy") -> pd.Series:
    """An arm's final `column` by seed (NaN where the run did not complete)."""
    final = tables["final"]
    rows = final[final["arm"] == arm].set_index("seed")
    return rows[column].where(rows["status"] == "complete")


def _comparison(claim_id: str) -> ClaimFunction:
    decayed, constant = COMPARISONS[claim_id]

    def decayed_beats_constant(settings: Settings, tables: Tables) -> Claim:
        """Decaying the degree of smoothing δ over the epochs ends at a better test accuracy than keeping δ
        constant.

        References: Sato & Iiduka (arXiv 2402.02325), implicit graduated optimization (SPEC §3): δ_{m+1} =
        γ_m δ_m with γ_m = ((M − m)/(M − m + 1))^p, p = 0.9, by decaying η, increasing b or decaying β,
        reaches better final test accuracy than a constant δ."""
        a, b = _final(tables, decayed), _final(tables, constant)
        seeds = list(a.index)
        return Claim.from_estimate(
            claim_id,
            f"{decayed} ends with a higher test accuracy than {constant} (paired difference over seeds, "
            "95% bootstrap interval, > 0)",
            paired_difference(a.loc[seeds].tolist(), b.loc[seeds].tolist()),
            0.0,
            ">",
            {decayed: float(a.mean()), constant: float(b.mean()), "per_seed": (a - b).to_dict()},
        )

    decayed_beats_constant.__name__ = claim_id.replace("-", "_")
    return decayed_beats_constant


CLAIMS = tuple(_comparison(claim_id) for claim_id in COMPARISONS)


def _plot_schedules(tables: Tables, path: Path) -> Path:
    """η_m, b_m, β_m and δ_m/δ_1 of every arm against the epoch (first seed)."""
    schedules = tables["schedules"]
    schedules = schedules[schedules["seed"] == schedules["seed"].iloc[0]]
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for axis, (column, name) in zip(
        axes, (("lr", "η_m"), ("batch_size", "b_m"), ("momentum", "β_m"), ("delta", "δ_m / δ_1"))
    ):
        for arm, rows in schedules.groupby("arm", sort=False):
            values = rows[column] / rows[column].iloc[0] if column == "delta" else rows[column]
            axis.plot(rows["epoch"], values, marker="o", markersize=3, color=COLORS[arm], label=arm)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("epoch m")
        axis.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[3].set_yscale("log")
    axes[0].legend(fontsize=7)
    figure.suptitle("Implicit graduated optimization: each arm's hyperparameters and δ (first seed)")
    return save_figure(figure, path, dpi=110)


def _plot_accuracy(tables: Tables, path: Path) -> Path:
    """Test accuracy against the epoch (mean over seeds), and the paired differences per seed."""
    curves = tables["curves"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    for arm, rows in curves.groupby("arm", sort=False):
        mean = rows.groupby("epoch")["test_accuracy"].mean()
        left.plot(mean.index, mean, marker="o", markersize=3, color=COLORS[arm], label=arm)
    left.set_xlabel("epoch")
    left.set_ylabel("test accuracy (mean over seeds)")
    left.set_ylim(bottom=max(0.0, left.get_ylim()[0]))
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for position, (claim_id, (decayed, constant)) in enumerate(COMPARISONS.items()):
        difference = _final(tables, decayed) - _final(tables, constant)
        right.scatter(np.full(len(difference), position), difference, color=COLORS[decayed], zorder=3)
        right.plot([position - 0.2, position + 0.2], [difference.mean()] * 2, color=COLORS[decayed])
    right.axhline(0, color="gray", linestyle="--", linewidth=1)
    right.set_xticks(range(len(COMPARISONS)), [f"{d}\n− {c}" for d, c in COMPARISONS.values()], fontsize=8)
    right.set_ylabel("final test accuracy, decayed − constant")
    right.set_title("per seed (dots) and mean (bar)", fontsize=10)
    right.grid(alpha=0.3)
    return save_figure(figure, path, dpi=110)


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    """The schedules, and the test accuracy of every arm with the paired differences."""
    return [
        _plot_schedules(tables, out_dir / "schedules.png"),
        _plot_accuracy(tables, out_dir / "accuracy.png"),
    ]


def _arm_table(tables: Tables) -> str:
    """Per arm: final train and test accuracy (mean, min–max over seeds) and the last epoch's (η, b, β)."""
    schedules = tables["schedules"]
    last = schedules[schedules["epoch"] == schedules["epoch"].max()].groupby("arm", sort=False).first()
    rows = []
    for arm in ARMS:
        train, test = _final(tables, arm, "train_accuracy"), _final(tables, arm)
        rows.append(
            {
                "arm": arm,
                "train accuracy": train.mean(),
                "test accuracy": test.mean(),
                "test min–max": f"{test.min():.3f}–{test.max():.3f}",
                "last η": last.loc[arm, "lr"],
                "last b": int(last.loc[arm, "batch_size"]),
                "last β": last.loc[arm, "momentum"],
                "δ_M / δ_1": last.loc[arm, "delta"] / schedules[schedules["arm"] == arm]["delta"].iloc[0],
            }
        )
    formats = {
        "train accuracy": ".4f",
        "test accuracy": ".4f",
        "last η": ".3g",
        "last β": ".3g",
        "δ_M / δ_1": ".3g",
    }
    return markdown_table(pd.DataFrame(rows), formats)


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    constants = tables["constants"]
    return {
        "epochs": str(settings.epochs),
        "lr": f"{settings.lr:g}",
        "batch_size": str(settings.batch_size),
        "momentum": f"{settings.momentum:g}",
        "power": f"{settings.power:g}",
        "width": str(settings.width),
        "seeds": str(list(settings.seeds)),
        "train_size": "all" if settings.data.train_size is None else str(settings.data.train_size),
        "constants": "; ".join(
            f"seed {row.seed}: C² = {row.variance:.3g}, K = {row.gradient_bound:.3g}"
            for row in constants.itertuples()
        ),
        "arm_table": _arm_table(tables),
    }


REPRODUCTION = Reproduction(
    name="graduated-optimization",
    title="Implicit graduated optimization: decaying the degree of smoothing δ vs constant δ (Sato & Iiduka)",
    settings=Settings,
    measure=measure,
    claims=CLAIMS,
    figures=figures,
    report=report,
    prose=read_prose(__file__),
    single_thread=True,
)
