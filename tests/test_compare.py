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
