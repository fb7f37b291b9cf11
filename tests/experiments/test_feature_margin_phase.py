"""The phase-diagram reproduction: cell means, where GD learns, settings, and a small smoke run through
the runner against the old code's numbers and a direct recomputation of the tuned comparison."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from momentumlab.config import ConfigError
from momentumlab.experiments.feature_margin_phase import (
    REPRODUCTION,
    Settings,
    _cell_means,
    _learning_rates_where_gd_learns,
    separation_auc,
)
from momentumlab.experiments.runner import ReproductionOptions, resolve_settings, run_reproduction
from momentumlab.store import RunStore
from momentumlab.train.feature_margin import build_data, build_model

NAME = "feature-margin-phase"
# The old code's `--scale smoke --seeds 0,1 --set train.steps=60 --set data.n_train=600`, measured as below.
SMALL = ReproductionOptions(seeds=(0, 1), scale="smoke", overrides=("train.steps=60", "data.n_train=600"))
OLD_CLAIMS = {
    "tuned-gdm-learns-small-margin": 1.0,
    "tuned-gd-fails-small-margin": 0.5722222222222222,
    "gd-fails-at-paper-step": 0.5722222222222222,
}
OLD_TRAIN_LOSS = {  # (η, γ, seed) → final train loss
    (0.5, 0.0, 0): 0.019045937806367874,
    (0.5, 0.0, 1): 0.016852378845214844,
    (4.0, 0.0, 0): 0.0003441312874201685,
    (4.0, 0.0, 1): 0.0008066589361988008,
    (0.5, 0.9, 0): 0.016116857528686523,
    (0.5, 0.9, 1): 0.015962546691298485,
    (4.0, 0.9, 0): 0.0025460647884756327,
    (4.0, 0.9, 1): 1.7952900450979303e-12,
}


def _table() -> pd.DataFrame:
    rows = []
    for lr, small in ((0.5, (0.5, 0.7)), (4.0, (0.9, 1.0)), (8.0, (1.0, None))):
        for seed, value in enumerate(small):
            rows.append(
                {
                    "optimizer.lr": lr,
                    "optimizer.momentum": 0.0,
                    "seed": seed,
                    "status": "complete" if value is not None else "diverged",
                    "test_accuracy_small": value if value is not None else math.nan,
                }
            )
    return pd.DataFrame(rows)


def test_cell_means_are_nan_where_a_seed_diverged():
    means = _cell_means(_table(), "test_accuracy_small").loc[0.0]
    assert means[0.5] == pytest.approx(0.6) and means[4.0] == pytest.approx(0.95)
    assert math.isnan(means[8.0])
    assert _learning_rates_where_gd_learns(means) == ([4.0], [0.5])


def test_grid_points_are_gd_at_zero_momentum_and_ema_momentum_otherwise():
    settings = resolve_settings(REPRODUCTION, ReproductionOptions(overrides=("train.steps=7",)))
    gd, gdm = settings.run_config(2.0, 0.0, 1), settings.run_config(2.0, 0.9, 1)
    assert (gd.optimizer.name, gdm.optimizer.name) == ("gd", "ema_momentum")
    assert gd.train.steps == gdm.train.steps == 7
    assert Settings().run_config(2.0, 0.9, 1).train.steps == 5000
    assert (len(Settings().learning_rates), len(Settings().momenta), Settings.smoke().seeds) == (
        6,
        3,
        (0, 1, 2),
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("momenta=[0.9, 0.99]", "must include 0"),
        ("learning_rates=[0.5, 0.5]", "learning_rates = \\[0.5, 0.5\\]: each value may appear once"),
        ("learning_rates=[-1]", "learning_rates.0"),
        ("momenta=[0, 1]", "momenta.1"),
        ("optimizer.lr=1", "optimizer.lr is not a setting of feature-margin-phase"),
    ],
)
def test_bad_settings_name_the_field_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_settings(REPRODUCTION, ReproductionOptions(overrides=(override,)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small smoke reproduction: its report and output folder."""
    root = tmp_path_factory.mktemp(NAME)
    return run_reproduction(REPRODUCTION, RunStore(root / "store"), root / "out", SMALL), root / "out" / NAME


