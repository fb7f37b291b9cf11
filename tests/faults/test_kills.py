"""A run killed (SIGKILL, in a forked child) at each of its write points: reopening the store shows it as it
is (never complete before its status says so, the index agreeing with the folder), `check` finds the torn
temporary files that `repair` removes, and asking for the run again gives byte-identical metrics."""

from __future__ import annotations

import signal

import pytest
from faults.injection import kill_and_resume, record_write_events

# The tiny run (60 steps, checkpoints at 20 and 40) writes, in order:
EXPECTED_EVENTS = [
    "rename config.json",
    "rename environment.json",
    "rename status.json",
    "index running",
    "rename checkpoint.pt",
    "rename metrics.csv",  # the live metrics' first block creates the file
    "rename checkpoint.pt",
    "append metrics.csv",
    "rename weights.pt",
    "rename metrics.csv",
    "rename status.json",
    "index complete",
]
# The step each kill resumes from: the last checkpoint that reached the disk (a complete run: its own, 0).
RESUMED_FROM = [0, 0, 0, 0, 0, 20, 20, 40, 40, 40, 40, 0, 0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    events = record_write_events(root)
    (folder,) = (root / "runs").iterdir()
    return folder, events


def test_the_run_writes_at_the_expected_points(reference):
    _, events = reference
    assert [str(event) for event in events] == EXPECTED_EVENTS


@pytest.mark.parametrize("point", range(len(EXPECTED_EVENTS) + 1))
def test_a_kill_at_each_write_point_resumes_to_identical_metrics(tmp_path, reference, point):
    folder, events = reference
    outcome = kill_and_resume(tmp_path, point, events, folder)
    assert outcome.signal == signal.SIGKILL
    final_status_written = point > EXPECTED_EVENTS.index("rename status.json", 3)
    assert (outcome.status_after_kill == "complete") == final_status_written, outcome
    if not final_status_written:
        assert outcome.status_after_kill in ("absent", "pending", "interrupted"), outcome
    assert outcome.index_matches_folder, outcome  # a kill between status.json and the index row included
    torn_rename = point < len(EXPECTED_EVENTS) and EXPECTED_EVENTS[point].startswith("rename")
    assert outcome.temporary_files == int(torn_rename), outcome
    assert outcome.identical_resume, outcome
    assert outcome.resumed_from == RESUMED_FROM[point], outcome
    assert outcome.check_clean_after_repair, outcome
