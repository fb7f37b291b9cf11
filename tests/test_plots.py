"""`momentumlab plot`'s figures: the numbers they draw are the means over seeds computed by hand."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from helpers import make_tiny_config, raise_at

from momentumlab.config import ConfigError
from momentumlab.plots import averaged_fields, heatmap, plot_curves, plot_heatmap, run_table, select
from momentumlab.store import RunStore
from momentumlab.sweep import SweepSpec, result_table, write_result

LRS, MOMENTA, SEEDS = (0.25, 0.5), (0.0, 0.9), (0, 1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Eight tiny heavy-ball runs (lr × momentum × seed) in a store, and their sweep result folder."""
    root = tmp_path_factory.mktemp("plots")
    store = RunStore(root / "store")
    configs = [
        make_tiny_config(
            "optimizer.name=heavy_ball",
            f"optimizer.lr={lr}",
            f"optimizer.momentum={momentum}",
            f"seed={seed}",
        )
        for lr in LRS
        for momentum in MOMENTA
        for seed in SEEDS
    ]
    runs = store.run_many(configs)
    write_result(result_table(configs, store), SweepSpec(kind="feature_margin"), root / "sweep")
    return store, runs, root


def runs_where(runs, lr=None, momentum=None):
    return [
        run
        for run in runs
        if (lr is None or run.config.optimizer.lr == lr)
        and (momentum is None or run.config.optimizer.momentum == momentum)
    ]


def assert_png(path):
    assert path.read_bytes()[:8] == PNG
    height, width, _ = plt.imread(path).shape
    assert height > 100 and width > 100


def test_curves_are_each_groups_mean_and_min_max_over_seeds(swept, tmp_path):
    store, runs, root = swept
    table, left_out = run_table([str(root / "sweep")], store)
    assert left_out == [] and len(table) == 8
    chosen = select(table, ["optimizer.lr=0.5"])
    path = tmp_path / "curves.png"
    frame = plot_curves(chosen, store, ["train_loss", "test_accuracy"], path, group=["optimizer.momentum"])
    assert_png(path)
    assert set(frame["label"]) == {"optimizer.momentum=0", "optimizer.momentum=0.9"}
    assert averaged_fields(chosen, ["optimizer.momentum"]) == []
    assert averaged_fields(table, ["optimizer.momentum"]) == ["optimizer.lr"]
    for momentum in MOMENTA:
        seeds = [run.metrics().set_index("step") for run in runs_where(runs, 0.5, momentum)]
        assert len(seeds) == 2
        for column in ("train_loss", "test_accuracy"):
            drawn = frame[(frame["column"] == column) & (frame["optimizer.momentum"] == momentum)]
            by_hand = pd.concat([seed[column] for seed in seeds], axis=1)
            assert drawn["step"].tolist() == by_hand.index.tolist() == list(range(0, 61, 10))
            np.testing.assert_allclose(
                drawn["mean"], (by_hand.iloc[:, 0] + by_hand.iloc[:, 1]) / 2, rtol=1e-12
            )
            np.testing.assert_array_equal(drawn["low"], by_hand.min(axis=1))
            np.testing.assert_array_equal(drawn["high"], by_hand.max(axis=1))
            assert (drawn["runs"] == 2).all()


def test_curves_group_by_every_varied_field_but_the_seed_by_default(swept, tmp_path):
    store, runs, _ = swept
    table, _ = run_table([run.run_id[:8] for run in runs], store)  # run id prefixes, not a sweep result
    frame = plot_curves(table, store, ["train_loss"], tmp_path / "all.png")
    assert set(frame.columns) >= {"optimizer.lr", "optimizer.momentum"} and "seed" not in frame
    assert frame["label"].nunique() == 4 and (frame["runs"] == 2).all()
    final = frame[frame["step"] == 60].set_index(["optimizer.lr", "optimizer.momentum"])["mean"]
    for lr in LRS:
        for momentum in MOMENTA:
            by_hand = np.mean([run.final()["train_loss"] for run in runs_where(runs, lr, momentum)])
            assert final[(lr, momentum)] == pytest.approx(by_hand, rel=1e-12)


def test_one_run_is_one_curve_named_by_its_id(swept, tmp_path):
    store, runs, _ = swept
    table, _ = run_table([runs[0].run_id], store)
    frame = plot_curves(table, store, ["gradient_norm"], tmp_path / "one.svg", log_y=True)
    assert (tmp_path / "one.svg").read_text().lstrip().startswith("<?xml")
    assert set(frame["label"]) == {runs[0].run_id}
    np.testing.assert_array_equal(frame["mean"], runs[0].metrics()["gradient_norm"])