def test_smoke_measures_the_old_codes_numbers(small):
    report, folder = small
    claims = {claim.id: claim.measured for claim in report.claims}
    assert {claim: claims[claim] for claim in OLD_CLAIMS} == OLD_CLAIMS  # the new claim adds, changes nothing
    results = pd.read_csv(folder / "results.csv")
    assert set(results["train.steps"]) == {60} and set(results["data.n_train"]) == {600}  # --set reached
    measured = results.set_index(["optimizer.lr", "optimizer.momentum", "seed"])["train_loss"].to_dict()
    # float32 rounding: the batched engine's full batch is the C kernel now, which orders its sums otherwise
    # than the old code's products did (measured: within 1e-6 relative)
    assert measured == pytest.approx(OLD_TRAIN_LOSS, rel=1e-5, abs=0)


def test_tuned_comparison_is_the_best_validation_setting(small):
    report, folder = small
    results = pd.read_csv(folder / "results.csv")
    compared = pd.read_csv(folder / "compare.csv").set_index("optimizer")
    assert list(compared.index) == ["gd", "gd+ema_momentum"]
    for family, momentum in (("gd", [0.0]), ("gd+ema_momentum", [0.9])):
        runs = results[results["optimizer.momentum"].isin(momentum)]
        validation = runs.groupby("optimizer.lr")["val_accuracy"].mean()
        best = runs[runs["optimizer.lr"] == validation.idxmax()]
        assert compared.loc[family, "optimizer.lr"] == validation.idxmax()
        assert compared.loc[family, "test_accuracy_small mean"] == pytest.approx(
            best["test_accuracy_small"].mean()
        )
    claims = {claim.id: claim.measured for claim in report.claims}
    assert claims["tuned-gd-fails-small-margin"] == compared.loc["gd", "test_accuracy_small mean"]
    at_paper_step = results[(results["optimizer.momentum"] == 0) & (results["optimizer.lr"] == 0.5)]
    assert claims["gd-fails-at-paper-step"] == pytest.approx(at_paper_step["test_accuracy_small"].mean())


def test_figure_and_report(small):
    report, folder = small
    assert report.figures == [folder / "phase.png", folder / "first_step.png"]
    for figure in report.figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert "8 runs (2 η × 2 γ × 2 seeds), T = 60 steps" in report.section
    assert "**Finding.** GD (γ = 0)" in report.section and "Diverged (η, γ): none." in report.section


def test_first_step_signal_is_one_hand_computed_gd_step(small):
    """c(1) of each GD run against W(1) = W(0) − η∇L(W(0)) with autograd's gradient, in float64."""
    report, folder = small
    first = pd.read_csv(folder / "first_step.csv").set_index(["optimizer.lr", "seed"])["c1"]
    assert len(first) == 4
    for (lr, seed), measured in first.items():
        config = report.settings.run_config(lr, 0.0, seed)
        data = build_data(config)
        weight = build_model(config).weight.detach().double().requires_grad_()
        outputs = (data.train.inputs @ weight.T).pow(3).sum(dim=(1, 2))
        loss = torch.nn.functional.softplus(-data.train.labels * outputs).mean()
        (gradient,) = torch.autograd.grad(loss, weight)
        expected = ((weight - lr * gradient) @ data.feature).abs().max().item()
        assert measured == pytest.approx(expected, rel=1e-5)


def test_first_step_claim_is_the_auc_of_the_tables(small):
    report, folder = small
    results, first = pd.read_csv(folder / "results.csv"), pd.read_csv(folder / "first_step.csv")
    gd = results[results["optimizer.momentum"] == 0].merge(first, on=["optimizer.lr", "seed"])
    learns = gd["test_accuracy_small"] >= 0.9
    claim = next(claim for claim in report.claims if claim.id == "first-step-predicts-gd")
    if learns.all() or not learns.any():
        assert math.isnan(claim.measured) and claim.verdict == "failed"
    else:
        assert claim.measured == separation_auc(gd["c1"], learns)


def test_separation_auc_by_hand():
    scores = pd.Series([0.1, 0.5, 0.5, 2.0, 3.0])
    positive = pd.Series([False, False, True, True, True])
    # positives 0.5, 2, 3 against negatives 0.1, 0.5: 5 wins and one tie out of 6 pairs
    assert separation_auc(scores, positive) == pytest.approx(5.5 / 6)
    assert math.isnan(separation_auc(scores, pd.Series([True] * 5)))
