"""The teacher-student reproduction (Table 1) at smoke scale through the runner: the old code's numbers,
claims recomputed from the table, one batched run against the single-run trainer, and settings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from momentumlab.config import ConfigError
from momentumlab.experiments.runner import ReproductionOptions, resolve_settings, run_reproduction
from momentumlab.experiments.teacher_student import REPRODUCTION, Settings
from momentumlab.store import RunStore
from momentumlab.train.teacher_student import build_student, train_student
from momentumlab.train.teacher_student_batched import student_batch_key

NAME = "teacher-student"
# The smoke scale with 2 epochs, no validation set, 40 test examples and width-3 students: the old
# code's `--scale smoke --seeds 0 --set train.epochs=2 --set data.n_val=0 --set data.n_test=40
# --set model.width=3`, which it measured as below.
TINY = (
    "full_batch.epochs=2",
    "minibatch.epochs=2",
    "data.n_val=0",
    "data.n_test=40",
    "students={mlp1: 3, mlp2: 3, cnn1: 3, cnn2: 3}",
)
OLD_CLAIMS = {
    "gd-gdm-fit-train": 0.43,
    "gdm-no-better-than-gd": 12.499999999999993,
    "sgd-sgdm-fit-train": 0.52,
    "sgdm-no-better-than-sgd": 12.5,
}
OLD_TRAIN_LOSS = {  # 2-CNN student, 1-MLP teacher, seed 0
    "GD": 0.6902160048484802,
    "GD+M": 0.6951215267181396,
    "SGD": 0.6735551357269287,
    "SGD+M": 0.6846467852592468,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny smoke reproduction: (its report, its output folder, its store)."""
    root = tmp_path_factory.mktemp(NAME)
    store = RunStore(root / "store")
    options = ReproductionOptions(scale="smoke", overrides=TINY)
    return run_reproduction(REPRODUCTION, store, root / "out", options), root / "out" / NAME, store


def test_smoke_measures_the_old_codes_numbers(tiny):
    report, folder, _ = tiny
    assert {claim.id: claim.measured for claim in report.claims} == OLD_CLAIMS
    final = pd.read_csv(folder / "final.csv")
    assert len(final) == 4 * 5 * 4 and set(final["status"]) == {"complete"}
    cell = final[(final["student"] == "2-CNN") & (final["teacher"] == "1-MLP")].set_index("optimizer")
    assert cell["train_loss"].to_dict() == OLD_TRAIN_LOSS
    assert "| 2-CNN |" in report.section and "(paper 80.86 / 78.56)" in report.section


def test_claims_are_the_lowest_train_accuracy_and_the_largest_mean_gain(tiny):
    report, folder, _ = tiny
    final = pd.read_csv(folder / "final.csv")
    accuracy = final.pivot_table(index=["student", "teacher"], columns="optimizer", values="test_accuracy")
    claims = {claim.id: claim for claim in report.claims}
    for plain, momentum, fit, no_better in (
        ("GD", "GD+M", "gd-gdm-fit-train", "gdm-no-better-than-gd"),
        ("SGD", "SGD+M", "sgd-sgdm-fit-train", "sgdm-no-better-than-sgd"),
    ):
        pair = final[final["optimizer"].isin([plain, momentum])]
        assert claims[fit].measured == pair["train_accuracy"].min()
        gains = 100 * (accuracy[momentum] - accuracy[plain])  # one seed: the mean is the gain
        assert claims[no_better].measured == pytest.approx(gains.max(), abs=1e-9)
        assert claims[no_better].detail["cell of the largest gain"] == " / ".join(gains.idxmax())
        # one seed: every cell's interval is its gain, so the claim's interval is the largest gain twice
        assert claims[no_better].interval == pytest.approx((gains.max(), gains.max()), abs=1e-9)
        assert claims[no_better].detail["seeds"] == 1 and claims[fit].interval is None
    assert all("Jelassi & Li" in claim.reference for claim in report.claims)


