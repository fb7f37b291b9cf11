"""The store: results on disk, each in a folder named by the content hash of what produced it.

    ROOT/index.sqlite                        one row per run (kind, status, seed, config, final row)
    ROOT/runs/<hash>/config.json             the full run config (its `kind` names the schema)
                     status.json             running | complete | diverged | failed (+ step, message)
                     metrics.csv             one row per logged step (complete and diverged runs)
                     weights.pt              final weights
                     environment.json        package versions, git revision, machine
                     checkpoint.pt           while a run is unfinished
    ROOT/measurements/<name>/<hash>/         a reproduction's measurement, keyed by its settings:
                     settings.json, <table>.parquet, environment.json, status.json

Every file is written atomically, and `status.json` is written last, so a folder whose status is not
complete/diverged is never read as a result. Asking for a complete config (or settings) returns the
stored result; an unfinished run resumes from its checkpoint. The store persists records only: which
trainer a config needs comes from the run-kind registry (:mod:`momentumlab.runs`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from momentumlab import atomic
from momentumlab.config import ConfigError, config_hash
from momentumlab.environment import environment
from momentumlab.runs import FINISHED, RunRecord, kind_of, parse_run_config
from momentumlab.train.checkpoint import checkpoint_position

RUN_ID_PREFIX = re.compile(r"[0-9a-f]{1,16}")
DEFAULT_ROOT_VARIABLE = "MOMENTUMLAB_STORE"
INDEX_COLUMNS = ("run_id", "kind", "status", "seed", "updated", "config", "final")
Tables = dict[str, pd.DataFrame]


class RunStoreError(RuntimeError):
    """A run that cannot be found, is ambiguous, or is busy in another process."""


def default_root() -> Path:
    return Path(os.environ.get(DEFAULT_ROOT_VARIABLE, "runs"))


class RunStore:
    """Runs and measurements on disk under `root`, found by their content hash (or a unique prefix).

    `progress` shows a progress bar while training.
    """

    def __init__(self, root: Path | str | None = None, progress: bool = False):
        self.root = Path(root) if root is not None else default_root()
        self.progress = progress
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        with self._index() as index:
            columns = [row[1] for row in index.execute("PRAGMA table_info(runs)")]
            if columns and tuple(columns) != INDEX_COLUMNS:  # an index of an older layout
                index.execute("DROP TABLE runs")
            index.execute(
                "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, kind TEXT, status TEXT, "
                "seed INTEGER, updated TEXT, config TEXT, final TEXT)"
            )
            stale = not columns or tuple(columns) != INDEX_COLUMNS
        if stale:
            self.reindex()

    @contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.root / "index.sqlite", timeout=30)
        try:
            with connection:
                yield connection
        finally:
            connection.close()

    def folder(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def _write_status(self, run: RunRecord, status: str, **details: Any) -> None:
        run.status = status
        written = {"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details}
        atomic.write_json(run.folder / "status.json", written)
        self._index_run(run, written["updated"])

    def _index_run(self, run: RunRecord, updated: str) -> None:
        final = run.final() if run.finished else {}  # a run that diverged at once has no row either
        with self._index() as index:
            index.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.config.kind,
                    run.status,
                    getattr(run.config, "seed", None),
                    updated,
                    run.config.model_dump_json(),
                    json.dumps(final) if final else None,
                ),
            )

    def reindex(self) -> None:
        """Rebuild the index from the run folders (those whose config and status can be read)."""
        for folder in sorted((self.root / "runs").iterdir()):
            try:
                run = self.get(folder.name)
            except (OSError, ValueError, ConfigError, RunStoreError):
                continue
            self._index_run(run, _status_file(folder).get("updated", ""))

    def resolve(self, prefix: str) -> str:
        """The full run id that `prefix` starts, or an error naming what was found."""
        if not RUN_ID_PREFIX.fullmatch(prefix):
            raise RunStoreError(f"run id {prefix!r} must be 1 to 16 hexadecimal digits")
        matches = sorted(p.name for p in (self.root / "runs").glob(f"{prefix}*") if p.is_dir())
        if not matches:
            raise RunStoreError(f"no run whose id starts with {prefix!r} in {self.root}")
        if len(matches) > 1:
            raise RunStoreError(f"run id prefix {prefix!r} is ambiguous: {', '.join(matches[:5])}")
        return matches[0]

    def get(self, run_id: str) -> RunRecord:
        """The stored run (its rows when it finished; its weights are read on demand)."""
        folder = self.folder(self.resolve(run_id))
        config = parse_run_config(json.loads((folder / "config.json").read_text()))
        status = _status_file(folder)
        run = RunRecord(
            config=config,
            status=status["status"],
            diverged_at_step=status.get("step"),
            seconds=status.get("seconds", 0.0),
            resumed_from_step=status.get("resumed_from_step", 0),
            message=status.get("message", ""),
            extra=status.get("extra", {}),
            run_id=folder.name,
            folder=folder,
        )
        if run.finished:
            run.rows = pd.read_csv(folder / "metrics.csv").to_dict("records")
        return run

    def list(self) -> list[dict[str, Any]]:
        """One dict per indexed run, newest first."""
        with self._index() as index:
            index.row_factory = sqlite3.Row
            rows = index.execute("SELECT * FROM runs ORDER BY updated DESC").fetchall()
        return [dict(row) for row in rows]

    def run(
        self, config: BaseModel, force: bool = False, on_step: Callable[[int], None] | None = None
    ) -> RunRecord:
        """The finished run of `config`: stored if it exists (unless `force`), else trained or resumed."""
        run_id = self._prepare(config)
        with _exclusive(self.folder(run_id) / ".lock", run_id):
            run = self.get(run_id)
            if run.finished and not force:
                return run
            checkpoint = run.folder / "checkpoint.pt"
            if force:
                checkpoint.unlink(missing_ok=True)
            self._start(run)
            try:
                record = kind_of(config).train(config, checkpoint, progress=self.progress, on_step=on_step)
            except BaseException as error:
                self._write_status(run, "failed", message=f"{type(error).__name__}: {error}")
                raise
            return self._finish(run, record)

    def run_many(
        self,
        configs: Sequence[BaseModel],
        on_step: Callable[[int], None] | None = None,
        max_batch: int = 64,
    ) -> list[RunRecord]:
        """The finished runs of `configs` (in order), training the missing ones together where they can.

        Pending runs whose kind has a batched engine are grouped by its batch key and by the position
        their checkpoints resume from, and each group (up to `max_batch` runs) trains in one
        computation; the others train one by one with :meth:`run`.
        """
        run_ids = [self._prepare(config) for config in configs]
        pending = {run_id: config for run_id, config in zip(run_ids, configs) if not self.is_finished(config)}
        for group in plan_batches(list(pending.values()), self, max_batch):
            if len(group) == 1:
                self.run(group[0], on_step=on_step)
            else:
                self._run_batch(group, on_step)
        return [self.get(run_id) for run_id in run_ids]

    def _run_batch(self, configs: list[BaseModel], on_step: Callable[[int], None] | None) -> None:
        run_ids = [config_hash(config) for config in configs]
        with ExitStack() as locks:
            for run_id in run_ids:
                locks.enter_context(_exclusive(self.folder(run_id) / ".lock", run_id))
            runs = [self.get(run_id) for run_id in run_ids]
            todo = [index for index, run in enumerate(runs) if not run.finished]  # others may have finished
            if not todo:
                return
            configs, runs = [configs[i] for i in todo], [runs[i] for i in todo]
            recorded = environment()  # one batch, one process: the same for every run
            for run in runs:
                self._start(run, recorded)
            checkpoints = [run.folder / "checkpoint.pt" for run in runs]
            train_batch = kind_of(configs[0]).train_batch
            try:
                records = train_batch(configs, checkpoints, progress=self.progress, on_step=on_step)
            except BaseException as error:
                for run in runs:
                    self._write_status(run, "failed", message=f"{type(error).__name__}: {error}")
                raise
            for run, record in zip(runs, records):
                self._finish(run, record)

    def is_finished(self, config: BaseModel) -> bool:
        """Whether the store holds a complete or diverged run of `config`."""
        folder = self.folder(config_hash(config))
        return (folder / "status.json").is_file() and _status_file(folder)["status"] in FINISHED

    def checkpoint_position(self, config: BaseModel) -> int:
        """The step or epoch an unfinished run of `config` would resume from."""
        return checkpoint_position(self.folder(config_hash(config)) / "checkpoint.pt")

    def _prepare(self, config: BaseModel) -> str:
        """Create the run's folder with its config; return its id."""
        run_id = config_hash(config)
        folder = self.folder(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "config.json").is_file():
            atomic.write_json(folder / "config.json", config.model_dump(mode="json"))
        return run_id

    def _start(self, run: RunRecord, recorded: dict[str, Any] | None = None) -> None:
        atomic.write_json(
            run.folder / "environment.json", recorded if recorded is not None else environment()
        )
        self._write_status(run, "running")

    def _finish(self, run: RunRecord, record: RunRecord) -> RunRecord:
        """Write a trained run's weights and metrics, then its final status (last: it marks completeness)."""
        atomic.save_torch(run.folder / "weights.pt", record.weights)
        metrics = pd.DataFrame(record.rows) if record.rows else pd.DataFrame(columns=["step", "train_loss"])
        atomic.write_text(run.folder / "metrics.csv", metrics.to_csv(index=False))
        record.run_id, record.folder = run.run_id, run.folder
        self._write_status(
            record,
            record.status,
            step=record.diverged_at_step,
            message=record.message,
            seconds=round(record.seconds, 3),
            resumed_from_step=record.resumed_from_step,
            extra=record.extra,
        )
        (run.folder / "checkpoint.pt").unlink(missing_ok=True)
        return self.get(run.run_id)

    def measurement(
        self, name: str, settings: BaseModel, measure: Callable[[], Tables], force: bool = False
    ) -> Tables:
        """The tables `measure()` returns for `settings` of reproduction `name`, stored under the settings'
        hash with the environment that computed them and reused on the next call (unless `force`)."""
        key = config_hash(settings)
        folder = self.root / "measurements" / name / key
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(folder / ".lock", f"{name}/{key}"):
            status = folder / "status.json"
            if status.is_file() and not force and json.loads(status.read_text())["status"] == "complete":
                names = json.loads(status.read_text())["tables"]
                return {table: pd.read_parquet(folder / f"{table}.parquet") for table in names}
            status.unlink(missing_ok=True)
            atomic.write_json(folder / "settings.json", settings.model_dump(mode="json"))
            atomic.write_json(folder / "environment.json", environment())
            started = time.perf_counter()
            tables = measure()
            for table, frame in tables.items():
                atomic.atomic_write(folder / f"{table}.parquet", lambda stream, f=frame: f.to_parquet(stream))
            atomic.write_json(
                status,
                {
                    "status": "complete",
                    "tables": list(tables),
                    "seconds": round(time.perf_counter() - started, 3),
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            return tables


def plan_batches(configs: Sequence[BaseModel], store: RunStore, max_batch: int) -> list[list[BaseModel]]:
    """Split configs into groups that train in one computation each (same batch key and resume position),
    at most `max_batch` runs per group; configs that no batched engine accepts form groups of one."""
    if max_batch < 1:
        raise ValueError(f"max_batch = {max_batch} must be ≥ 1")
    groups: dict[tuple[str, int], list[BaseModel]] = {}
    alone: list[list[BaseModel]] = []
    for config in configs:
        key = kind_of(config).key(config)
        if key is None:
            alone.append([config])
        else:
            groups.setdefault((key, store.checkpoint_position(config)), []).append(config)
    batches = [group[i : i + max_batch] for group in groups.values() for i in range(0, len(group), max_batch)]
    return batches + alone


def _status_file(folder: Path) -> dict[str, Any]:
    """A run folder's status.json (a folder without one is a run that has not started: running)."""
    path = folder / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {"status": "running"}


@contextmanager
def _exclusive(lock_path: Path, name: str) -> Iterator[None]:
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunStoreError(f"{name} is being computed by another process") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
