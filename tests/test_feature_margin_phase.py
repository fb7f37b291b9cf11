"""The phase-diagram reproduction: cell means, where GD learns, and a smoke run end to end."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from momentumlab.experiments import ReproductionOptions, reproduce
from momentumlab.experiments.feature_margin_phase import (
    _cell_means,
    _learning_rates_where_gd_learns,
    run_config,
)


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
    options = ReproductionOptions(overrides=("train.steps=7",))
    gd, gdm = run_config(2.0, 0.0, 1, options), run_config(2.0, 0.9, 1, options)
    assert (gd.optimizer.name, gdm.optimizer.name) == ("gd", "ema_momentum")
    assert gd.train.steps == gdm.train.steps == 7
    assert run_config(2.0, 0.9, 1, ReproductionOptions()).train.steps == 5000


def test_smoke_run_writes_heat_map_comparison_and_claims(tmp_path, store):
    options = ReproductionOptions(
        seeds=(0, 1), scale="smoke", overrides=("train.steps=60", "data.n_train=600")
    )
    (result,) = reproduce(["feature-margin-phase"], store, tmp_path, options)
    folder = tmp_path / "feature-margin-phase"
    assert (folder / "phase.png").stat().st_size > 10_000
    table = pd.read_csv(folder / "results.csv")
    assert len(table) == 8 and set(table["optimizer.lr"]) == {0.5, 4.0}
    compared = pd.read_csv(folder / "compare.csv").set_index("optimizer")
    assert list(compared.index) == ["gd", "gd+ema_momentum"]
    gd = table[
        (table["optimizer.momentum"] == 0) & (table["optimizer.lr"] == compared.loc["gd", "optimizer.lr"])
    ]
    assert compared.loc["gd", "test_accuracy_small mean"] == pytest.approx(gd["test_accuracy_small"].mean())
    claims = json.loads((folder / "claims.json").read_text())
    assert [c["id"] for c in claims] == [c.id for c in result.claims] and len(claims) == 3
    assert "Finding." in result.section
