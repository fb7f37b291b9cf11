"""The run store: files per run, reuse of finished runs, failure, resumption, divergence, index, lookup."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import sqlite3
from importlib import metadata

import pandas as pd
import pytest
import torch
from helpers import fail_on_step, raise_at

from momentumlab.config import config_hash
from momentumlab.store import RunStore, RunStoreError
from momentumlab.train.feature_margin import train_feature_margin

MOMENTUM = ("optimizer.name=ema_momentum", "optimizer.momentum=0.9")
DIVERGING = ("optimizer.lr=1e12", "model.init_std=1.0")  # finite at step 0, overflows float32 at step 1


def read_json(path):
    return json.loads(path.read_text())


def test_run_writes_config_status_metrics_weights_and_environment(store, tiny_config):
    config = tiny_config(*MOMENTUM)
    stored = store.run(config)
    record = train_feature_margin(config)

    assert stored.run_id == config_hash(config)
    assert stored.folder == store.root / "runs" / stored.run_id
    assert sorted(p.name for p in stored.folder.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "environment.json",
        "metrics.csv",
        "status.json",
        "weights.pt",
    ]  # the checkpoint is gone once the run is finished
    assert stored.finished
    assert read_json(stored.folder / "config.json") == config.model_dump(mode="json")

    status = read_json(stored.folder / "status.json")
    assert status["status"] == stored.status == "complete"
    assert (status["seconds"], status["extra"]) == (stored.seconds, stored.extra)
    assert status["step"] is None
    assert status["message"] == ""
    assert status["resumed_from_step"] == 0
    assert status["seconds"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", status["updated"])

    metrics = pd.read_csv(stored.folder / "metrics.csv")
    pd.testing.assert_frame_equal(metrics, pd.DataFrame(record.rows), check_exact=True)
    assert metrics["step"].tolist() == [0, 10, 20, 30, 40, 50, 60]
    pd.testing.assert_frame_equal(stored.metrics(), metrics, check_exact=True)
    assert stored.final() == pd.DataFrame(record.rows).iloc[-1].to_dict()

    weights = torch.load(stored.folder / "weights.pt", weights_only=True)
    assert set(weights) == {"weight"}
    assert torch.equal(weights["weight"], record.weights["weight"])
    assert torch.equal(stored.load_weights()["weight"], record.weights["weight"])

    environment = read_json(stored.folder / "environment.json")
    assert environment == stored.environment()
    assert environment["python"] == platform.python_version()
    assert environment["packages"]["torch"] == torch.__version__
    assert environment["packages"]["pandas"] == pd.__version__
    assert environment["packages"]["momentumlab"] == metadata.version("momentumlab")
    assert environment["machine"]["cpu_count"] == os.cpu_count()
    assert environment["machine"]["platform"] == platform.platform()
    assert environment["machine"]["torch_threads"] == torch.get_num_threads()
    assert environment["git_revision"] is None or re.fullmatch(r"[0-9a-f]{40}", environment["git_revision"])


def test_a_finished_run_is_returned_without_training(store, tiny_config):
    config = tiny_config()
    first = store.run(config)
    metrics_text = (first.folder / "metrics.csv").read_text()
    status_before = read_json(first.folder / "status.json")

    again = store.run(config, on_step=fail_on_step)
    assert again.run_id == first.run_id
    assert read_json(first.folder / "status.json") == status_before
    assert (first.folder / "metrics.csv").read_text() == metrics_text
    # A fresh store object on the same folder finds it too.
    assert RunStore(store.root).run(config, on_step=fail_on_step).rows == first.rows


def test_force_retrains_a_finished_run(store, tiny_config):
    config = tiny_config()
    first = store.run(config)
    steps = []
    forced = store.run(config, force=True, on_step=steps.append)
    assert steps == list(range(60))
    assert forced.status == "complete"
    assert forced.resumed_from_step == 0
    pd.testing.assert_frame_equal(forced.metrics(), first.metrics(), check_exact=True)


def test_interrupted_run_is_failed_and_resumes_to_the_uninterrupted_result(tmp_path, store, tiny_config):
    config = tiny_config(*MOMENTUM, "train.batch_size=50")
    with pytest.raises(KeyboardInterrupt):
        store.run(config, on_step=raise_at(30, KeyboardInterrupt))

    folder = store.folder(config_hash(config))
    status = read_json(folder / "status.json")
    assert status["status"] == "failed"
    assert status["message"] == "KeyboardInterrupt: interrupted at step 30"
    # The live metrics hold the rows of the checkpoint at step 20 (steps 0 and 10), not a result.
    assert pd.read_csv(folder / "metrics.csv")["step"].tolist() == [0, 10]
    assert not (folder / "weights.pt").exists()
    assert (folder / "checkpoint.pt").is_file()
    interrupted = store.get(config_hash(config))
    assert not interrupted.finished
    assert [(row["run_id"], row["status"], row["final"]) for row in store.list()] == [
        (config_hash(config), "failed", None)
    ]

    steps = []
    resumed = store.run(config, on_step=steps.append)
    assert steps == list(range(20, 60))  # resumed from the checkpoint at step 20
    assert resumed.status == "complete"
    assert resumed.resumed_from_step == 20
    assert not (folder / "checkpoint.pt").exists()

    reference = RunStore(tmp_path / "reference").run(config)
    assert reference.resumed_from_step == 0
    pd.testing.assert_frame_equal(resumed.metrics(), reference.metrics(), check_exact=True)
    assert (folder / "metrics.csv").read_bytes() == (reference.folder / "metrics.csv").read_bytes()
    assert torch.equal(resumed.load_weights()["weight"], reference.load_weights()["weight"])


def test_a_forced_rerun_that_fails_leaves_no_result(store, tiny_config):
    config = tiny_config()
    store.run(config)
    with pytest.raises(RuntimeError, match="interrupted at step 5"):
        store.run(config, force=True, on_step=raise_at(5))
    stored = store.get(config_hash(config))
    assert stored.status == "failed"
    assert stored.message == "RuntimeError: interrupted at step 5"
    assert not stored.finished  # the old metrics.csv is not read as the result of this config
    steps = []
    store.run(config, on_step=steps.append)
    assert steps == list(range(60))  # no checkpoint before step 20: trained from the start


def test_diverging_run_is_stored_as_diverged(store, tiny_config):
    config = tiny_config(*DIVERGING)
    stored = store.run(config)
    status = read_json(stored.folder / "status.json")
    assert status["status"] == "diverged"
    assert status["step"] == 1
    assert status["message"] == "non-finite loss at step 1"
    assert stored.finished
    assert stored.metrics()["step"].tolist() == [0]
    assert (stored.folder / "weights.pt").is_file()
    (row,) = store.list()
    assert row["status"] == "diverged"
    assert json.loads(row["final"]) == stored.final()
    # Diverged is a finished result: asking again does not retrain.
    assert store.run(config, on_step=fail_on_step).status == "diverged"
    assert read_json(stored.folder / "status.json") == status


def test_run_diverging_at_step_zero_has_readable_empty_metrics(store, tiny_config):
    stored = store.run(tiny_config("model.init_std=1e13"))  # f overflows float32 at the initialization
    assert stored.status == "diverged"
    assert stored.diverged_at_step == 0
    assert stored.message == "non-finite loss at step 0"
    assert len(stored.metrics()) == 0
    assert list(pd.read_csv(stored.folder / "metrics.csv").columns[:2]) == ["step", "train_loss"]
    assert stored.final() == {}
    (row,) = store.list()
    assert (row["status"], row["final"]) == ("diverged", None)


def test_list_returns_indexed_runs_with_their_status(store, tiny_config):
    assert store.list() == []
    gd, momentum = tiny_config(), tiny_config(*MOMENTUM, "seed=4", "train.steps=30")
    store.run(gd)
    store.run(momentum)
    rows = {row["run_id"]: row for row in store.list()}
    assert set(rows) == {config_hash(gd), config_hash(momentum)}
    row = rows[config_hash(momentum)]
    assert (row["kind"], row["status"], row["seed"]) == ("feature_margin", "complete", 4)
    assert json.loads(row["config"]) == momentum.model_dump(mode="json")
    assert json.loads(row["final"]) == store.get(config_hash(momentum)).final()
    assert json.loads(row["final"])["step"] == 30
    assert json.loads(rows[config_hash(gd)]["config"])["optimizer"]["name"] == "gd"


def test_index_is_an_sqlite_file(store, tiny_config):
    config = tiny_config()
    store.run(config)
    connection = sqlite3.connect(store.root / "index.sqlite")
    try:
        rows = connection.execute("SELECT run_id, kind, status, seed FROM runs").fetchall()
    finally:
        connection.close()
    assert rows == [(config_hash(config), "feature_margin", "complete", 0)]


def test_an_index_of_an_older_layout_is_rebuilt_from_the_folders(store, tiny_config):
    config = tiny_config()
    store.run(config)
    with sqlite3.connect(store.root / "index.sqlite") as connection:
        connection.execute("DROP TABLE runs")
        connection.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT, optimizer TEXT)")
    connection.close()
    (row,) = RunStore(store.root).list()
    assert (row["run_id"], row["kind"], row["status"]) == (config_hash(config), "feature_margin", "complete")
    assert json.loads(row["final"]) == store.get(config_hash(config)).final()


def test_get_by_unique_prefix(store, tiny_config):
    config = tiny_config()
    run_id = store.run(config).run_id
    for prefix in (run_id, run_id[:8], run_id[:1]):
        stored = store.get(prefix)
        assert stored.run_id == run_id
        assert stored.config == config
        assert stored.status == "complete"


def test_unknown_or_ambiguous_prefix_raises(store, tiny_config):
    run_id = store.run(tiny_config()).run_id
    unknown = next(digit for digit in "0123456789abcdef" if digit != run_id[0])
    with pytest.raises(RunStoreError, match=f"no run whose id starts with '{unknown}'"):
        store.get(unknown)
    # A second run folder sharing the first 4 digits (run ids are 16 hex digits; a real collision of
    # 4 leading digits needs thousands of runs).
    twin = run_id[:4] + ("0" * 12 if run_id[4:] != "0" * 12 else "f" * 12)
    (store.folder(twin)).mkdir()
    with pytest.raises(RunStoreError, match=f"run id prefix '{run_id[:4]}' is ambiguous") as caught:
        store.get(run_id[:4])
    assert run_id in str(caught.value) and twin in str(caught.value)
    assert store.get(run_id[:5] if twin[4] != run_id[4] else run_id).run_id == run_id


@pytest.mark.parametrize("prefix", ["", "../r", "*", "0*", "[0-9]", "ABCDEF", "g", "0" * 17])
def test_a_prefix_must_be_1_to_16_lowercase_hex_digits(store, tiny_config, prefix):
    store.run(tiny_config())
    with pytest.raises(RunStoreError, match="must be 1 to 16 hexadecimal digits"):
        store.get(prefix)


def test_a_run_being_trained_elsewhere_is_refused(store, tiny_config):
    config = tiny_config()
    folder = store.folder(config_hash(config))
    folder.mkdir(parents=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's lock, as far as flock cares
        with pytest.raises(RunStoreError, match="is being computed by another process"):
            store.run(config, on_step=fail_on_step)
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert store.run(config).status == "complete"


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MOMENTUMLAB_STORE", str(tmp_path / "elsewhere"))
    store = RunStore()
    assert store.root == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere" / "index.sqlite").is_file()
    assert (tmp_path / "elsewhere" / "runs").is_dir()


def test_an_image_run_is_stored_and_reused(store, tmp_path):
    """ImageRunConfig runs go through the same store: trained once, then returned from disk."""
    from momentumlab.runs.image import ImageRunConfig

    config = ImageRunConfig.model_validate(
        {
            "data": {"name": "digits", "train_size": 64, "test_size": 32},
            "model": {"name": "small_cnn", "width": 4},
            "optimizer": {"name": "ema_momentum", "lr": 0.1, "momentum": 0.9},
            "train": {"epochs": 3, "chunk_size": 32},
        }
    )
    stored = store.run(config)
    assert stored.status == "complete"
    assert stored.run_id == config_hash(config)
    assert isinstance(store.get(stored.run_id).config, ImageRunConfig)
    assert stored.metrics()["epoch"].tolist()[-1] == 3
    pd.testing.assert_frame_equal(store.run(config, on_step=fail_on_step).metrics(), stored.metrics())
    (row,) = [r for r in store.list() if r["run_id"] == stored.run_id]
    assert (row["kind"], row["status"]) == ("image", "complete")


def test_a_measurement_is_measured_again_when_the_package_source_changes(tmp_path, monkeypatch):
    from pydantic import BaseModel

    import momentumlab.store as store_module

    class Settings(BaseModel):
        size: int = 3

    calls = []

    def measure():
        calls.append(1)
        return {"table": pd.DataFrame({"x": [float(len(calls))]})}

    store = RunStore(tmp_path / "store")
    assert store.measurement("demo", Settings(), measure)["table"]["x"].item() == 1.0
    assert store.measurement("demo", Settings(), measure)["table"]["x"].item() == 1.0  # cached
    monkeypatch.setattr(store_module, "source_fingerprint", lambda: "edited-source")
    assert store.measurement("demo", Settings(), measure)["table"]["x"].item() == 2.0
    assert len(list((tmp_path / "store" / "measurements" / "demo").iterdir())) == 2
