"""The `momentumlab` command end to end.

The main paths (run, ls, show, reproduce, config errors, SIGKILL and resume) each run in their own
Python process, as a user would; a few more error paths use typer's in-process CliRunner.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import TINY_RAW
from typer.testing import CliRunner

from momentumlab.cli import app
from momentumlab.config import config_hash
from momentumlab.experiments import REPRODUCTIONS
from momentumlab.runs import load_run_config
from momentumlab.store import RunStore

CLI = [sys.executable, "-c", "from momentumlab.cli import app; app()"]
# One thread per process: faster on a small machine, and the same in every process of a comparison.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("MOMENTUMLAB_STORE", None)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLAIM_IDS = {
    "gd-fits-train",
    "gdm-fits-train",
    "gd-large-margin-test",
    "gdm-large-margin-test",
    "gdm-small-margin-test",
    "gd-small-margin-test",
    "gdm-signal-reaches-inverse-beta",
    "gdm-signal-above-gd",
    "gd-memorizes-more",
}


def launch(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def four_g(value: float) -> str:
    return f"{value:.4g}"


RUN_OVERRIDES = ["optimizer.name=ema_momentum", "optimizer.momentum=0.9", "seed=2"]
REPRODUCE_OVERRIDES = [
    "data.n_train=400",
    "data.n_test=200",
    "train.steps=40",
    "train.log_every=10",
    "train.sharpness_every=20",
]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The CLI calls the tests below inspect, run side by side: starting Python + torch takes seconds.

    `run` trains the tiny config into ./store; `ls` and `show` start once it has finished. An invalid
    override, an unknown reproduction and a small `reproduce feature-margin` run alongside.
    """
    folder = tmp_path_factory.mktemp("cli")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY_RAW))
    set_args = [arg for override in REPRODUCE_OVERRIDES for arg in ("--set", override)]
    started = {
        "run": launch("run", "tiny.yaml", *RUN_OVERRIDES, "--store", "store", cwd=folder),
        "invalid": launch(
            "run",
            "tiny.yaml",
            "optimizer.name=ema_momentum",
            "optimizer.momentum=1.5",
            "--store",
            "invalid-store",
            cwd=folder,
        ),
        "unknown": launch(
            "reproduce", "no-such-thing", "--out", "unknown-out", "--store", "unknown-store", cwd=folder
        ),
        "reproduce": launch(
            "reproduce",
            "feature-margin",
            "--seeds",
            "0",
            *set_args,
            "--out",
            "out",
            "--store",
            "reproduce-store",
            cwd=folder,
        ),
    }
    results = {"run": finish(started.pop("run"))}
    started["ls"] = launch("ls", "--store", "store", cwd=folder)
    run_id = config_hash(load_run_config(folder / "tiny.yaml", RUN_OVERRIDES))
    started["show"] = launch("show", run_id[:6], "--store", "store", cwd=folder)
    results |= {name: finish(process) for name, process in started.items()}
    return folder, results


@pytest.fixture(scope="module")
def completed(session):
    folder, results = session
    return folder, results["run"], load_run_config(folder / "tiny.yaml", RUN_OVERRIDES)


def test_run_prints_the_run_id_status_and_final_measurements(completed):
    folder, result, config = completed
    assert result.returncode == 0, result.stderr
    run_id = config_hash(config)
    run_folder = folder / "store" / "runs" / run_id
    lines = result.stdout.splitlines()
    assert lines[0] == f"run {run_id} (feature_margin): complete ({Path('store') / 'runs' / run_id})"
    final = pd.read_csv(run_folder / "metrics.csv").iloc[-1]
    assert f"  {'step':28s} 60" in lines
    assert f"  {'train_loss':28s} {four_g(final['train_loss'])}" in lines
    assert f"  {'signal_max':28s} {four_g(final['signal_max'])}" in lines
    assert not any("signal_r0" in line for line in lines)  # per-filter columns are left to `show`
    assert json.loads((run_folder / "status.json").read_text())["status"] == "complete"
    assert json.loads((run_folder / "config.json").read_text()) == config.model_dump(mode="json")
    assert "Traceback" not in result.stderr


