"""Fault injection shared by the fault tests and `benchmarks/faults.py`: a process killed (SIGKILL) at each
write point of a run, each result file truncated or garbled, and the table of bad inputs of issue 12.

Every scenario is a function returning what happened, so the tests assert on it and the benchmark counts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from helpers import TINY_RAW, make_tiny_config
from typer.testing import CliRunner

from momentumlab import atomic
from momentumlab.cli import app
from momentumlab.config import config_hash
from momentumlab.store import RunStore

# Momentum and minibatches: a resumed run must restore the optimizer's buffer and the batch order.
RUN_OVERRIDES = ("optimizer.name=ema_momentum", "optimizer.momentum=0.9", "train.batch_size=50")


def tiny_run_config() -> Any:
    return make_tiny_config(*RUN_OVERRIDES)


# --- kill -9 at each write point ---------------------------------------------------------------------


@dataclass(frozen=True)
class WriteEvent:
    """One write of the store: an atomic rename, an append to the live metrics, or an index row."""

    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind} {self.target}"


@contextmanager
def write_events(on_event: Callable[[WriteEvent, Callable[[], None]], None]) -> Iterator[None]:
    """Call `on_event(event, write)` at each store write instead of `write()` (which does it)."""
    import momentumlab.store as store_module

    real_replace, real_append, real_index = os.replace, atomic.append_lines, store_module.RunStore._index_run

    def replace(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if not str(source).endswith(atomic.TEMPORARY_SUFFIX):
            return real_replace(source, target, *args, **kwargs)
        on_event(
            WriteEvent("rename", Path(target).name), lambda: real_replace(source, target, *args, **kwargs)
        )
        return None

    def append(path: Path, text: str) -> None:
        on_event(WriteEvent("append", path.name), lambda: real_append(path, text))

    def index(self: RunStore, run: Any, updated: str) -> None:
        on_event(WriteEvent("index", run.status), lambda: real_index(self, run, updated))

    os.replace, atomic.append_lines, store_module.RunStore._index_run = replace, append, index
    try:
        yield
    finally:
        os.replace, atomic.append_lines, store_module.RunStore._index_run = (
            real_replace,
            real_append,
            real_index,
        )


def record_write_events(root: Path, config: Any = None) -> list[WriteEvent]:
    """The write events of one uninterrupted run of `config` (default: the tiny one) into a store at
    `root`."""
    config = config or tiny_run_config()
    events: list[WriteEvent] = []

    def note(event: WriteEvent, write: Callable[[], None]) -> None:
        events.append(event)
        write()

    store = RunStore(root)
    with write_events(note):
        store.run(config)
    return events


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def train_and_kill_at(root: Path, point: int, config: Any) -> None:
    """In this process: train the tiny run into `root` and SIGKILL this process at write event `point`
    (0-based) — between a rename's complete temporary file and the rename, halfway through an append's
    line, before an index row; `point` past the last event kills after the run finished."""
    count = 0

    def maybe_kill(event: WriteEvent, write: Callable[[], None]) -> None:
        nonlocal count
        if count == point:
            if event.kind == "append":  # half a line reaches the file, as a torn write would leave it
                path = root / "runs" / config_hash(config) / event.target
                with open(path, "a") as stream:
                    stream.write("0.5,0.25,")
                    stream.flush()
            _kill_self()
        count += 1
        write()

    store = RunStore(root)
    with write_events(maybe_kill):
        store.run(config)
    _kill_self()


def in_child(function: Callable[[], None], timeout: float = 120) -> int:
    """Run `function` in a forked child; return the signal that ended it (0: it returned)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            function()
        except BaseException:  # noqa: BLE001 - reported through the exit code
            traceback.print_exc()
            code = 1
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"child {pid} ran past {timeout} s")
        time.sleep(0.01)


@dataclass
class KillOutcome:
    """What a kill left and what reopening the store and asking for the run again gave."""

    point: int
    event: str
    signal: int
    status_after_kill: str
    index_matches_folder: bool
    temporary_files: int
    identical_resume: bool
    resumed_from: int
    check_clean_after_repair: bool