def test_no_better_interval_is_the_largest_ends_of_the_cells_intervals():
    """Three seeds, two cells (hand-made final table): per cell the bootstrap interval of the seed-paired
    gains; the claim's interval is (largest lower end, largest upper end), its value the largest mean."""
    accuracy = {  # (student, teacher) → optimizer → test accuracy per seed 0, 1, 2
        ("1-MLP", "Linear"): {"GD": [0.80, 0.82, 0.81], "GD+M": [0.83, 0.81, 0.84]},
        ("2-CNN", "1-CNN"): {"GD": [0.70, 0.70, 0.70], "GD+M": [0.70, 0.74, 0.71]},
    }
    rows = [
        {"student": s, "teacher": t, "optimizer": label, "seed": seed, "test_accuracy": value}
        for (s, t), cell in accuracy.items()
        for label, values in cell.items()
        for seed, value in enumerate(values)
    ]
    no_better = next(c for c in REPRODUCTION.claims if "no_better" in c.__qualname__)  # GD vs GD+M
    claim = no_better(None, {"final": pd.DataFrame(rows)})
    resample = np.random.default_rng(0).integers(0, 3, (10_000, 3))
    ends = [
        np.quantile(np.asarray(gains)[resample].mean(1), [0.025, 0.975])
        for gains in ([3.0, -1.0, 3.0], [0.0, 4.0, 1.0])  # points, seeds 0–2
    ]
    assert claim.measured == pytest.approx(5 / 3)
    assert claim.interval == pytest.approx((max(e[0] for e in ends), max(e[1] for e in ends)), abs=1e-9)
    assert claim.verdict == "not resolved"  # the 2-CNN cell's interval reaches 4 > 2


def test_a_batched_run_matches_the_single_run_trainer(tiny):
    report, folder, _ = tiny
    final = pd.read_csv(folder / "final.csv").set_index(["student", "teacher", "optimizer"])
    config = report.settings.run_config("cnn2", "mlp1", "SGD+M", 0)
    reference = train_student(config).final()
    measured = final.loc[("2-CNN", "1-MLP", "SGD+M")]
    for column in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert measured[column] == pytest.approx(reference[column], rel=1e-5, abs=1e-6), column


def test_figure_and_files(tiny):
    report, folder, _ = tiny
    (figure,) = report.figures
    assert figure == folder / "momentum_gain.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert json.loads((folder / "settings.json").read_text())["students"]["cnn2"] == 3
    assert "`teacher-student/final.csv`" in report.section


def test_set_reaches_a_setting_and_changes_the_measurement(tiny, tmp_path):
    _, folder, store = tiny
    narrow = ("teachers=[linear]", "students={mlp1: 3}")
    options = ReproductionOptions(scale="smoke", overrides=(*TINY, *narrow, "gdm.momentum=0.5"))
    report = run_reproduction(REPRODUCTION, store, tmp_path, options)
    changed = pd.read_csv(tmp_path / NAME / "final.csv").set_index("optimizer")
    before = pd.read_csv(folder / "final.csv").query("student == '1-MLP' and teacher == 'Linear'")
    before = before.set_index("optimizer")
    assert len(changed) == 4 and report.settings.gdm.momentum == 0.5
    for plain in ("GD", "SGD"):  # the same runs, found in the store
        assert changed.loc[plain, "run_id"] == before.loc[plain, "run_id"]
    for momentum in ("GD+M", "SGD+M"):
        assert changed.loc[momentum, "train_loss"] != before.loc[momentum, "train_loss"]


def test_defaults_are_table_1_with_one_initialization_per_seed():
    settings = Settings()
    gd, gdm = (settings.run_config("cnn2", "mlp1", label, 1) for label in ("GD", "GD+M"))
    sgd = settings.run_config("cnn2", "linear", "SGD+M", 1)
    assert (gd.optimizer.name, gdm.optimizer.name, gdm.optimizer.momentum) == ("gd", "ema_momentum", 0.9)
    assert student_batch_key(gd) == student_batch_key(gdm) != student_batch_key(sgd)
    assert (gd.train.epochs, sgd.train.epochs, sgd.train.batch_size) == (1000, 300, 100)
    assert (gd.data.n_train, gd.data.n_val, gd.data.n_test, gd.data.dim) == (500, 1000, 5000, 30)
    assert (gd.data.teacher_width, sgd.data.teacher_width, gd.model.width) == (32, 1, 8)
    for a, b in zip(build_student(gd).parameters(), build_student(sgd).parameters()):
        assert torch.equal(a, b)
    assert len(settings.seeds) * len(settings.students) * len(settings.teachers) * 4 == 240


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("minibatch.batch_size=200", "minibatch.batch_size = 200"),
        ("full_batch.batch_size=10", "full_batch.batch_size = 10"),
        ("kernel_size=40", "kernel_size = 40 exceeds data.dim = 30"),
        ("teachers=[mlp1, mlp1]", "teachers = \\['mlp1', 'mlp1'\\]: each value may appear once"),
        ("seeds=[0, 0]", "seeds = \\[0, 0\\]: each value may appear once"),
        ("teacher_widths={mlp1: 4}", "no width for teacher 'mlp2'"),
        ("students.mlp3=4", "students.mlp3"),
        ("epochs=3", "epochs is not a setting of teacher-student"),
    ],
)
def test_bad_settings_name_the_field_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_settings(REPRODUCTION, ReproductionOptions(scale="smoke", overrides=(override,)))