def test_rerun_returns_the_stored_run(completed, monkeypatch):
    folder, first, config = completed
    run_folder = folder / "store" / "runs" / config_hash(config)
    modified = (run_folder / "metrics.csv").stat().st_mtime_ns
    monkeypatch.chdir(folder)
    again = CliRunner().invoke(app, ["run", "tiny.yaml", *RUN_OVERRIDES, "--store", "store"])
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout
    assert (run_folder / "metrics.csv").stat().st_mtime_ns == modified  # not retrained


def test_run_reports_divergence(completed, monkeypatch):
    folder, _, _ = completed
    monkeypatch.chdir(folder)
    overrides = ["optimizer.lr=1e12", "model.init_std=1.0"]
    result = CliRunner().invoke(app, ["run", "tiny.yaml", *overrides, "--store", "diverged-store"])
    assert result.exit_code == 0, result.output
    run_id = config_hash(load_run_config(folder / "tiny.yaml", overrides))
    lines = result.stdout.splitlines()
    assert lines[0] == f"run {run_id} (feature_margin): diverged ({Path('diverged-store') / 'runs' / run_id})"
    assert lines[1] == "  non-finite loss at step 1"
    assert f"  {'step':28s} 0" in lines  # the last finite measurement


def test_ls_lists_the_run(session, completed):
    _, results = session
    _, _, config = completed
    result = results["ls"]
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["run", "kind", "status", "seed", "updated", "optimizer"]
    assert len(rows) == 1
    fields = rows[0].split()
    assert fields[:4] == [config_hash(config), "feature_margin", "complete", "2"]
    assert fields[5:] == ["name=ema_momentum", "lr=0.5", "momentum=0.9"]


def test_ls_on_an_empty_store(tmp_path):
    result = CliRunner().invoke(app, ["ls", "--store", str(tmp_path / "empty")])
    assert result.exit_code == 0
    assert result.stdout == "no runs\n"


def test_show_prints_config_status_environment_and_final_metrics(session, completed):
    folder, results = session
    _, _, config = completed
    run_id = config_hash(config)
    result = results["show"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"run {run_id} in {Path('store') / 'runs' / run_id}\n")
    status_line = next(line for line in out.splitlines() if line.startswith("status: "))
    assert json.loads(status_line.removeprefix("status: "))["status"] == "complete"
    config_text = out.split("config: ", 1)[1].split("\nenvironment: ", 1)[0]
    assert json.loads(config_text) == config.model_dump(mode="json")
    environment_text = out.split("\nenvironment: ", 1)[1].split("\nfinal:\n", 1)[0]
    assert json.loads(environment_text)["packages"]["momentumlab"] == metadata.version("momentumlab")
    final_lines = out.split("\nfinal:\n", 1)[1].splitlines()
    final = pd.read_csv(folder / "store" / "runs" / run_id / "metrics.csv").iloc[-1]
    assert len(final_lines) == len(final)  # every column, per-filter ones included
    assert final_lines[0] == f"  {'step':28s} 60"
    assert f"  {'signal_r3':28s} {four_g(final['signal_r3'])}" in final_lines
    assert f"  {'test_accuracy':28s} {four_g(final['test_accuracy'])}" in final_lines


def test_show_unknown_run_exits_1(completed):
    folder, _, config = completed
    unknown = "0" if config_hash(config)[0] != "0" else "1"
    result = CliRunner().invoke(app, ["show", unknown, "--store", str(folder / "store")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: no run whose id starts with '{unknown}'")
    result = CliRunner().invoke(app, ["show", "nothere", "--store", str(folder / "store")])
    assert result.exit_code == 1
    assert result.stderr == "error: run id 'nothere' must be 1 to 16 hexadecimal digits\n"


def test_invalid_override_exits_2_with_field_value_range_and_no_traceback(session):
    folder, results = session
    result = results["invalid"]
    assert result.returncode == 2
    assert (
        result.stderr == "error: invalid config:\n  optimizer.momentum = 1.5: Input should be less than 1\n"
    )
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (folder / "invalid-store").exists()  # nothing was created


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tiny.yaml", "optimizer.lr"], "error: override 'optimizer.lr' must look like key.path=value\n"),
        (["missing.yaml"], "error: config file 'missing.yaml' does not exist\n"),
        (
            ["tiny.yaml", "train.batch_size=500"],
            "train.batch_size = 500 exceeds data.n_train = 400; allowed: 1..400 or null (full batch)",
        ),
    ],
    ids=["malformed-override", "missing-file", "batch-too-large"],
)
def test_other_config_errors_exit_2(completed, monkeypatch, args, expected):
    folder, _, _ = completed
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(app, ["run", *args, "--store", "other-store"])
    assert result.exit_code == 2
    assert expected in result.stderr
    assert result.stdout == ""
    assert not (folder / "other-store").exists()


