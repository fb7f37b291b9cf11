"""Sweeps: expansion, the store as cache, resuming a killed sweep, local processes and Ray, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import TINY_RAW, raise_at
from typer.testing import CliRunner

from momentumlab.cli import app
from momentumlab.config import ConfigError, config_hash, flatten
from momentumlab.runs.feature_margin import FeatureMarginRunConfig
from momentumlab.runs.image import ImageRunConfig
from momentumlab.store import RunStore, plan_batches
from momentumlab.sweep import (
    Outcome,
    SweepSpec,
    execute,
    expand,
    load_result,
    load_sweep,
    result_table,
    write_result,
)
from momentumlab.train.feature_margin import train_feature_margin

SWEEP = {
    "kind": "feature_margin",
    "base": TINY_RAW,
    "grid": {"optimizer.lr": [0.25, 0.5]},
    "points": [
        {"optimizer.name": "gd", "optimizer.momentum": 0.0},
        {"optimizer.name": "ema_momentum", "optimizer.momentum": 0.9},
    ],
    "seeds": [0, 1],
}
COMPARED = ["status", "train_accuracy", "val_accuracy", "test_accuracy", "test_accuracy_small", "train_loss"]


def sweep_file(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return path


def configs_of(path: Path) -> list[FeatureMarginRunConfig]:
    return expand(*load_sweep(path))


def test_expand_crosses_points_grid_and_seeds(tmp_path):
    configs = configs_of(sweep_file(tmp_path))
    assert len(configs) == 8 and len({config_hash(c) for c in configs}) == 8
    settings = {(c.optimizer.name, c.optimizer.momentum, c.optimizer.lr, c.seed) for c in configs}
    assert settings == {
        (name, momentum, lr, seed)
        for name, momentum in (("gd", 0.0), ("ema_momentum", 0.9))
        for lr in (0.25, 0.5)
        for seed in (0, 1)
    }
    assert all(c.train.steps == TINY_RAW["train"]["steps"] for c in configs)  # the base is kept


def test_expand_drops_duplicate_points(tmp_path):
    configs = configs_of(sweep_file(tmp_path, grid={"optimizer.lr": [0.5, 0.5]}, points=[]))
    assert len(configs) == 2  # one lr × two seeds


def test_base_file_is_merged_under_base(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_RAW))
    path = sweep_file(tmp_path, base={"train": {"steps": 30}}, base_file="base.yaml", points=[])
    configs = configs_of(path)
    assert {c.train.steps for c in configs} == {30}
    assert {c.data.n_train for c in configs} == {TINY_RAW["data"]["n_train"]}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grid": {"optimizer.lrr": [0.1]}}, "optimizer.lrr"),
        ({"grid": {"optimizer.lr": [-1.0]}}, "optimizer.lr = -1.0"),
        ({"grid": {"optimizer.lr": []}}, "grid.optimizer.lr = []"),
        ({"grid": {"seed": [1, 2]}}, "under `seeds`"),
        ({"seeds": [-1]}, "seeds"),
        ({"kind": "cifar"}, "kind = 'cifar' is not a registered run kind"),
    ],
)
def test_invalid_sweeps_name_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError) as caught:
        configs_of(sweep_file(tmp_path, **changes))
    assert message in str(caught.value)


def test_cli_sweep_writes_the_table_and_reuses_finished_points(tmp_path):
    path, out, store_dir = sweep_file(tmp_path), tmp_path / "result", tmp_path / "store"
    runner = CliRunner()
    first = runner.invoke(
        app, ["sweep", str(path), "--out", str(out), "--store", str(store_dir), "--no-progress"]
    )
    assert first.exit_code == 0, first.output
    assert "8 runs, 0 already in the store, 8 to train" in first.output
    table = load_result(out)
    assert len(table) == 8 and set(table["status"]) == {"complete"}
    assert {"run_id", "seed", "optimizer.lr", "optimizer.momentum", "data.n_train", "val_accuracy"} <= set(
        table
    )
    assert not any(column.endswith("_r0") for column in table)  # per-neuron columns stay in metrics.csv
    pd.testing.assert_frame_equal(load_result(out / "results.parquet"), table, check_dtype=False)

    # Each row is the run's final measurement, and equals the same run trained alone.
    config = configs_of(path)[5]
    row = table.set_index("run_id").loc[config_hash(config)]
    alone = train_feature_margin(config).rows[-1]
    for column in ("test_accuracy", "val_accuracy", "train_loss", "signal_max"):
        assert row[column] == pytest.approx(alone[column], rel=1e-4, abs=1e-6), column

    again = runner.invoke(
        app, ["sweep", str(path), "--out", str(out), "--store", str(store_dir), "--no-progress"]
    )
    assert again.exit_code == 0, again.output
    assert "8 runs, 8 already in the store, 0 to train" in again.output
    pd.testing.assert_frame_equal(load_result(out), table)


def test_cli_sweep_rejects_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["sweep", str(sweep_file(tmp_path, grid={"optimizer.lr": [0]}))])
    assert result.exit_code == 2
    assert "optimizer.lr = 0" in result.output
    result = CliRunner().invoke(app, ["sweep", str(sweep_file(tmp_path)), "--workers", "0"])
    assert result.exit_code == 2 and "--workers = 0" in result.output


def _table(configs: list[FeatureMarginRunConfig], store: RunStore) -> pd.DataFrame:
    return result_table(configs, store).set_index("run_id")[COMPARED].sort_index()


def test_killed_sweep_trains_only_what_is_missing_and_matches_an_uninterrupted_one(tmp_path):
    configs = configs_of(sweep_file(tmp_path))
    clean = RunStore(tmp_path / "clean")
    execute(configs, clean)

    store = RunStore(tmp_path / "killed")
    store.run_many(configs[:2])  # two points finished before the kill
    with pytest.raises(KeyboardInterrupt):
        store.run_many(
            configs[2:], on_step=raise_at(30, KeyboardInterrupt)
        )  # killed after the checkpoint at 20
    assert all(store.checkpoint_position(c) == 20 for c in configs[2:])
    assert [store.get(config_hash(c)).status for c in configs[2:]] == ["failed"] * 6
    finished = {c: (store.folder(config_hash(c)) / "status.json").stat().st_mtime_ns for c in configs[:2]}

    messages: list[str] = []
    assert execute(configs, store, echo=messages.append) == Outcome()
    assert messages[0] == "8 runs, 2 already in the store, 6 to train"
    assert all(
        (store.folder(config_hash(c)) / "status.json").stat().st_mtime_ns == t for c, t in finished.items()
    )
    assert all(store.get(config_hash(c)).resumed_from_step == 20 for c in configs[2:])
    pd.testing.assert_frame_equal(_table(configs, store), _table(configs, clean), rtol=1e-5, atol=1e-7)


def test_plan_batches_groups_by_engine_key_and_resume_position(tmp_path, store):
    configs = configs_of(sweep_file(tmp_path))
    with pytest.raises(RuntimeError):
        store.run_many(configs[:3], on_step=raise_at(30))  # three runs now resume from step 20
    longer = FeatureMarginRunConfig.model_validate(
        {**configs[0].model_dump(), "train": {**TINY_RAW["train"], "steps": 80}}
    )
    penalized = FeatureMarginRunConfig.model_validate(
        {**configs[0].model_dump(), "train": {**TINY_RAW["train"], "gradient_penalty": 0.1}}
    )
    image = ImageRunConfig(model={"name": "small_cnn"}, data={"name": "digits"})
    groups = plan_batches([*configs, longer, penalized, image], store, max_batch=4)
    as_hashes = sorted(sorted(config_hash(c) for c in group) for group in groups)
    expected = [configs[:3], configs[3:7], configs[7:], [longer], [penalized], [image]]
    assert as_hashes == sorted(sorted(config_hash(c) for c in group) for group in expected)
    with pytest.raises(ValueError, match="max_batch = 0"):
        plan_batches(configs, store, max_batch=0)


def test_local_workers_give_the_same_table(tmp_path):
    configs = configs_of(sweep_file(tmp_path))
    one, two = RunStore(tmp_path / "one"), RunStore(tmp_path / "two")
    assert execute(configs, one) == Outcome()
    messages: list[str] = []
    assert execute(configs, two, workers=2, max_batch=3, echo=messages.append) == Outcome()
    assert "on local (2 workers)" in messages[1]
    pd.testing.assert_frame_equal(_table(configs, two), _table(configs, one), rtol=1e-5, atol=1e-7)


def test_a_failing_batch_is_reported_and_the_others_finish(tmp_path, monkeypatch):
    monkeypatch.delenv("MOMENTUMLAB_DATA", raising=False)
    configs = configs_of(sweep_file(tmp_path))[:2]
    missing_dataset = ImageRunConfig(
        data={"name": "cifar10"}, model={"name": "small_cnn"}, train={"epochs": 1}
    )
    store = RunStore(tmp_path / "store")
    failures = execute([*configs, missing_dataset], store).failures
    assert len(failures) == 1 and "1 runs: DatasetError" in failures[0]
    assert [store.get(config_hash(c)).status for c in configs] == ["complete", "complete"]
    table = result_table([*configs, missing_dataset], store)
    assert list(table["status"]) == ["complete", "complete", "failed"]


def test_ray_backend_gives_the_same_table(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray cannot be installed here; install it with momentumlab[ray]")
    configs = configs_of(sweep_file(tmp_path))
    local, clustered = RunStore(tmp_path / "local"), RunStore(tmp_path / "ray")
    execute(configs, local)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        messages: list[str] = []
        assert execute(configs, clustered, backend="ray", echo=messages.append) == Outcome()
        assert "on ray (2 workers)" in messages[1]
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(_table(configs, clustered), _table(configs, local), rtol=1e-5, atol=1e-7)


def test_result_round_trips_through_csv_and_parquet(tmp_path):
    table = pd.DataFrame({"run_id": ["a", "b"], "optimizer.lr": [0.1, 0.2], "test_accuracy": [0.5, 1.0]})
    write_result(table, SweepSpec(kind="feature_margin"), tmp_path / "out")
    pd.testing.assert_frame_equal(load_result(tmp_path / "out"), table)
    pd.testing.assert_frame_equal(load_result(tmp_path / "out" / "results.parquet"), table)
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["kind"] == "feature_margin"
    with pytest.raises(ConfigError, match="does not exist"):
        load_result(tmp_path / "nowhere")


def test_flatten_gives_dotted_fields():
    assert flatten({"a": 1, "b": {"c": 2, "d": {"e": (1, 2)}}}) == {"a": 1, "b.c": 2, "b.d.e": [1, 2]}


def test_a_diverged_run_has_its_divergence_step_and_no_metrics_in_the_table(tmp_path):
    from helpers import make_tiny_config

    configs = [make_tiny_config(), make_tiny_config("optimizer.lr=1e12", "model.init_std=1.0")]
    store = RunStore(tmp_path / "store")
    assert execute(configs, store) == Outcome()
    assert store.get(config_hash(configs[1])).final()["step"] == 0  # its last finite row is step 0's
    table = result_table(configs, store).set_index("status")
    assert table.loc["diverged", "diverged_at"] == 1
    assert table[["train_loss", "test_accuracy", "val_accuracy"]].loc["diverged"].isna().all()
    assert table[["train_loss", "test_accuracy", "val_accuracy"]].loc["complete"].notna().all()
    write_result(result_table(configs, store), SweepSpec(kind="feature_margin"), tmp_path / "out")
    assert (
        load_result(tmp_path / "out").set_index("status").loc["diverged", ["step", "train_loss"]].isna().all()
    )


def test_a_sweep_larger_than_the_limit_is_refused_before_it_expands(tmp_path):
    grid = {field: list(range(1, 1001)) for field in ("train.steps", "model.width")}
    with pytest.raises(ConfigError, match=r"the sweep has \d{7} points; allowed: at most 100000"):
        load_sweep(sweep_file(tmp_path, grid=grid))


def test_run_many_trains_the_free_runs_then_names_the_busy_one(tmp_path):
    from helpers import make_tiny_config

    from momentumlab.store import RunBusyError, _exclusive

    configs = [make_tiny_config(f"seed={seed}") for seed in range(3)]
    store = RunStore(tmp_path / "store")
    busy = config_hash(configs[1])
    store.folder(busy).mkdir(parents=True)
    with _exclusive(store.folder(busy) / ".lock", busy), pytest.raises(RunBusyError, match=busy):
        store.run_many(configs)
    assert [store.get(config_hash(c)).status for c in configs] == ["complete", "pending", "complete"]
