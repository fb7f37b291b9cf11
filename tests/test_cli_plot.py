"""`momentumlab plot` from the command line: figures by extension, printed means, exit 2 on bad input."""

from __future__ import annotations

import pytest
from helpers import make_tiny_config
from typer.testing import CliRunner

from momentumlab.cli import app
from momentumlab.store import RunStore
from momentumlab.sweep import SweepSpec, result_table, write_result


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Four tiny runs (momentum × seed) in a store, and their sweep result folder."""
    root = tmp_path_factory.mktemp("cli-plot")
    store = RunStore(root / "store")
    configs = [
        make_tiny_config("optimizer.name=heavy_ball", f"optimizer.momentum={momentum}", f"seed={seed}")
        for momentum in (0.0, 0.9)
        for seed in (0, 1)
    ]
    runs = store.run_many(configs)
    write_result(result_table(configs, store), SweepSpec(kind="feature_margin"), root / "sweep")
    return root, runs


def plot(root, *args):
    return CliRunner().invoke(app, ["plot", *args, "--store", str(root / "store")])


def test_plot_curves_of_a_sweep_grouped_by_momentum(swept):
    root, runs = swept
    out = root / "curves.png"
    result = plot(
        root, str(root / "sweep"), "-c", "train_loss", "--group", "optimizer.momentum", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finals = [run.final()["train_loss"] for run in runs if run.config.optimizer.momentum == 0.9]
    line = next(line for line in result.output.splitlines() if "optimizer.momentum=0.9" in line)
    step, mean, low, high, count = line.split()[-5:]  # the last step's row: mean, min, max over the seeds
    assert (int(step), int(count)) == (60, 2)
    assert [float(mean), float(low), float(high)] == pytest.approx(
        [sum(finals) / 2, min(finals), max(finals)], rel=1e-4
    )
    assert f"figure: {out} (4 runs)" in result.output


def test_plot_heatmap_of_run_ids_as_svg(swept):
    root, runs = swept
    out = root / "heat.svg"
    ids = [run.run_id for run in runs]
    result = plot(
        root, *ids, "--heatmap", "optimizer.momentum,seed", "-c", "test_accuracy", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().lstrip().startswith("<?xml")
    assert f"figure: {out} (4 runs)" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["SWEEP", "-c", "train_los"],
            "column 'train_los' was not logged by these runs; available: step, train_loss",
        ),
        (["SWEEP", "--group", "optimizer.mom"], "--group 'optimizer.mom' is not a config field"),
        (["SWEEP", "--where", "optimizer.momentum=0.5"], "no run has optimizer.momentum = 0.5"),
        (["SWEEP", "--heatmap", "optimizer.momentum"], "give two fields as X,Y and one column"),
        (["--heatmap", "optimizer.lr,seed"], "the runs of one cell also differ in optimizer.momentum"),
        (["SWEEP", "--out", "figure.gif"], "the extension must be one of .png, .pdf, .svg"),
        (["0123abc"], "no run whose id starts with '0123abc'"),
    ],
)
def test_bad_input_exits_2_with_a_message(swept, args, message):
    root, _ = swept
    result = plot(root, *[str(root / "sweep") if arg == "SWEEP" else arg for arg in args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