def test_unknown_reproduction_exits_2(session):
    folder, results = session
    result = results["unknown"]
    assert result.returncode == 2
    allowed = ", ".join(REPRODUCTIONS)
    assert result.stderr == f"error: unknown reproduction 'no-such-thing'; allowed: {allowed}\n"
    assert "feature-margin" in allowed and "heavy-ball-flow" in allowed
    assert "Traceback" not in result.stderr
    assert not (folder / "unknown-out").exists()


def test_reproduce_feature_margin_writes_report_claims_and_figures(session):
    folder, results = session
    result = results["reproduce"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = folder / "out"

    claims = json.loads((out / "feature-margin" / "claims.json").read_text())
    assert isinstance(claims, list) and {claim["id"] for claim in claims} == CLAIM_IDS
    for claim in claims:
        assert {"id", "statement", "measured", "threshold", "passed"} <= set(claim)
        assert isinstance(claim["statement"], str) and claim["statement"]
        compare = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}[
            claim["comparison"]
        ]
        measured = float(claim["measured"])
        assert claim["passed"] == (not math.isnan(measured) and compare(measured, float(claim["threshold"])))
    assert json.loads((out / "claims.json").read_text()) == {"feature-margin": claims}
    by_id = {claim["id"]: claim for claim in claims}
    assert by_id["gdm-signal-reaches-inverse-beta"]["threshold"] == pytest.approx(1 / 0.2)

    report = (out / "report.md").read_text()
    passed = sum(claim["passed"] for claim in claims)
    assert report.startswith("# momentumlab reproduction report\n")
    assert f"{passed}/9 claims reproduced." in report
    assert all(override in report for override in REPRODUCE_OVERRIDES)  # how to reproduce it
    assert "N = 400, test = 200" in report and "T = 40" in report
    assert "![training](feature-margin/training.png)" in report

    for name in ("training.png", "theory.png"):
        assert (out / "feature-margin" / name).read_bytes()[:8] == PNG_MAGIC
    final = pd.read_csv(out / "feature-margin" / "final.csv")
    assert sorted(final["optimizer"]) == ["GD", "GD+M"]
    assert final["step"].tolist() == [40, 40]
    assert by_id["gdm-fits-train"]["measured"] == final.query("optimizer == 'GD+M'")["train_accuracy"].item()
    settings = json.loads((out / "feature-margin" / "settings.json").read_text())
    assert (settings["seeds"], settings["data"]["n_train"], settings["train"]["steps"]) == ([0], 400, 40)

    stdout = result.stdout.splitlines()
    assert stdout[0] == "feature-margin:"
    assert sum(line.startswith(("  [PASS]", "  [FAIL]")) for line in stdout) == 9
    assert stdout[-1] == f"report: {Path('out') / 'report.md'}"

    runs = RunStore(folder / "reproduce-store").list()
    optimizers = sorted(
        (json.loads(row["config"])["optimizer"]["name"], row["seed"], row["status"]) for row in runs
    )
    assert optimizers == [("ema_momentum", 0, "complete"), ("gd", 0, "complete")]
    for run_id in (row["run_id"] for row in runs):
        assert f"`{run_id}`" in report