def test_heatmap_cells_are_the_mean_final_value_over_seeds(swept, tmp_path):
    store, runs, root = swept
    table, _ = run_table([str(root / "sweep" / "results.parquet")], store)
    path = tmp_path / "heat.png"
    frame = plot_heatmap(table, "test_accuracy_small", ("optimizer.lr", "optimizer.momentum"), path)
    assert_png(path)
    assert len(frame) == 4 and (frame["runs"] == 2).all() and (frame["diverged"] == 0).all()
    for row in frame.itertuples():
        seeds = runs_where(runs, row[1], row[2])
        by_hand = sum(run.final()["test_accuracy_small"] for run in seeds) / len(seeds)
        assert row.mean == pytest.approx(by_hand, rel=1e-12)
    pdf = tmp_path / "heat.pdf"
    plot_heatmap(table, "train_loss", ("optimizer.momentum", "optimizer.lr"), pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_heatmap_counts_diverged_runs_and_a_nan_makes_its_cell_nan():
    """A field that follows from the two (the rule's name from the momentum) does not mix cells."""
    table = pd.DataFrame(
        {
            "run_id": list("abcdef"),
            "status": ["complete", "complete", "diverged", "complete", "complete", "complete"],
            "seed": [0, 1, 0, 1, 0, 1],
            "optimizer.lr": [0.1, 0.1, 1.0, 1.0, 0.1, 0.1],
            "optimizer.momentum": [0.0, 0.0, 0.0, 0.0, 0.9, 0.9],
            "optimizer.name": ["gd", "gd", "gd", "gd", "ema_momentum", "ema_momentum"],
            "train_loss": [0.5, 0.25, math.nan, 0.75, 0.125, 0.375],
        }
    )
    frame = heatmap(table, "train_loss", ("optimizer.lr", "optimizer.momentum"))
    cells = frame.set_index(["optimizer.lr", "optimizer.momentum"])
    assert cells.loc[(0.1, 0.0), "mean"] == 0.375 and cells.loc[(0.1, 0.9), "mean"] == 0.25
    assert math.isnan(cells.loc[(1.0, 0.0), "mean"]) and cells.loc[(1.0, 0.0), "diverged"] == 1
    assert cells["runs"].tolist() == [2, 2, 2]


def test_heatmap_refuses_a_third_varied_field_until_it_is_fixed(swept):
    store, _, root = swept
    table, _ = run_table([str(root / "sweep")], store)
    with pytest.raises(
        ConfigError, match=r"one cell also differ in optimizer\.momentum \(0\.0, 0\.9\).*--where"
    ):
        heatmap(table, "train_loss", ("optimizer.lr", "seed"))
    frame = heatmap(select(table, ["optimizer.momentum=0.9"]), "train_loss", ("optimizer.lr", "seed"))
    assert (frame["runs"] == 1).all() and len(frame) == 4


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (
            lambda t, s, p: plot_curves(t, s, ["train_los"], p),
            r"column 'train_los' was not logged.*train_loss",
        ),
        (
            lambda t, s, p: plot_curves(t, s, ["train_loss"], p, group=["optimizer.mom"]),
            r"--group.*optimizer\.momentum",
        ),
        (lambda t, s, p: select(t, ["optimizer.lr=0.3"]), r"no run has optimizer\.lr = 0\.3.*0\.25, 0\.5"),
        (lambda t, s, p: select(t, ["optimizer.lr"]), r"must look like field=value"),
        (
            lambda t, s, p: heatmap(t, "nothing", ("optimizer.lr", "optimizer.momentum")),
            r"'nothing'.*train_loss",
        ),
        (
            lambda t, s, p: heatmap(t, "kind", ("optimizer.lr", "optimizer.momentum")),
            r"'kind' is not a final",
        ),
        (lambda t, s, p: plot_curves(t, s, ["train_loss"], p.with_suffix(".jpg")), r"\.png, \.pdf, \.svg"),
    ],
)
def test_bad_requests_name_what_is_available(swept, tmp_path, action, message):
    store, _, root = swept
    table, _ = run_table([str(root / "sweep")], store)
    with pytest.raises(ConfigError, match=message):
        action(table, store, tmp_path / "figure.png")
    assert not (tmp_path / "figure.png").exists()


def test_run_ids_of_a_csv_result_stay_text(tmp_path):
    """An id of digits only (1 in 1,800 ids) must not become a number, nor lose its leading zeros."""
    path = tmp_path / "results.csv"
    path.write_text("run_id,status,seed,optimizer.lr,train_loss\n0012345678901234,complete,0,0.5,0.25\n")
    table, _ = run_table([str(path)], RunStore(tmp_path / "store"))
    assert table["run_id"].tolist() == ["0012345678901234"]


def test_run_table_leaves_out_runs_without_results_and_refuses_unknown_ids(tmp_path):
    store = RunStore(tmp_path / "store")
    done = store.run(make_tiny_config())
    failing = make_tiny_config("seed=7")
    with pytest.raises(RuntimeError):
        store.run(failing, on_step=raise_at(1))
    table, left_out = run_table([], store)
    assert table["run_id"].tolist() == [done.run_id]
    assert len(left_out) == 1 and left_out[0].endswith("(failed)")
    with pytest.raises(ConfigError, match="no run whose id starts with 'abc'"):
        run_table(["abc"], store)
    with pytest.raises(ConfigError, match="neither a sweep result"):
        run_table(["not-a-run"], store)
    with pytest.raises(ConfigError, match="no finished runs"):
        run_table([], RunStore(tmp_path / "empty"))