def kill_and_resume(
    workdir: Path, point: int, events: list[WriteEvent], reference: Path, config: Any = None
) -> KillOutcome:
    """Kill a run of `config` (default: the tiny one) at write event `point`, reopen the store, resume,
    and compare with `reference` (the folder of an uninterrupted run of the same config)."""
    config = config or tiny_run_config()
    root = workdir / f"kill-{point}"
    signal_number = in_child(lambda: train_and_kill_at(root, point, config))
    run_id = config_hash(config)
    store = RunStore(root)  # reopening reconciles the index with the folder
    folder_status = store.get(run_id).status if store.folder(run_id).is_dir() else "absent"
    indexed = {row["run_id"]: row["status"] for row in store.list()}
    index_matches = indexed.get(run_id, "pending" if folder_status in ("pending", "absent") else None) == (
        folder_status if folder_status != "absent" else "pending"
    )
    temporary = len(store._temporary_files())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn checkpoint is discarded with a warning
        resumed = store.run(config)
    identical = (resumed.folder / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    identical &= _same_weights(resumed.folder, reference)
    store.repair()
    return KillOutcome(
        point=point,
        event=str(events[point]) if point < len(events) else "after the run",
        signal=signal_number,
        status_after_kill=folder_status,
        index_matches_folder=index_matches,
        temporary_files=temporary,
        identical_resume=identical and resumed.status == "complete",
        resumed_from=resumed.resumed_from_step,
        check_clean_after_repair=RunStore(root, reconcile=False).check() == [],
    )


def _same_weights(folder: Path, reference: Path) -> bool:
    weights, expected = (torch.load(f / "weights.pt", weights_only=True) for f in (folder, reference))
    return weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)


# --- corrupted files ---------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = b"\x00\xff#garb!"
    path.write_bytes(bytes(data))


