"""Sweeps that meet other processes: a locked point is `busy` while the rest of its batch trains, two sweeps
on one store share the work, and a killed sweep takes its worker processes with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import yaml
from faults.injection import tiny_run_config
from helpers import TINY_RAW

from momentumlab.config import config_hash
from momentumlab.store import RunStore, _exclusive
from momentumlab.sweep import execute, result_table


def seeds(count: int, *overrides: str):
    base = tiny_run_config()
    return [type(base).model_validate({**base.model_dump(), "seed": seed}) for seed in range(count)]


def test_a_locked_point_is_busy_and_the_rest_of_its_batch_trains(tmp_path):
    configs = seeds(4)
    store = RunStore(tmp_path / "store")
    locked = config_hash(configs[2])
    store.folder(locked).mkdir(parents=True)
    with _exclusive(store.folder(locked) / ".lock", locked):  # another process trains it, as flock sees it
        outcome = execute(configs, store)
        table = result_table(configs, store)
    assert outcome.failures == [] and outcome.busy == [locked]
    statuses = dict(zip(table["run_id"], table["status"]))
    assert statuses.pop(locked) == "pending"  # never started here: not listed as running
    assert set(statuses.values()) == {"complete"}
    assert [row["run_id"] for row in store.list()].count(locked) == 0
    assert execute(configs, store).busy == []  # once it is free, a rerun trains it
    assert store.get(locked).status == "complete"


def test_two_sweeps_on_one_store_share_the_points(tmp_path):
    configs = seeds(6)
    reference = RunStore(tmp_path / "reference")
    execute(configs, reference)
    root = tmp_path / "shared"
    outcomes, errors = [], []

    def sweep():
        try:
            outcomes.append(execute(configs, RunStore(root), max_batch=2))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and all(outcome.failures == [] for outcome in outcomes)
    execute(configs, RunStore(root))  # trains what both found busy, if anything
    store = RunStore(root)
    assert [store.get(config_hash(c)).status for c in configs] == ["complete"] * 6
    assert store.check() == []
    compared = ["run_id", "train_loss", "test_accuracy", "val_accuracy"]
    pd.testing.assert_frame_equal(
        result_table(configs, store)[compared], result_table(configs, reference)[compared]
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by anyone) is gone for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killing_a_sweep_kills_its_workers_and_a_rerun_succeeds(tmp_path):
    raw = {
        **TINY_RAW,
        "train": {**TINY_RAW["train"], "steps": 1500, "checkpoint_every": 500, "log_every": 1000},
    }
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump({"kind": "feature_margin", "base": raw, "seeds": [0, 1]})
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "momentumlab",
            "sweep",
            "sweep.yaml",
            "--workers",
            "2",
            "--store",
            "store",
            "--out",
            "out",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store_runs = tmp_path / "store" / "runs"
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline:  # both workers hold a run (their pid in its lock)
        for lock in store_runs.glob("*/.lock") if store_runs.is_dir() else []:
            text = lock.read_text().strip()
            if text.isdigit():
                workers.add(int(text))
        time.sleep(0.1)
    assert len(workers) == 2 and parent.pid not in workers
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)
    store = RunStore(tmp_path / "store")
    statuses = {row["status"] for row in store.list()}
    assert "interrupted" in statuses and statuses <= {"interrupted", "complete"}  # none left "running"
    configs = [store.get(folder.name).config for folder in sorted(store_runs.iterdir())]
    outcome = execute(configs, store)
    assert (outcome.failures, outcome.busy) == ([], [])
    assert {store.get(config_hash(c)).status for c in configs} == {"complete"}
