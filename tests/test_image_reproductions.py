"""Smoke runs of the image reproductions on generated CIFAR-format files, and a tiny digits run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from momentumlab.data.cifar import write_cifar_files
from momentumlab.experiments import cifar_momentum, cifar_small_margin, digits_small_margin
from momentumlab.experiments.base import ReproductionOptions
from momentumlab.store import RunStore


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """CIFAR-10 and CIFAR-100 in the official format: 40 train and 40 test random images each."""
    directory = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        images = [rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
        labels = [rng.integers(0, classes, 40) for _ in range(2)]
        write_cifar_files(directory, name, images[0], labels[0], images[1], labels[1])
    return directory


# ResNet-18 on 16 train and 10 test images, measured at epochs 0 and 2 only
SMALL = ("data.train_size=16", "data.test_size=10", "train.log_every_epochs=2")


def read_claims(path):
    return {claim["id"]: claim for claim in json.loads(path.read_text())}


def test_cifar_small_margin_smoke(tmp_path, cifar_dir):
    out = tmp_path / cifar_small_margin.NAME
    options = ReproductionOptions(
        scale="smoke", data_dir=cifar_dir, overrides=("data.train_size=16", "data.test_size=40")
    )
    store = RunStore(tmp_path / "store")
    result = cifar_small_margin.run(store, out, options)
    claims = read_claims(out / "claims.json")
    assert set(claims) == {"gd-fits-train", "gdm-fits-train", "gdm-ratio-above-gd"}
    final = pd.read_csv(out / "final_metrics.csv")
    assert len(final) == 2 and set(final["epoch"]) == {2}
    gd, gdm = final.set_index("optimizer")["test_accuracy_ratio"].loc[["GD", "GD+M"]]
    assert claims["gdm-ratio-above-gd"]["measured"] == pytest.approx(gdm - gd)
    # 10% of the 16 train and 10 test images corrupted; 2 epochs leave the network far from fitting
    assert claims["gd-fits-train"]["passed"] is False
    assert (out / "small_margin.png").stat().st_size > 10_000 and result.figures == [out / "small_margin.png"]
    assert "0.97" in result.section and "0.88" in result.section and "Smoke scale" in result.section
    runs = list((tmp_path / "store" / "runs").iterdir())
    assert len(runs) == 2 and all((run / "weights.pt").is_file() for run in runs)
    assert not any((run / "checkpoint.pt").exists() for run in runs)  # finished runs keep no checkpoint


def test_cifar_momentum_smoke(tmp_path, cifar_dir):
    out = tmp_path / cifar_momentum.NAME
    # The small CNN in place of ResNet-18 and WRN-16-8 keeps 16 runs fast: this checks the pipeline
    # (datasets, minibatches, table, figure); the real networks run in the Figure 4 smoke test above
    # and in tests/test_image_models.py.
    options = ReproductionOptions(
        scale="smoke", data_dir=cifar_dir, overrides=("model.name=small_cnn", "model.width=4")
    )
    result = cifar_momentum.run(RunStore(tmp_path / "store"), out, options)
    claims = read_claims(out / "claims.json")
    assert len(claims) == 5 and "gdm-above-gd-resnet-18-cifar-100" in claims
    final = pd.read_csv(out / "final_metrics.csv")
    assert len(final) == 16 and final["epoch"].eq(2).all()
    assert final["test_accuracy"].between(0, 1).all()
    sgd = final[final["run"].str.endswith("/SGD")]
    assert sgd["step"].eq(4).all()  # 32 images, batch 16: 2 steps per epoch
    assert "75.83" in result.section and (out / "accuracy.png").is_file()


def test_digits_small_margin_tiny(tmp_path):
    out = tmp_path / digits_small_margin.NAME
    overrides = ("train.epochs=40", "data.train_size=300", "train.log_every_epochs=10")
    options = ReproductionOptions(seeds=(0, 1), overrides=overrides)
    result = digits_small_margin.run(RunStore(tmp_path / "store"), out, options)
    claims = {claim.id: claim for claim in result.claims}
    detail = claims["gdm-ratio-above-gd"].detail
    assert detail["seeds"] == 2 and detail["paper (CIFAR-10, Figure 4)"] == {"GD+M": 0.97, "GD": 0.88}
    final = pd.read_csv(out / "final_metrics.csv").set_index(["optimizer", "seed"])
    ratio = final["test_accuracy_corrupted"] / final["test_accuracy_clean"]
    np.testing.assert_allclose(final["test_accuracy_ratio"], ratio)
    assert detail["GD+M"] == pytest.approx(ratio.loc["GD+M"].mean())
    assert not math.isnan(claims["gd-fits-train"].measured)
    runs = [pd.read_csv(path) for path in sorted((tmp_path / "store" / "runs").glob("*/metrics.csv"))]
    assert len(runs) == 4 and all(list(run["epoch"]) == [0, 10, 20, 30, 40] for run in runs)
    assert sorted(final["train_loss"]) == sorted(run["train_loss"].iloc[-1] for run in runs)
    # every run lowers the loss well below its initial ≈ ln 10 at some logged epoch (GD at η = 0.5 spikes)
    assert all(run["train_loss"].min() < 0.8 * math.log(10) for run in runs)
    assert "| GD+M |" in result.section and (out / "small_margin.png").is_file()