def _drop_last_row(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # a valid CSV that ends early


def _another_config(path: Path) -> None:
    other = make_tiny_config(*RUN_OVERRIDES, "seed=7")
    path.write_text(json.dumps(other.model_dump(mode="json")))  # valid, but not this folder's config


def _delete(path: Path) -> None:
    path.unlink()


def _unknown_status(path: Path) -> None:
    path.write_text(json.dumps({"status": "finished-ish"}))


def _complete_without_files(path: Path) -> None:
    for name in ("metrics.csv", "weights.pt"):
        (path.parent / name).unlink()


@dataclass(frozen=True)
class Corruption:
    """A change to one file of a finished run; `detected` means the run is then not read as a result."""

    file: str
    name: str
    apply: Callable[[Path], None]

    @property
    def id(self) -> str:
        return f"{self.file}-{self.name}"


CORRUPTIONS = [
    Corruption("metrics.csv", "truncated", _truncate),
    Corruption("metrics.csv", "last-row-dropped", _drop_last_row),
    Corruption("metrics.csv", "garbled", _garble),
    Corruption("metrics.csv", "deleted", _delete),
    Corruption("weights.pt", "truncated", _truncate),
    Corruption("weights.pt", "garbled", _garble),
    Corruption("weights.pt", "deleted", _delete),
    Corruption("status.json", "truncated", _truncate),
    Corruption("status.json", "garbled", _garble),
    Corruption("status.json", "unknown-status", _unknown_status),
    Corruption("status.json", "files-gone", _complete_without_files),
    Corruption("config.json", "truncated", _truncate),
    Corruption("config.json", "garbled", _garble),
    Corruption("config.json", "another-valid-config", _another_config),
    Corruption("config.json", "deleted", _delete),
]


@dataclass
class CorruptionOutcome:
    corruption: str
    status: str
    reason: str
    listed_as: str
    commands_without_traceback: bool
    retrained_identical: bool


def corrupt_and_reread(workdir: Path, corruption: Corruption, reference_root: Path) -> CorruptionOutcome:
    """Copy the reference store, corrupt one file of its run, then read it (get, ls, show) and ask for it
    again (run): the corrupted run must not be read as a result, and the rerun must equal the original."""
    root = workdir / corruption.id
    shutil.copytree(reference_root, root)
    run_id = config_hash(tiny_run_config())
    corruption.apply(root / "runs" / run_id / corruption.file)
    store = RunStore(root)
    read = store.get(run_id)
    listed = {row["run_id"]: row["status"] for row in store.list()}.get(run_id, "(not listed)")
    clean = True
    for command in (["ls"], ["show", run_id], ["store", "check"]):
        result = CliRunner().invoke(app, [*command, "--store", str(root)])
        clean &= "Traceback" not in result.output and result.exit_code in (0, 1)
    rerun = store.run(tiny_run_config())
    reference = reference_root / "runs" / run_id
    identical = (rerun.folder / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    identical &= _same_weights(rerun.folder, reference)
    return CorruptionOutcome(
        corruption=corruption.id,
        status=read.status,
        reason=read.message,
        listed_as=listed,
        commands_without_traceback=clean,
        retrained_identical=identical and rerun.status == "complete",
    )


def index_damage(workdir: Path, reference_root: Path, damage: str) -> list[dict[str, Any]]:
    """The index rows `ls` sees after the index was deleted, garbled or emptied."""
    root = workdir / f"index-{damage}"
    shutil.copytree(reference_root, root)
    index = root / "index.sqlite"
    if damage == "deleted":
        index.unlink()
    elif damage == "garbled":
        index.write_bytes(b"this is not an SQLite database\n" * 40)
    elif damage == "truncated":
        _truncate(index)
    elif damage == "stale-running":  # a kill between status.json and the index row
        with sqlite3.connect(index) as connection:
            connection.execute("UPDATE runs SET status = 'running'")
        connection.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RunStore(root).list()


INDEX_DAMAGE = ("deleted", "garbled", "truncated", "stale-running")


# --- bad inputs --------------------------------------------------------------------------------------

ALIAS_BOMB = "\n".join(
    [
        "kind: feature_margin",
        "a: &a [x, x, x, x, x, x, x, x, x]",
        *(
            f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]"
            for previous, name in zip("abcdefg", "bcdefgh")
        ),
        "optimizer: {lr: *h}",
    ]
)
FLOW_ALIAS_BOMB = (
    "{"
    + ", ".join(  # the same bomb on one line, as an override's value
        ["a: &a [x, x, x, x, x, x, x, x, x]"]
        + [
            f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]"
            for previous, name in zip("abcdefg", "bcdefgh")
        ]
    )
    + "}"
)
HUGE_GRID = ("optimizer.lr", "model.init_std", "data.noise_std", "train.l2")  # 1000 values each: 10¹² points
# 9⁴ = 6561 values: under the limit, and echoed cut short
SMALL_ALIASES = """kind: feature_margin
a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
optimizer: {lr: *d}
"""


def _sweep(grid: dict[str, Any] | None = None, seeds: Any = (0,), base: dict[str, Any] | None = None) -> str:
    spec = {"kind": "feature_margin", "base": base or TINY_RAW, "grid": grid or {}, "seeds": list(seeds)}
    return yaml.safe_dump(spec)