# Big enough to take a few seconds on one thread, with checkpoints every 50 steps.
KILLED_OVERRIDES = [
    "data.n_train=4000",
    "data.n_test=400",
    "train.steps=1000",
    "train.log_every=50",
    "train.checkpoint_every=50",
    "optimizer.name=ema_momentum",
    "optimizer.momentum=0.9",
]


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"kind": "feature_margin", "seed": 1}))
    args = ["run", "run.yaml", *KILLED_OVERRIDES, "--no-progress"]
    run_id = config_hash(load_run_config(tmp_path / "run.yaml", KILLED_OVERRIDES))
    run_folder = tmp_path / "killed" / "runs" / run_id

    def start(store: str, log: str) -> subprocess.Popen:
        with open(tmp_path / log, "w") as stream:
            return subprocess.Popen(
                [*CLI, *args, "--store", store],
                cwd=tmp_path,
                env=ENV,
                stdout=stream,
                stderr=subprocess.STDOUT,
            )

    # The uninterrupted reference trains in parallel, in a second store.
    reference = start("reference", "reference.log")
    victim = start("killed", "killed.log")
    try:
        check_kill_and_resume(tmp_path, args, run_folder, reference, victim)
    finally:
        for process in (victim, reference):  # only if a check failed early
            if process.poll() is None:
                process.kill()
                process.wait()


def check_kill_and_resume(tmp_path, args, run_folder, reference, victim):
    deadline = time.monotonic() + 60
    while not (run_folder / "checkpoint.pt").is_file():
        log = (tmp_path / "killed.log").read_text
        assert victim.poll() is None, f"the run ended before its first checkpoint: {log()}"
        assert time.monotonic() < deadline, "no checkpoint after 60 s"
        time.sleep(0.01)
    victim.kill()  # SIGKILL: no handler, no cleanup
    assert victim.wait(timeout=10) == -9

    status = json.loads((run_folder / "status.json").read_text())
    assert status["status"] == "running"
    # The live metrics file, when the kill came after its first block, holds whole checkpointed rows only.
    if (run_folder / "metrics.csv").exists():
        live_steps = pd.read_csv(run_folder / "metrics.csv")["step"].tolist()
        assert live_steps == list(range(0, live_steps[-1] + 1, 50)) and live_steps[-1] < 1000
    assert not RunStore(tmp_path / "killed").get(run_folder.name).finished

    resumed = subprocess.run(
        [*CLI, *args, "--store", "killed"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"run {run_folder.name} (feature_margin): complete")
    status = json.loads((run_folder / "status.json").read_text())
    assert status["status"] == "complete"
    assert status["resumed_from_step"] > 0 and status["resumed_from_step"] % 50 == 0
    assert not (run_folder / "checkpoint.pt").exists()

    assert reference.wait(timeout=120) == 0, (tmp_path / "reference.log").read_text()
    reference_folder = tmp_path / "reference" / "runs" / run_folder.name
    assert json.loads((reference_folder / "status.json").read_text())["resumed_from_step"] == 0
    killed_metrics = pd.read_csv(run_folder / "metrics.csv")
    assert killed_metrics["step"].tolist() == list(range(0, 1001, 50))
    pd.testing.assert_frame_equal(
        killed_metrics, pd.read_csv(reference_folder / "metrics.csv"), check_exact=True
    )
    assert (run_folder / "metrics.csv").read_bytes() == (reference_folder / "metrics.csv").read_bytes()
    killed_weights = torch.load(run_folder / "weights.pt", weights_only=True)["weight"]
    assert torch.equal(
        killed_weights, torch.load(reference_folder / "weights.pt", weights_only=True)["weight"]
    )


def test_data_fetch_rejects_an_unknown_dataset(tmp_path):
    result = CliRunner().invoke(app, ["data", "fetch", "mnist", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "dataset 'mnist' is not downloadable; allowed: cifar10, cifar100" in result.output
    assert not any(tmp_path.iterdir())


def test_data_fetch_reports_a_download_failure_without_traceback(tmp_path, monkeypatch):
    from momentumlab.data import fetch

    source = fetch.DATASETS["cifar10"]
    # An address on this machine where nothing listens: the download fails at once, no network is used.
    monkeypatch.setitem(
        fetch.DATASETS,
        "cifar10",
        fetch.ArchiveSource("http://127.0.0.1:9/x.tar.gz", source.md5, source.folder),
    )
    result = CliRunner().invoke(app, ["data", "fetch", "cifar10", "--dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert result.exception is None or isinstance(result.exception, SystemExit)
