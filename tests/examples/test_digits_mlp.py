"""The README's user run kind (examples/digits_mlp), as a user's installed package: found through its entry
point, then `run`, `sweep` (two worker processes), `compare`, `ls` and `show` from the command line, and
the store's resumption and divergence handling for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import raise_at

from momentumlab.config import config_hash, load_raw
from momentumlab.runs import parse_run_config, registry
from momentumlab.store import RunStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits_mlp"
CLI = [sys.executable, "-c", "from momentumlab.cli import app; app()"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """An environment in which the example is installed: its module importable and its entry point (read
    from its pyproject.toml) in a dist-info folder on the path, as pip leaves them."""
    site = tmp_path_factory.mktemp("site")
    project = load_raw(EXAMPLE / "pyproject.toml")
    entry_points = project["project"]["entry-points"]["momentumlab.run_kinds"]
    info = site / "momentumlab_digits_mlp-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: momentumlab-digits-mlp\nVersion: 0.1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[momentumlab.run_kinds]\n{lines}")
    path = os.pathsep.join([str(site), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*CLI, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_run_sweep_compare_ls_and_show_work_for_the_example_kind(tmp_path, installed):
    run = cli(
        "run",
        str(EXAMPLE / "run.yaml"),
        "train.epochs=3",
        "--store",
        "s",
        "--no-progress",
        cwd=tmp_path,
        env=installed,
    )
    assert run.returncode == 0, run.stderr
    header, *final = run.stdout.splitlines()
    assert header.startswith("run ") and "(digits_mlp): complete" in header
    accuracy = dict(line.split() for line in final)
    assert accuracy["epoch"] == "3" and float(accuracy["test_accuracy"]) > 0.5

    sweep = yaml.safe_load((EXAMPLE / "sweep.yaml").read_text())
    sweep["base"]["train"]["epochs"] = 2
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    swept = cli(
        "sweep",
        "sweep.yaml",
        "--store",
        "s",
        "--workers",
        "2",
        "--no-progress",
        "--out",
        "out",
        cwd=tmp_path,
        env=installed,
    )
    assert swept.returncode == 0, swept.stderr
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(table) == 3 * 2 * 2 and set(table["status"]) == {"complete"}
    assert sorted(table["optimizer.momentum"].unique()) == [0.0, 0.9]
    assert set(table["seed"]) == {0, 1} and (table["epoch"] == 2).all()

    compared = cli("compare", "out", cwd=tmp_path, env=installed)
    assert compared.returncode == 0, compared.stderr
    comparison = pd.read_csv(tmp_path / "out" / "compare.csv").set_index("optimizer")
    assert sorted(comparison.index) == ["sgd", "sgd+momentum"]
    for family, momentum in (("sgd", 0.0), ("sgd+momentum", 0.9)):
        runs = table[table["optimizer.momentum"] == momentum]
        best = runs.groupby("optimizer.lr")["val_accuracy"].mean().idxmax()
        assert comparison.loc[family, "optimizer.lr"] == best  # chosen on validation
        expected = runs[runs["optimizer.lr"] == best]["test_accuracy"].mean()
        assert comparison.loc[family, "test_accuracy mean"] == pytest.approx(expected)

    listed = cli("ls", "--store", "s", cwd=tmp_path, env=installed)
    rows = listed.stdout.splitlines()[1:]
    assert len(rows) == 13 and all(row.split()[1:3] == ["digits_mlp", "complete"] for row in rows)
    shown = cli("show", table["run_id"][0][:8], "--store", "s", cwd=tmp_path, env=installed)
    assert shown.returncode == 0 and '"kind": "digits_mlp"' in shown.stdout


@pytest.fixture
def digits_kind(monkeypatch):
    """The example's kind registered in this process, as `import digits_mlp` in a user's script does."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "digits_mlp", raising=False)
    import digits_mlp

    yield digits_mlp
    monkeypatch.delitem(sys.modules, "digits_mlp")


def test_an_interrupted_example_run_resumes_to_the_uninterrupted_result(tmp_path, digits_kind):
    config = parse_run_config(
        {
            "kind": "digits_mlp",
            "optimizer": {"momentum": 0.9},
            "train": {"epochs": 4, "checkpoint_every_epochs": 2},
        }
    )
    store = RunStore(tmp_path / "store")
    with pytest.raises(RuntimeError, match="interrupted at step 3"):
        store.run(config, on_step=raise_at(3))
    assert store.get(config_hash(config)).status == "failed"
    epochs = []
    resumed = store.run(config, on_step=epochs.append)
    assert epochs == [2, 3] and resumed.resumed_from_step == 2
    reference = RunStore(tmp_path / "reference").run(config)
    pd.testing.assert_frame_equal(resumed.metrics(), reference.metrics(), check_exact=True)


def test_a_diverging_example_run_is_stored_as_diverged(tmp_path, digits_kind):
    config = parse_run_config({"kind": "digits_mlp", "optimizer": {"lr": 1e30}, "train": {"epochs": 3}})
    run = RunStore(tmp_path / "store").run(config)
    assert (run.status, run.diverged_at_step) == ("diverged", 0)
    assert run.message == "non-finite loss in epoch 0"