def _results(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_csv(index=False)


DIVERGED_ROWS = [
    {"run_id": f"r{i}", "status": "diverged", "seed": i, "optimizer.lr": lr, "val_accuracy": None}
    for i, lr in enumerate((0.1, 1.0))
]
NO_VALIDATION_ROWS = [
    {
        "run_id": f"r{i}",
        "status": "complete",
        "seed": 0,
        "optimizer.lr": lr,
        "train_loss": 0.1,
        "val_accuracy": None,
    }
    for i, lr in enumerate((0.1, 1.0))
]
CUSTOM_METRIC_ROWS = [
    {"run_id": f"r{i}", "status": "complete", "seed": 0, "optimizer.lr": lr, "val_margin": 0.1 * i}
    for i, lr in enumerate((0.1, 1.0))
]


@dataclass(frozen=True)
class BadInput:
    """One bad input: the command line (``{}`` is the work folder), the files it needs, and what its
    error message must name (a field, an option or a path)."""

    id: str
    args: tuple[str, ...]
    names: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    needs_no_cuda: bool = False


TINY = yaml.safe_dump(TINY_RAW)
RUN = ("run", "{}/tiny.yaml", "--store", "{}/store", "--no-progress")

BAD_INPUTS = [
    BadInput(
        "non-utf8-config",
        ("run", "{}/latin1.yaml", "--store", "{}/store"),
        "latin1.yaml",
        {"latin1.yaml": "kind: feature_margin\nnote: caf\xe9\n".encode("latin-1")},
    ),
    BadInput(
        "binary-config",
        ("run", "{}/binary.yaml", "--store", "{}/store"),
        "binary.yaml",
        {"binary.yaml": b"\xff\xfe\x00\x01" * 64},
    ),
    BadInput(
        "empty-config", ("run", "{}/empty.yaml", "--store", "{}/store"), "empty.yaml", {"empty.yaml": ""}
    ),
    BadInput(
        "comment-only-config", ("run", "{}/c.yaml", "--store", "{}/store"), "c.yaml", {"c.yaml": "# x\n"}
    ),
    BadInput("empty-toml", ("run", "{}/empty.toml", "--store", "{}/store"), "empty.toml", {"empty.toml": ""}),
    BadInput("seed-1e20", (*RUN, "seed=100000000000000000000"), "seed", {"tiny.yaml": TINY}),
    BadInput("seed-1e20-float", (*RUN, "seed=1.0e+20"), "seed", {"tiny.yaml": TINY}),
    BadInput("seed-2**63", (*RUN, f"seed={2**63}"), "seed", {"tiny.yaml": TINY}),
    BadInput("seed-negative", (*RUN, "seed=-1"), "seed", {"tiny.yaml": TINY}),
    BadInput("seed-true", (*RUN, "seed=true"), "seed", {"tiny.yaml": TINY}),
    BadInput("seed-string", (*RUN, "seed=1e20"), "seed", {"tiny.yaml": TINY}),
    BadInput("data-seed-1e20", (*RUN, "data.seed=100000000000000000000"), "data.seed", {"tiny.yaml": TINY}),
    BadInput("steps-1e21", (*RUN, "train.steps=1000000000000000000000"), "train.steps", {"tiny.yaml": TINY}),
    BadInput("steps-true", (*RUN, "train.steps=true"), "train.steps", {"tiny.yaml": TINY}),
    BadInput("log-every-false", (*RUN, "train.log_every=false"), "train.log_every", {"tiny.yaml": TINY}),
    BadInput("lr-1e308", (*RUN, "optimizer.lr=1.0e+308"), "optimizer.lr", {"tiny.yaml": TINY}),
    BadInput("lr-inf", (*RUN, "optimizer.lr=.inf"), "optimizer.lr", {"tiny.yaml": TINY}),
    BadInput("lr-nan", (*RUN, "optimizer.lr=.nan"), "optimizer.lr", {"tiny.yaml": TINY}),
    BadInput("lr-true", (*RUN, "optimizer.lr=true"), "optimizer.lr", {"tiny.yaml": TINY}),
    BadInput("momentum-nan", (*RUN, "optimizer.momentum=.nan"), "optimizer.momentum", {"tiny.yaml": TINY}),
    BadInput("init-std-inf", (*RUN, "model.init_std=.inf"), "model.init_std", {"tiny.yaml": TINY}),
    BadInput("beta-margin-inf", (*RUN, "data.beta_margin=.inf"), "data.beta_margin", {"tiny.yaml": TINY}),
    BadInput("alpha-inf", (*RUN, "data.alpha=.inf"), "data.alpha", {"tiny.yaml": TINY}),
    BadInput("noise-std-inf", (*RUN, "data.noise_std=.inf"), "data.noise_std", {"tiny.yaml": TINY}),
    BadInput("l2-inf", (*RUN, "train.l2=.inf"), "train.l2", {"tiny.yaml": TINY}),
    BadInput(
        "penalty-nan", (*RUN, "train.gradient_penalty=.nan"), "train.gradient_penalty", {"tiny.yaml": TINY}
    ),
    BadInput(
        "n-train-1e10", (*RUN, "data.n_train=10000000000"), "data.n_train = 10000000000", {"tiny.yaml": TINY}
    ),
    BadInput("width-1e9", (*RUN, "model.width=1000000000"), "model.width = 1000000000", {"tiny.yaml": TINY}),
    BadInput("dim-1e9", (*RUN, "data.dim=1000000000"), "data.dim = 1000000000", {"tiny.yaml": TINY}),
    BadInput(
        "student-width-1e9",
        ("run", "{}/student.yaml", "--store", "{}/store"),
        "model.width",
        {"student.yaml": "kind: teacher_student\nmodel: {width: 1000000000}\n"},
    ),
    BadInput(
        "device-cuda", (*RUN, "train.device=cuda"), "train.device", {"tiny.yaml": TINY}, needs_no_cuda=True
    ),
    BadInput(
        "device-cuda-7",
        (*RUN, "train.device=cuda:7"),
        "train.device",
        {"tiny.yaml": TINY},
        needs_no_cuda=True,
    ),
    BadInput(
        "alias-bomb-config",
        ("run", "{}/bomb.yaml", "--store", "{}/store"),
        "bomb.yaml",
        {"bomb.yaml": ALIAS_BOMB},
    ),
    BadInput(
        "aliases-echoed-short",
        ("run", "{}/aliases.yaml", "--store", "{}/store"),
        "optimizer.lr",
        {"aliases.yaml": SMALL_ALIASES},
    ),
    BadInput(
        "alias-bomb-override", (*RUN, f"optimizer.lr={FLOW_ALIAS_BOMB}"), "optimizer.lr", {"tiny.yaml": TINY}
    ),
    BadInput(
        "store-is-a-file",
        ("run", "{}/tiny.yaml", "--store", "{}/afile"),
        "afile",
        {"tiny.yaml": TINY, "afile": "not a folder"},
    ),
    BadInput(
        "store-under-a-file",
        ("run", "{}/tiny.yaml", "--store", "{}/afile/store"),
        "afile",
        {"tiny.yaml": TINY, "afile": "not a folder"},
    ),
    BadInput("ls-store-is-a-file", ("ls", "--store", "{}/afile"), "afile", {"afile": "x"}),
    BadInput("show-store-is-a-file", ("show", "abc", "--store", "{}/afile"), "afile", {"afile": "x"}),
    BadInput("check-store-is-a-file", ("store", "check", "--store", "{}/afile"), "afile", {"afile": "x"}),
    BadInput(
        "sweep-out-is-a-file",
        ("sweep", "{}/sweep.yaml", "--out", "{}/afile", "--store", "{}/store"),
        "afile",
        {"sweep.yaml": _sweep(), "afile": "x"},
    ),
    BadInput(
        "sweep-out-under-a-file",
        ("sweep", "{}/sweep.yaml", "--out", "{}/afile/out", "--store", "{}/s"),
        "afile",
        {"sweep.yaml": _sweep(), "afile": "x"},
    ),
    BadInput(
        "reproduce-out-is-a-file",
        ("reproduce", "feature-margin", "--out", "{}/afile", "--store", "{}/s"),
        "afile",
        {"afile": "x"},
    ),
    BadInput(
        "fetch-dir-is-a-file", ("data", "fetch", "cifar10", "--dir", "{}/afile"), "afile", {"afile": "x"}
    ),
    BadInput(
        "sweep-grid-1e12",
        ("sweep", "{}/huge.yaml", "--store", "{}/store"),
        "1000000000000 points",
        {"huge.yaml": _sweep({field: [0.001 * i for i in range(1, 1001)] for field in HUGE_GRID})},
    ),
    BadInput(
        "sweep-seed-true",
        ("sweep", "{}/s.yaml", "--store", "{}/store"),
        "seeds",
        {"s.yaml": _sweep(seeds=[True])},
    ),
    BadInput(
        "sweep-seed-1e20",
        ("sweep", "{}/s.yaml", "--store", "{}/store"),
        "seeds",
        {"s.yaml": _sweep(seeds=[10**20])},
    ),
    BadInput(
        "sweep-point-lr-inf",
        ("sweep", "{}/s.yaml", "--store", "{}/store"),
        "optimizer.lr",
        {"s.yaml": _sweep({"optimizer.lr": [0.1, float("inf")]})},
    ),
    BadInput(
        "sweep-point-device",
        ("sweep", "{}/s.yaml", "--store", "{}/store"),
        "train.device",
        {"s.yaml": _sweep({"train.device": ["cpu", "cuda"]})},
        needs_no_cuda=True,
    ),
    BadInput("sweep-empty-file", ("sweep", "{}/s.yaml", "--store", "{}/store"), "s.yaml", {"s.yaml": ""}),
    BadInput(
        "sweep-alias-bomb",
        ("sweep", "{}/s.yaml", "--store", "{}/store"),
        "s.yaml",
        {"s.yaml": ALIAS_BOMB.replace("kind: feature_margin", "kind: feature_margin\nbase: {}")},
    ),
    BadInput(
        "ray-unreachable",
        (
            "sweep",
            "{}/s.yaml",
            "--store",
            "{}/store",
            "--backend",
            "ray",
            "--address",
            "127.0.0.1:1",
            "--no-progress",
        ),
        "--address",
        {"s.yaml": _sweep()},
    ),
    BadInput("workers-0", ("sweep", "{}/s.yaml", "--workers", "0"), "--workers", {"s.yaml": _sweep()}),
    BadInput("max-batch-0", ("sweep", "{}/s.yaml", "--max-batch", "0"), "--max-batch", {"s.yaml": _sweep()}),
    BadInput(
        "reproduce-seeds-huge",
        ("reproduce", "feature-margin", "--seeds", str(10**20), "--out", "{}/o"),
        "--seeds",
    ),
    BadInput("compare-empty-csv", ("compare", "{}/r/results.csv"), "results.csv", {"r/results.csv": ""}),
    BadInput(
        "compare-garbage-csv",
        ("compare", "{}/r/results.csv"),
        "results.csv",
        {"r/results.csv": b"\x00\xff\x89PNG garbage\x00" * 50},
    ),
    BadInput(
        "compare-header-only",
        ("compare", "{}/r/results.csv"),
        "results.csv",
        {"r/results.csv": "run_id,status,val_accuracy\n"},
    ),
    BadInput(
        "compare-not-a-sweep-table",
        ("compare", "{}/r/results.csv"),
        "results.csv",
        {"r/results.csv": "a,b\n1,2\n"},
    ),
    BadInput(
        "compare-empty-parquet",
        ("compare", "{}/r/results.parquet"),
        "results.parquet",
        {"r/results.parquet": b""},
    ),
    BadInput(
        "compare-garbage-parquet",
        ("compare", "{}/r/results.parquet"),
        "results.parquet",
        {"r/results.parquet": b"PAR1 this is not parquet PAR1"},
    ),
    BadInput(
        "compare-no-validation",
        ("compare", "{}/r"),
        "val_accuracy",
        {"r/results.csv": _results(NO_VALIDATION_ROWS)},
    ),
    BadInput(
        "compare-all-diverged", ("compare", "{}/r"), "diverged", {"r/results.csv": _results(DIVERGED_ROWS)}
    ),
    BadInput(
        "compare-unknown-direction",
        ("compare", "{}/r", "--metric", "val_margin"),
        "--maximize",
        {"r/results.csv": _results(CUSTOM_METRIC_ROWS)},
    ),
    BadInput(
        "compare-by-unknown",
        ("compare", "{}/r", "--metric", "val_margin", "--maximize", "--by", "data.nope"),
        "data.nope",
        {"r/results.csv": _results(CUSTOM_METRIC_ROWS)},
    ),
    BadInput("compare-missing", ("compare", "{}/nowhere"), "nowhere"),
]


@dataclass
class BadInputOutcome:
    id: str
    exit_code: int
    output: str
    names_it: bool
    traceback: bool


def try_bad_input(case: BadInput, workdir: Path) -> BadInputOutcome:
    """Run one bad input through the CLI (in this process) in a fresh folder under `workdir`."""
    folder = workdir / case.id
    folder.mkdir(parents=True)
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    args = [arg.replace("{}", str(folder)) for arg in case.args]
    result = CliRunner().invoke(app, args)
    output = result.output + (
        "".join(traceback.format_exception(result.exception)) if _escaped(result) else ""
    )
    return BadInputOutcome(
        id=case.id,
        exit_code=result.exit_code,
        output=output,
        names_it=case.names in output,
        traceback="Traceback" in output,
    )


def _escaped(result: Any) -> bool:
    """Whether an exception left the command (CliRunner keeps it rather than printing it)."""
    return result.exception is not None and not isinstance(result.exception, SystemExit)
