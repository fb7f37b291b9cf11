"""Fault injection, counted: bad inputs through the command line, SIGKILLs at every write point of a run,
and corruptions of every stored file (issue 12).

Prints three lines of counts — inputs tried / clear errors (exit 2 naming the field, option or path) /
tracebacks; kills / identical resumes (byte-identical metrics.csv, equal weights); corruptions / detected
(never read as a result, and the rerun equal to the original) — then any case that fell short. The
scenarios are those of the test suite (`tests/faults/injection.py`); this script runs them all, for
several run configs, and exits 1 if any falls short.

    python benchmarks/faults.py
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1] / "tests")  # (not this folder: its faults.py is us)

from faults.injection import (  # the scenarios live beside the tests
    BAD_INPUTS,
    CORRUPTIONS,
    INDEX_DAMAGE,
    corrupt_and_reread,
    index_damage,
    kill_and_resume,
    record_write_events,
    tiny_run_config,
    try_bad_input,
)
from helpers import make_tiny_config, raise_at

from momentumlab.config import config_hash
from momentumlab.runs import parse_run_config
from momentumlab.store import RunStore

# Runs killed at each of their write points: the tiny feature–margin run with minibatches and momentum,
# the same at full batch with heavy ball, and a teacher–student run (checkpoints counted in epochs).
KILLED_CONFIGS = {
    "feature_margin sgd+ema": tiny_run_config(),
    "feature_margin gd+heavy_ball": make_tiny_config("optimizer.name=heavy_ball", "optimizer.momentum=0.5"),
    "teacher_student": parse_run_config(
        {
            "kind": "teacher_student",
            "data": {"dim": 8, "n_train": 40, "n_val": 20, "n_test": 20, "teacher_width": 4},
            "model": {"width": 8},
            "optimizer": {"name": "heavy_ball", "lr": 0.1, "momentum": 0.8},
            "train": {"epochs": 12, "batch_size": 10, "log_every_epochs": 2, "checkpoint_every_epochs": 4},
        }
    ),
}


def bad_inputs(workdir: Path) -> tuple[int, int, int, list[str]]:
    tried = clear = tracebacks = 0
    short = []
    for case in BAD_INPUTS:
        if case.needs_no_cuda and torch.cuda.is_available():
            continue
        outcome = try_bad_input(case, workdir)
        tried += 1
        tracebacks += outcome.traceback
        if outcome.exit_code == 2 and outcome.names_it and not outcome.traceback:
            clear += 1
        else:
            short.append(f"input {case.id}: exit {outcome.exit_code}: {outcome.output.strip()[:300]}")
    return tried, clear, tracebacks, short


def kills(workdir: Path) -> tuple[int, int, list[str]]:
    count = identical = 0
    short = []
    for name, config in KILLED_CONFIGS.items():
        folder = workdir / name.replace(" ", "-").replace("+", "-")
        events = record_write_events(folder / "reference", config)
        reference = folder / "reference" / "runs" / config_hash(config)
        for point in range(len(events) + 1):
            outcome = kill_and_resume(folder, point, events, reference, config)
            count += 1
            good = (
                outcome.identical_resume and outcome.index_matches_folder and outcome.check_clean_after_repair
            )
            identical += good
            if not good:
                short.append(f"kill {name} at {outcome.event}: {outcome}")
    return count, identical, short


def corruptions(workdir: Path) -> tuple[int, int, list[str]]:
    reference = workdir / "reference"
    RunStore(reference).run(tiny_run_config())
    count = detected = 0
    short = []
    for corruption in CORRUPTIONS:
        outcome = corrupt_and_reread(workdir, corruption, reference)
        count += 1
        good = outcome.status == "corrupt" and outcome.listed_as == "corrupt"
        good &= outcome.commands_without_traceback and outcome.retrained_identical
        detected += good
        if not good:
            short.append(f"corruption {corruption.id}: {outcome}")
    run_id = config_hash(tiny_run_config())
    for damage in INDEX_DAMAGE:
        rows = index_damage(workdir, reference, damage)
        count += 1
        good = [(row["run_id"], row["status"]) for row in rows] == [(run_id, "complete")]
        detected += good
        if not good:
            short.append(f"index {damage}: {rows}")
    for damage in ("truncated", "garbled", "no-checksum"):
        store = RunStore(workdir / f"checkpoint-{damage}")
        try:
            store.run(tiny_run_config(), on_step=raise_at(30))
        except RuntimeError:
            pass
        checkpoint = store.folder(run_id) / "checkpoint.pt"
        data = checkpoint.read_bytes()
        damaged = {"truncated": data[: len(data) // 2], "garbled": data[:100] + b"\0" * 16 + data[116:]}
        checkpoint.write_bytes(damaged.get(damage, data[:-44]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = store.run(tiny_run_config())
        count += 1
        same = (run.folder / "metrics.csv").read_bytes() == (
            reference / "runs" / run_id / "metrics.csv"
        ).read_bytes()
        good = same and run.resumed_from_step == 0 and any("is corrupt" in str(w.message) for w in caught)
        detected += good
        if not good:
            short.append(f"checkpoint {damage}: resumed from {run.resumed_from_step}, identical {same}")
    return count, detected, short


def main() -> int:
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        tried, clear, tracebacks, short_inputs = bad_inputs(workdir / "inputs")
        killed, identical, short_kills = kills(workdir / "kills")
        corrupted, detected, short_corruptions = corruptions(workdir / "corruptions")
    print(f"inputs tried {tried}, clear errors {clear}, tracebacks {tracebacks}")
    print(f"kills {killed}, identical resumes {identical}")
    print(f"corruptions {corrupted}, detected {detected}")
    print(f"({time.perf_counter() - started:.0f} s)")
    for line in short_inputs + short_kills + short_corruptions:
        print(line)
    return int(bool(short_inputs or short_kills or short_corruptions))


if __name__ == "__main__":
    sys.exit(main())
