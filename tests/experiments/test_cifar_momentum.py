"""`cifar-momentum` (Figure 1) at smoke scale on generated CIFAR-format files: the tables hold every run
of the grid, with the old code's smoke numbers, and the claims are those tables' numbers."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from momentumlab.config import ConfigError
from momentumlab.data.cifar import write_cifar_files
from momentumlab.data.images import DATA_DIR_VARIABLE
from momentumlab.experiments import cifar_momentum
from momentumlab.experiments.runner import ReproductionOptions, resolve_settings, run_reproduction
from momentumlab.runs.image import ImageRunConfig
from momentumlab.store import RunStore

SMOKE = ReproductionOptions(scale="smoke")
KEY = ["model", "dataset", "optimizer"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke run, then one with `--set minibatch=8`, on CIFAR-10 and CIFAR-100 files of 100 random
    train and test images each."""
    folder = tmp_path_factory.mktemp("cifar-momentum")
    rng = np.random.default_rng(0)
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        images = [rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
        labels = [rng.integers(0, classes, 100) for _ in range(2)]
        write_cifar_files(folder / "data", name, images[0], labels[0], images[1], labels[1])
    store = RunStore(folder / "store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_DIR_VARIABLE, str(folder / "data"))
        report = run_reproduction(cifar_momentum.REPRODUCTION, store, folder / "out", SMOKE)
        changed = run_reproduction(
            cifar_momentum.REPRODUCTION, store, folder / "changed", replace(SMOKE, overrides=("minibatch=8",))
        )
    return store, folder, report, changed


def read(folder, table: str) -> pd.DataFrame:
    return pd.read_csv(folder / "cifar-momentum" / f"{table}.csv").set_index(KEY)


def test_runs_are_the_old_modules_run_configs():
    settings = cifar_momentum.Settings()
    train = {
        "epochs": 300,
        "chunk_size": 1000,
        "weight_decay": 5e-4,
        "lr_schedule": {"name": "cosine", "warmup_epochs": 5},
        "device": "cuda",
    }
    assert settings.run_config("WRN-16-8", "CIFAR-100", "SGD+M", 2) == ImageRunConfig.model_validate(
        {
            "seed": 2,
            "data": {"name": "cifar100"},
            "model": {"name": "wide_resnet16", "widen_factor": 8, "norm": "none"},
            "optimizer": {"name": "ema_momentum", "lr": 0.1, "momentum": 0.9},
            "train": {**train, "batch_size": 128},
        }
    )
    gd = settings.run_config("ResNet-18", "CIFAR-10", "GD", 0)
    assert (gd.model.name, gd.data.name, gd.optimizer.name, gd.train.batch_size) == (
        "resnet18",
        "cifar10",
        "gd",
        None,
    )
    assert settings.seeds == (0, 1, 2)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=8", "train.batch_size = 8: GD and GD+M use the full batch"),
        ("minibatch=64", "train.batch_size = 64 exceeds data.train_size = 32"),
        ("models={}", "models has the keys []; allowed: the paper's"),
        ("models.ResNet-18.depth=3", "models.ResNet-18.depth is not a setting of cifar-momentum"),
    ],
)
def test_settings_refuse_what_the_grid_cannot_run(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_settings(cifar_momentum.REPRODUCTION, replace(SMOKE, overrides=(override,)))


def test_tables_hold_every_run_with_the_old_codes_smoke_numbers(smoke):
    store, folder, report, _ = smoke
    final, runs = read(folder / "out", "final"), read(folder / "out", "runs")
    assert len(final) == 16 and final["epoch"].eq(2).all() and runs["train_images"].eq(32).all()
    # 32 images: GD takes one step per epoch, SGD with batch 16 two
    assert final["step"].xs("GD", level="optimizer").eq(2).all()
    assert final["step"].xs("SGD+M", level="optimizer").eq(4).all()
    # the old code's smoke: --set model.name=small_cnn --set model.width=8 (ResNet-18's place) and
    # --set model.widen_factor=1 (WRN-16-8's place), each with train.sharpness_at_end=false
    old = {
        ("ResNet-18", "CIFAR-10", "GD"): 2.30127573013305664,
        ("ResNet-18", "CIFAR-100", "SGD"): 4.58013868331909180,
        ("WRN-16-8", "CIFAR-10", "GD+M"): 2.32687830924987793,
        ("WRN-16-8", "CIFAR-100", "SGD+M"): 4.62053537368774414,
    }
    for key, loss in old.items():
        assert final.loc[key, "train_loss"] == pytest.approx(loss, rel=1e-5)
    run = store.get(runs.loc[("WRN-16-8", "CIFAR-100", "SGD"), "run_id"])
    assert run.config == report.settings.run_config("WRN-16-8", "CIFAR-100", "SGD", 0)
    assert run.config.model.widen_factor == 1 and run.config.train.batch_size == 16


def test_claims_are_the_final_tables_numbers(smoke):
    _, folder, _, _ = smoke
    final = read(folder / "out", "final")["test_accuracy"]
    claims = {c["id"]: c for c in json.loads((folder / "out" / "cifar-momentum" / "claims.json").read_text())}
    assert len(claims) == 9
    for model, dataset in (("ResNet-18", "CIFAR-100"), ("WRN-16-8", "CIFAR-10")):
        cell = f"{model.lower()}-{dataset.lower()}"
        claim = claims[f"gdm-above-gd-{cell}"]
        gd, gdm = final.loc[(model, dataset, "GD")], final.loc[(model, dataset, "GD+M")]
        assert claim["measured"] == pytest.approx(gdm - gd) and claim["detail"]["GD"] == pytest.approx(gd)
        assert claim["detail"]["paper"] == cifar_momentum.PAPER[(model, dataset)]
        # one seed: the interval is the single paired difference
        assert claim["interval"] == pytest.approx([gdm - gd] * 2) and claim["detail"]["seeds"] == 1
        gain = claims[f"gd-gain-above-sgd-gain-{cell}"]
        sgd, sgdm = final.loc[(model, dataset, "SGD")], final.loc[(model, dataset, "SGD+M")]
        expected = (gdm - gd) - (sgdm - sgd)
        assert gain["measured"] == pytest.approx(expected) and gain["interval"] == pytest.approx(
            [expected] * 2
        )
        assert gain["detail"]["SGD+M − SGD"] == pytest.approx(sgdm - sgd)
        assert gain["verdict"] == ("passed" if expected > 0 else "failed")
    paper = claims["gd-gain-above-sgd-gain-resnet-18-cifar-10"]["detail"]["paper (points)"]
    assert paper == {"GD+M − GD": 8.85, "SGD+M − SGD": -0.24, "difference": 9.09}  # Figure 1's table
    lowest = read(folder / "out", "final")["train_accuracy"].min()
    assert claims["all-fit-train"]["measured"] == lowest and lowest < 0.99


def test_gain_claim_pairs_seeds():
    """Over three seeds the claim is the mean of the per-seed differences of gains, paired by seed, with the
    bootstrap interval of those three values (hand-made final table)."""
    rows = []
    accuracy = {
        "GD": [0.50, 0.60, 0.40],
        "GD+M": [0.60, 0.62, 0.55],
        "SGD": [0.7, 0.7, 0.7],
        "SGD+M": [0.72, 0.69, 0.7],
    }
    for label, values in accuracy.items():
        for seed, value in zip((2, 0, 1), values):
            rows.append(
                {
                    "model": "WRN-16-8",
                    "dataset": "CIFAR-100",
                    "optimizer": label,
                    "seed": seed,
                    "test_accuracy": value,
                }
            )
    tables = {"final": pd.DataFrame(rows)}
    claim = cifar_momentum._gd_gain_above_sgd_gain("WRN-16-8", "CIFAR-100")(None, tables)
    differences = [0.10 - 0.02, 0.02 + 0.01, 0.15 - 0.0]  # seeds 2, 0, 1
    assert claim.measured == pytest.approx(np.mean(differences))
    assert claim.interval == pytest.approx(
        np.quantile(
            np.asarray(differences)[np.random.default_rng(0).integers(0, 3, (10_000, 3))].mean(1),
            [0.025, 0.975],
        )
    )
    assert claim.verdict == "passed" and claim.detail["seeds"] == 3


def test_set_minibatch_changes_only_the_minibatch_runs(smoke):
    _, folder, _, changed = smoke
    before, after = read(folder / "out", "final"), read(folder / "changed", "final")
    assert changed.settings.minibatch == 8
    full = before.index.get_level_values("optimizer").isin(["GD", "GD+M"])
    assert after["step"][~full].eq(8).all()  # 32 images, batch 8: four steps per epoch
    np.testing.assert_array_equal(after["train_loss"][full], before["train_loss"][full])
    assert (after["train_loss"][~full] != before["train_loss"][~full]).all()


def test_figure_and_report(smoke):
    _, folder, report, _ = smoke
    assert (folder / "out" / "cifar-momentum" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "75.83" in report.section and "![accuracy](cifar-momentum/accuracy.png)" in report.section
    assert "| ResNet-18 | CIFAR-10 | " in report.section and "(+9.09)" in report.section
    assert "ResNet-18 = small_cnn (norm none, width 8), WRN-16-8 = wide_resnet16 (norm none, k = 1)" in (
        report.section
    )
