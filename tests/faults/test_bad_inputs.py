"""Every bad input of issue 12 exits 2 with a message naming the field, option or path — never a traceback —
and an unexpected error still shows its traceback with a line asking for a bug report."""

from __future__ import annotations

import pytest
import torch
from faults.injection import BAD_INPUTS, try_bad_input
from typer.testing import CliRunner

from momentumlab import cli
from momentumlab.config import MAX_VALUE_CHARS


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
def test_bad_input_exits_2_naming_it_without_a_traceback(tmp_path, case):
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    outcome = try_bad_input(case, tmp_path)
    assert outcome.exit_code == 2, outcome.output
    assert outcome.output.startswith("error: "), outcome.output
    assert outcome.names_it, f"{case.names!r} not in: {outcome.output}"
    assert not outcome.traceback, outcome.output
    assert len(outcome.output) < 1000 + 4 * MAX_VALUE_CHARS  # an echoed value is cut short
    assert not (tmp_path / case.id / "store" / "runs").exists() or not any(
        (tmp_path / case.id / "store" / "runs").iterdir()
    )  # nothing half-registered


def test_a_read_only_index_names_the_file(tmp_path, monkeypatch):
    """As root, chmod cannot make a file read-only; SQLite's read-only mode gives the same error."""
    import sqlite3

    import momentumlab.store as store_module

    (tmp_path / "store").mkdir()
    connect = sqlite3.connect
    sqlite3.connect(tmp_path / "store" / "index.sqlite").close()
    monkeypatch.setattr(
        store_module.sqlite3, "connect", lambda path, **kw: connect(f"file:{path}?mode=ro", uri=True, **kw)
    )
    result = CliRunner().invoke(cli.app, ["ls", "--store", str(tmp_path / "store")])
    assert result.exit_code == 2
    assert f"index {tmp_path / 'store' / 'index.sqlite'} is read-only" in result.output
    assert "Traceback" not in result.output


def test_an_unexpected_error_shows_its_traceback_and_asks_for_a_bug_report(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli.RunStore, "list", broken)
    result = CliRunner().invoke(cli.app, ["ls", "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert "Traceback" in result.output and "ZeroDivisionError: a bug" in result.output
    assert result.output.rstrip().endswith(cli.BUG_REPORT)
