"""`feature-margin` at smoke scale: its tables are the stored runs, its claims are those tables' numbers."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from momentumlab.experiments import feature_margin
from momentumlab.experiments.runner import ReproductionOptions, run_reproduction
from momentumlab.runs.feature_margin import FeatureMarginRunConfig
from momentumlab.train.feature_margin import build_data

SMOKE = ReproductionOptions(scale="smoke")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from momentumlab.store import RunStore

    folder = tmp_path_factory.mktemp("feature-margin")
    store = RunStore(folder / "store")
    return store, folder / "out", run_reproduction(feature_margin.REPRODUCTION, store, folder / "out", SMOKE)


def test_runs_are_the_calibrated_gd_and_gdm_configs():
    settings = feature_margin.Settings()
    gd, gdm = (settings.run_config(label, 2) for label in ("GD", "GD+M"))
    expected = {
        "seed": 2,
        "train": {"steps": 5000, "log_every": 50, "log_geometric": True, "sharpness_every": 1000},
    }
    assert gd == FeatureMarginRunConfig.model_validate({**expected, "optimizer": {"name": "gd", "lr": 0.5}})
    assert gdm.optimizer.model_dump() == {"name": "ema_momentum", "lr": 0.5, "momentum": 0.99}
    assert (gdm.data, gdm.model, gdm.train) == (gd.data, gd.model, gd.train)


def test_tables_hold_the_stored_runs(smoke):
    store, out, report = smoke
    final = pd.read_csv(out / "feature-margin" / "final.csv")
    runs = pd.read_csv(out / "feature-margin" / "runs.csv")
    assert list(final["optimizer"]) == ["GD", "GD+M"] and list(final["step"]) == [300, 300]
    for label in ("GD", "GD+M"):
        (run_id,) = runs.query("optimizer == @label")["run_id"]
        stored = store.get(run_id)
        assert stored.config == report.settings.run_config(label, 0)
        row = final.query("optimizer == @label").iloc[0]
        assert row["train_accuracy"] == stored.final()["train_accuracy"]
        assert row["signal_max"] == pytest.approx(stored.final()["signal_max"], rel=1e-12)
    test_set = build_data(store.get(runs["run_id"][0]).config).test
    assert runs["small_margin_test_examples"].tolist() == [int(test_set.is_small_margin.sum())] * 2


def test_claims_are_the_final_tables_numbers(smoke):
    _, out, _ = smoke
    final = pd.read_csv(out / "feature-margin" / "final.csv").set_index("optimizer")
    claims = {
        claim["id"]: claim for claim in json.loads((out / "feature-margin" / "claims.json").read_text())
    }
    assert claims["gd-fits-train"]["measured"] == final.loc["GD", "train_accuracy"]
    assert claims["gd-small-margin-test"]["measured"] == final.loc["GD", "test_accuracy_small"]
    signal = final["signal_max"]
    assert claims["gdm-signal-above-gd"]["measured"] == pytest.approx(
        signal["GD+M"] - signal["GD"], rel=1e-12
    )
    assert claims["gdm-signal-reaches-inverse-beta"]["threshold"] == pytest.approx(1 / 0.2)
    memorized = final["memorized_fraction_small"]
    assert claims["gd-memorizes-more"]["measured"] == pytest.approx(memorized["GD"] - memorized["GD+M"])
    # Even after 300 steps momentum's signal along w* is several times GD's (7.8 against 0.45 measured).
    assert signal["GD+M"] > 5 * signal["GD"] and claims["gdm-signal-above-gd"]["passed"]
    assert all(claim["reference"].startswith("Jelassi & Li (2022)") for claim in claims.values())


def test_figures_and_report(smoke):
    _, out, report = smoke
    for name in ("training.png", "theory.png"):
        assert (out / "feature-margin" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name[:-4]}](feature-margin/{name})" in report.section
    assert "N = 2000, test = 500, d = 30, P = 5" in report.section and "T = 300" in report.section


def test_set_reaches_the_data(tmp_path, store):
    options = ReproductionOptions(
        scale="smoke", overrides=("data.small_margin_fraction=0.2", "train.steps=20")
    )
    run_reproduction(feature_margin.REPRODUCTION, store, tmp_path, options)
    runs = pd.read_csv(tmp_path / "feature-margin" / "runs.csv")
    config = store.get(runs["run_id"][0]).config
    assert (config.data.small_margin_fraction, config.train.steps) == (0.2, 20)
    assert runs["small_margin_test_examples"][0] == int(build_data(config).test.is_small_margin.sum()) > 70


def test_report_states_the_large_step_and_each_seeds_first_step(smoke):
    """ηα³σ0 at η = 0.5, and c(1) = max_r |c_r(1)| recomputed from the stored step-1 rows."""
    store, out, report = smoke
    assert "η = 0.5, ηα³σ0 = 3.71" in report.section and "inside the theory" not in report.section
    runs = pd.read_csv(out / "feature-margin" / "runs.csv")
    for label in ("GD", "GD+M"):
        (run_id,) = runs.query("optimizer == @label")["run_id"]
        first = store.get(run_id).metrics().query("step == 1").iloc[0]
        c1 = max(abs(first[f"signal_r{r}"]) for r in range(5))
        assert f"{label}: {c1:.3g}" in report.section


def test_curves_report_a_heavy_ball_buffer_in_the_ema_scale(tmp_path, store):
    """With GD+M set to heavy ball (b ← γb + ∇), the curves hold (1−γ)·⟨b, w*⟩: the logged value rescaled."""
    options = ReproductionOptions(
        scale="smoke", overrides=("gdm.name=heavy_ball", "gdm.lr=0.005", "train.steps=20")
    )
    run_reproduction(feature_margin.REPRODUCTION, store, tmp_path, options)
    curves = pd.read_csv(tmp_path / "feature-margin" / "curves.csv").query("optimizer == 'GD+M'")
    runs = pd.read_csv(tmp_path / "feature-margin" / "runs.csv")
    (run_id,) = runs.query("optimizer == 'GD+M'")["run_id"]
    logged = store.get(run_id).metrics()
    assert store.get(run_id).config.optimizer.name == "heavy_ball"
    assert abs(logged["momentum_signal"]).max() > 0
    for column in ("momentum_signal", "momentum_signal_r3"):
        assert curves[column].tolist() == pytest.approx((0.01 * logged[column]).tolist(), rel=1e-12)
    assert curves["gradient_signal"].tolist() == pytest.approx(logged["gradient_signal"].tolist(), rel=1e-12)
