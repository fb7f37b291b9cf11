"""Each file of a finished run truncated, garbled, replaced or deleted: the run reads as `corrupt` with the
reason (in `get`, `ls`, `show`), no command shows a traceback, and asking for it again retrains it to the
original result. Also: a broken or deleted index, a corrupt checkpoint, a corrupt measurement, an old run
without checksums, and a disk that fills up at each write."""

from __future__ import annotations

import errno
import json
import os
import warnings

import pandas as pd
import pytest
import torch
from faults.injection import (
    CORRUPTIONS,
    INDEX_DAMAGE,
    corrupt_and_reread,
    index_damage,
    record_write_events,
    tiny_run_config,
)
from helpers import raise_at
from typer.testing import CliRunner

from momentumlab import atomic
from momentumlab.cli import app
from momentumlab.config import StrictModel, config_hash
from momentumlab.store import RunStore
from momentumlab.sweep import execute


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    RunStore(root).run(tiny_run_config())
    return root


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=[c.id for c in CORRUPTIONS])
def test_a_corrupted_file_is_reported_and_the_run_retrained(tmp_path, reference_store, corruption):
    outcome = corrupt_and_reread(tmp_path, corruption, reference_store)
    assert outcome.status == "corrupt", outcome
    named = "metrics.csv" if corruption.name == "files-gone" else corruption.file
    assert named in outcome.reason, outcome
    assert outcome.listed_as == "corrupt", outcome  # what ls shows
    assert outcome.commands_without_traceback, outcome
    assert outcome.retrained_identical, outcome


def test_ls_and_show_give_the_reason(tmp_path, reference_store):
    import shutil

    root = tmp_path / "store"
    shutil.copytree(reference_store, root)
    run_id = config_hash(tiny_run_config())
    metrics = root / "runs" / run_id / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    listed = CliRunner().invoke(app, ["ls", "--store", str(root)])
    assert listed.exit_code == 0
    assert "corrupt" in listed.output and "metrics.csv does not match its checksum" in listed.output
    shown = CliRunner().invoke(app, ["show", run_id, "--store", str(root)])
    assert shown.exit_code == 0 and '"status": "corrupt"' in shown.output and "final:" not in shown.output
    checked = CliRunner().invoke(app, ["store", "check", "--store", str(root)])
    assert checked.exit_code == 1
    assert f"run {run_id}: corrupt: metrics.csv does not match its checksum" in checked.output
    repaired = CliRunner().invoke(app, ["store", "repair", "--store", str(root)])
    assert repaired.exit_code == 0 and f"run {run_id}: marked corrupt" in repaired.output
    assert json.loads((root / "runs" / run_id / "status.json").read_text())["status"] == "corrupt"


def test_a_run_without_checksums_is_checked_against_its_last_step(tmp_path):
    """A run stored before checksums existed: a truncated metrics.csv still shows by its last row."""
    store = RunStore(tmp_path / "store")
    run = store.run(tiny_run_config())
    status = json.loads((run.folder / "status.json").read_text())
    del status["checksums"]
    (run.folder / "status.json").write_text(json.dumps(status))
    assert store.get(run.run_id).status == "complete"
    lines = (run.folder / "metrics.csv").read_text().splitlines(keepends=True)
    (run.folder / "metrics.csv").write_text("".join(lines[:-2]))  # the 60-step run now ends at step 40
    read = store.get(run.run_id)
    assert (read.status, read.message) == (
        "corrupt",
        "metrics.csv ends at step 40, not at the run's last step 60",
    )
    assert not read.finished and read.final() == {}


@pytest.mark.parametrize("damage", INDEX_DAMAGE)
def test_a_deleted_or_broken_index_is_rebuilt(tmp_path, reference_store, damage):
    rows = index_damage(tmp_path, reference_store, damage)
    assert [(row["run_id"], row["status"]) for row in rows] == [(config_hash(tiny_run_config()), "complete")]


