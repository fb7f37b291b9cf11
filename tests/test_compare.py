"""Fair comparison: each optimizer family at its best validation setting, test reported at that setting."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from momentumlab.cli import app
from momentumlab.compare import compare, optimizer_family, to_markdown
from momentumlab.config import ConfigError


def _run(name, lr, momentum, seed, val, test, status="complete", batch_size=None):
    return {
        "run_id": f"{name}-{lr}-{momentum}-{seed}-{batch_size}",
        "status": status,
        "seed": seed,
        "optimizer.name": name,
        "optimizer.lr": lr,
        "optimizer.momentum": momentum,
        "train.batch_size": batch_size,
        "val_accuracy": val,
        "test_accuracy": test,
    }


def sweep_table() -> pd.DataFrame:
    rows = [
        # GD: lr 0.5 has the best validation mean (0.8) though lr 0.1 has the best test (never used to choose)
        *(_run("gd", 0.1, 0.0, s, 0.7, 0.99) for s in (0, 1)),
        _run("gd", 0.5, 0.0, 0, 0.9, 0.6),
        _run("gd", 0.5, 0.0, 1, 0.7, 0.8),
        # GD+M: (0.5, 0.9) scores highest but one seed diverged, so (0.1, 0.9) wins
        _run("ema_momentum", 0.5, 0.9, 0, 1.0, 1.0),
        _run("ema_momentum", 0.5, 0.9, 1, math.nan, math.nan, status="diverged"),
        _run("ema_momentum", 0.1, 0.9, 0, 0.85, 0.9),
        _run("ema_momentum", 0.1, 0.9, 1, 0.95, 0.7),
        # SGD (minibatch) forms its own family
        *(_run("gd", 0.5, 0.0, s, 0.5, 0.5, batch_size=32) for s in (0, 1)),
    ]
    return pd.DataFrame(rows)


def test_family_names_the_rule_only_when_momentum_is_nonzero():
    row = pd.Series({"optimizer.name": "heavy_ball", "optimizer.momentum": 0.0, "train.batch_size": 64})
    assert optimizer_family(row) == "sgd"
    row = pd.Series(
        {"optimizer.name": "heavy_ball", "optimizer.momentum": 0.9, "train.batch_size": float("nan")}
    )
    assert optimizer_family(row) == "gd+heavy_ball"


def test_compare_picks_on_validation_and_reports_test_mean_and_std():
    result = compare(sweep_table()).set_index("optimizer")
    assert list(result.index) == ["gd", "gd+ema_momentum", "sgd"]
    assert result.loc["gd", "optimizer.lr"] == 0.5
    assert result.loc["gd", "val_accuracy (selection)"] == pytest.approx(0.8)
    assert result.loc["gd", "test_accuracy mean"] == pytest.approx(0.7)
    assert result.loc["gd", "test_accuracy std"] == pytest.approx(0.1)  # population std of (0.6, 0.8)
    assert result.loc["gd+ema_momentum", "optimizer.lr"] == 0.1  # the diverged setting ranks last
    assert result.loc["gd+ema_momentum", "test_accuracy mean"] == pytest.approx(0.8)
    assert result.loc["sgd", "seeds"] == 2
    markdown = to_markdown(result.reset_index())
    assert "| gd | 0.5 |" in markdown and "0.7000 ± 0.1000" in markdown


def test_compare_never_selects_on_test():
    with pytest.raises(ConfigError, match="never chosen on test"):
        compare(sweep_table(), "test_accuracy")
    with pytest.raises(ConfigError, match="allowed: val_accuracy"):
        compare(sweep_table(), "val_loss")


def test_cli_compare_writes_markdown_and_csv(tmp_path):
    sweep_table().to_csv(tmp_path / "results.csv", index=False)
    result = CliRunner().invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "gd+ema_momentum" in result.output
    assert (tmp_path / "compare.md").read_text().startswith("| optimizer |")
    assert len(pd.read_csv(tmp_path / "compare.csv")) == 3
    refused = CliRunner().invoke(app, ["compare", str(tmp_path), "--metric", "test_accuracy"])
    assert refused.exit_code == 2 and "never chosen on test" in refused.output


def test_a_loss_is_minimized_and_an_unknown_metric_needs_a_direction():
    table = sweep_table().assign(
        train_loss=lambda t: 1 - t["val_accuracy"], val_margin=lambda t: t["val_accuracy"]
    )
    by_loss = compare(table, "train_loss").set_index("optimizer")
    assert by_loss.loc["gd", "optimizer.lr"] == 0.5  # lowest mean train loss (0.2), not the highest
    assert by_loss.loc["gd", "train_loss (selection)"] == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="metric = 'val_margin': .* allowed: --maximize or --minimize"):
        compare(table, "val_margin")
    assert compare(table, "val_margin", maximize=True).set_index("optimizer").loc["gd", "optimizer.lr"] == 0.5
    assert (
        compare(table, "val_margin", maximize=False).set_index("optimizer").loc["gd", "optimizer.lr"] == 0.1
    )
    assert (
        compare(table, "val_accuracy", maximize=False).set_index("optimizer").loc["gd", "optimizer.lr"] == 0.1
    )


def grouped_table() -> pd.DataFrame:
    """GD over two learning rates at two data settings: the best learning rate differs between them."""
    rows = []
    for fraction, best in ((0.02, 0.1), (0.2, 0.5)):
        for lr in (0.1, 0.5):
            for seed in (0, 1):
                row = _run("gd", lr, 0.0, seed, 0.9 if lr == best else 0.6, 0.8 if lr == best else 0.5)
                rows.append({**row, "data.small_margin_fraction": fraction})
    return pd.DataFrame(rows)


def test_each_setting_of_a_data_field_gets_its_own_table():
    result = compare(grouped_table())
    assert result.attrs["groups"] == ["data.small_margin_fraction"]
    assert list(zip(result["data.small_margin_fraction"], result["optimizer.lr"])) == [
        (0.02, 0.1),
        (0.2, 0.5),
    ]
    assert list(result["test_accuracy mean"]) == pytest.approx([0.8, 0.8])
    markdown = to_markdown(result)
    assert markdown.count("| optimizer |") == 2
    assert (
        "### data.small_margin_fraction = 0.02" in markdown
        and "### data.small_margin_fraction = 0.2" in markdown
    )
    # --by nothing in particular: the data field becomes a hyperparameter chosen on validation again.
    pooled = compare(grouped_table(), by=[])
    assert len(pooled) == 1 and "### " not in to_markdown(pooled)
    with pytest.raises(ConfigError, match="--by data.nope: not a field of the sweep"):
        compare(grouped_table(), by=["data.nope"])


def test_no_validation_metric_or_every_run_diverged_is_refused():
    blank = sweep_table().assign(val_accuracy=math.nan)
    with pytest.raises(ConfigError, match="is blank for every completed run"):
        compare(blank)
    diverged = sweep_table().assign(status="diverged")
    with pytest.raises(ConfigError, match="no run of the sweep completed"):
        compare(diverged)
    no_split = sweep_table().drop(columns="val_accuracy")
    with pytest.raises(ConfigError, match="the sweep has no validation metric"):
        compare(no_split)


def test_a_family_whose_every_setting_diverged_has_no_best_setting():
    table = sweep_table()
    table.loc[table["optimizer.name"] == "ema_momentum", "status"] = "diverged"
    row = compare(table).set_index("optimizer").loc["gd+ema_momentum"]
    assert row["diverged"] == 2
    assert math.isnan(row["val_accuracy (selection)"]) and math.isnan(row["test_accuracy mean"])
    assert "| gd+ema_momentum |" in to_markdown(compare(table))