def test_every_command_works_on_a_garbled_index(tmp_path, reference_store):
    import shutil

    root = tmp_path / "store"
    shutil.copytree(reference_store, root)
    (root / "index.sqlite").write_bytes(b"\x00garbage" * 100)
    run_id = config_hash(tiny_run_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for command in (["ls"], ["show", run_id[:6]], ["store", "check"], ["store", "repair"]):
            result = CliRunner().invoke(app, [*command, "--store", str(root)])
            assert result.exit_code == 0, result.output
            assert "Traceback" not in result.output
        assert RunStore(root).run(tiny_run_config()).status == "complete"


@pytest.mark.parametrize("damage", ["truncated", "garbled", "old-format"])
def test_a_corrupt_checkpoint_is_discarded_with_a_warning_and_the_run_trains_from_zero(tmp_path, damage):
    store = RunStore(tmp_path / "store")
    config = tiny_run_config()
    with pytest.raises(RuntimeError):
        store.run(config, on_step=raise_at(30))
    checkpoint = store.folder(config_hash(config)) / "checkpoint.pt"
    data = checkpoint.read_bytes()
    if damage == "truncated":
        checkpoint.write_bytes(data[: len(data) // 2])
    elif damage == "garbled":
        checkpoint.write_bytes(data[:100] + b"\x00" * 16 + data[116:])
    else:  # a checkpoint without its checksum trailer, as older versions wrote it
        checkpoint.write_bytes(data[:-44])
    assert store.checkpoint_position(config) == 0 or damage == "never"
    steps = []
    with pytest.warns(UserWarning, match="checkpoint .* is corrupt"):
        run = store.run(config, on_step=steps.append)
    assert steps[0] == 0 and run.status == "complete" and run.resumed_from_step == 0
    reference = RunStore(tmp_path / "reference").run(config)
    assert (run.folder / "metrics.csv").read_bytes() == (reference.folder / "metrics.csv").read_bytes()


def test_a_sweep_trains_every_point_when_one_checkpoint_is_corrupt(tmp_path):
    configs = [tiny_run_config().model_copy(update={"seed": seed}) for seed in range(3)]
    configs = [type(c).model_validate(c.model_dump()) for c in configs]
    store = RunStore(tmp_path / "store")
    with pytest.raises(RuntimeError):
        store.run_many(configs, on_step=raise_at(30))  # all three resume from step 20
    (store.folder(config_hash(configs[1])) / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = execute(configs, store)
    assert (outcome.failures, outcome.busy) == ([], [])
    runs = [store.get(config_hash(c)) for c in configs]
    assert [run.status for run in runs] == ["complete"] * 3
    assert [run.resumed_from_step for run in runs] == [20, 0, 20]


def test_the_live_metrics_file_follows_training_and_is_cut_back_on_resume(tmp_path):
    store = RunStore(tmp_path / "store")
    config = tiny_run_config()
    folder = store.folder(config_hash(config))
    seen = []

    def follow(step):
        if step in (25, 45):
            seen.append(pd.read_csv(folder / "metrics.csv")["step"].tolist())
        if step == 45:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.run(config, on_step=follow)
    assert seen == [[0, 10], [0, 10, 20, 30]]  # one block per checkpoint (at 20 and 40)
    with open(folder / "metrics.csv", "a") as stream:
        stream.write("50,0.1,0.2")  # a torn line, as a kill in the middle of an append leaves
    steps = []
    run = store.run(config, on_step=steps.append)
    assert steps[0] == 40 and run.status == "complete"
    assert run.metrics()["step"].tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert json.loads((folder / "status.json").read_text())["checksums"]["metrics.csv"] == atomic.file_sha256(
        folder / "metrics.csv"
    )


class Settings(StrictModel):
    size: int = 3


def test_a_corrupt_measurement_is_measured_again(tmp_path):
    store = RunStore(tmp_path / "store")
    calls = []

    def measure():
        calls.append(1)
        return {"table": pd.DataFrame({"x": [1.0, 2.0, 3.0]})}

    first = store.measurement("demo", Settings(), measure)
    assert store.measurement("demo", Settings(), measure)["table"].equals(first["table"]) and len(calls) == 1
    (parquet,) = (tmp_path / "store" / "measurements" / "demo").glob("*/table.parquet")
    parquet.write_bytes(parquet.read_bytes()[:-20])
    with pytest.warns(UserWarning, match="measuring again"):
        again = store.measurement("demo", Settings(), measure)
    assert again["table"].equals(first["table"]) and len(calls) == 2


def test_a_full_disk_at_each_write_leaves_no_result_and_the_run_then_completes(tmp_path, monkeypatch):
    """ENOSPC from the k-th fsync on (the disk stays full): the write fails naming its path, no half-written
    file is read as a result, and once there is space again the run completes to the reference."""
    reference = RunStore(tmp_path / "reference").run(tiny_run_config())
    writes = len([e for e in record_write_events(tmp_path / "count") if e.kind != "index"])
    real_fsync = os.fsync
    for first_failing in range(writes):
        root = tmp_path / f"full-{first_failing}"
        count = 0

        def fsync(descriptor, first_failing=first_failing):
            nonlocal count
            count += 1
            if count > first_failing:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(descriptor)

        store = RunStore(root)
        monkeypatch.setattr(atomic.os, "fsync", fsync)
        with pytest.raises(atomic.WriteError, match=f"cannot write {root}/runs/.*: No space left on device"):
            store.run(tiny_run_config())
        monkeypatch.setattr(atomic.os, "fsync", real_fsync)
        reopened = RunStore(root)
        run_id = config_hash(tiny_run_config())
        assert reopened.get(run_id).status != "complete" if reopened.folder(run_id).is_dir() else True
        assert reopened.check() in ([], [f"run {run_id}: corrupt: config.json is missing"])
        assert not list(root.glob("runs/*/.*.tmp"))  # a failed write removes its temporary file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = reopened.run(tiny_run_config())
        assert (run.folder / "metrics.csv").read_bytes() == (reference.folder / "metrics.csv").read_bytes()
        assert torch.equal(run.load_weights()["weight"], reference.load_weights()["weight"])
