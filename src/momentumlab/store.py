"""The store: results on disk, each in a folder named by the content hash of what produced it.

    ROOT/index.sqlite                        one row per run (kind, status, seed, config, final row);
                                             derived from the folders, rebuilt when missing or broken
    ROOT/runs/<hash>/config.json             the full run config (its `kind` names the schema)
                     status.json             running | complete | diverged | failed | corrupt (+ step,
                                             message, the SHA-256 of metrics.csv and weights.pt)
                     metrics.csv             one row per logged step: appended while the run trains (one
                                             block per checkpoint), rewritten whole when it ends
                     weights.pt              final weights
                     environment.json        package versions, git revision, machine
                     checkpoint.pt           while a run is unfinished (with its own checksum)
                     .lock                   held (flock) by the process training the run; holds its pid
    ROOT/measurements/<name>/<hash>/         a reproduction's measurement, keyed by its settings:
                     settings.json, <table>.parquet, environment.json, status.json (+ checksums)

Every file is written atomically, and `status.json` is written last. A run is verified whenever it is
read: its config hashes to its folder's name, its metrics end at the run's last step (or, diverged, at
or before the divergence) and both files match the checksums in its status. A run that fails is
`corrupt` (with the reason): never reported as a result, retrained (or resumed from a verified
checkpoint) when asked for. Folders without a status are `pending` (never started); a `running` status
whose process is gone reads as `interrupted` (it resumes). Opening the store makes the index agree with
the folders. The store persists records only: which trainer a config needs comes from the run-kind
registry (:mod:`momentumlab.runs`).
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from momentumlab import atomic
from momentumlab.config import PathError, config_hash, content_hash
from momentumlab.environment import environment, source_fingerprint
from momentumlab.runs import RunRecord, check_runnable, kind_of, parse_run_config
from momentumlab.train.checkpoint import checkpoint_position

RUN_ID_PREFIX = re.compile(r"[0-9a-f]{1,16}")
DEFAULT_ROOT_VARIABLE = "MOMENTUMLAB_STORE"
INDEX_COLUMNS = ("run_id", "kind", "status", "seed", "updated", "config", "final", "reason", "stamp")
CHECKSUMMED = ("metrics.csv", "weights.pt")  # the result files whose SHA-256 the status keeps
STORED_STATUSES = ("running", "complete", "diverged", "failed", "corrupt")
Tables = dict[str, pd.DataFrame]


class RunStoreError(RuntimeError):
    """A run that cannot be found or is ambiguous."""


class RunBusyError(RunStoreError):
    """A run (or measurement) that another process is computing right now."""


def default_root() -> Path:
    return Path(os.environ.get(DEFAULT_ROOT_VARIABLE, "runs"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunStore:
    """Runs and measurements on disk under `root`, found by their content hash (or a unique prefix).

    `progress` shows a progress bar while training. Opening reconciles the index with the run folders
    (`reconcile=False` leaves it as found, for `store check`).
    """

    def __init__(self, root: Path | str | None = None, progress: bool = False, reconcile: bool = True):
        self.root = Path(root) if root is not None else default_root()
        self.progress = progress
        self.index_problem = ""  # what was wrong with the index when it was opened (rebuilt since)
        self._checksums: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime) → SHA-256
        usable_folder(self.root, "store")
        usable_folder(self.root / "runs", "store")
        self._open_index()
        if reconcile:
            self.reconcile()

    # --- the index ------------------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / "index.sqlite"

    @contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = sqlite3.connect(self.index_path, timeout=30)
            try:
                with connection:
                    yield connection
            finally:
                connection.close()
        except sqlite3.OperationalError as error:
            text = str(error)
            if "readonly" in text or "read-only" in text:
                raise PathError(
                    f"index {self.index_path} is read-only ({text}); allowed: a writable file (or delete "
                    "it: it is rebuilt from the run folders)"
                ) from None
            if "disk is full" in text or "disk I/O" in text:
                raise atomic.WriteError(errno.ENOSPC, f"cannot write {self.index_path}: {text}") from None
            raise

    def _open_index(self) -> None:
        try:
            self._create_table()
        except sqlite3.DatabaseError as error:  # not a database, or a damaged one
            self.index_problem = f"index {self.index_path} was broken ({error})"
            warnings.warn(f"{self.index_problem}: rebuilding it from the run folders", stacklevel=3)
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(f"{self.index_path}{suffix}").unlink(missing_ok=True)
            self._create_table()

    def _create_table(self) -> None:
        with self._index() as index:
            index.execute("BEGIN IMMEDIATE")  # fails at once on a read-only or broken index
            columns = [row[1] for row in index.execute("PRAGMA table_info(runs)")]
            if columns and tuple(columns) != INDEX_COLUMNS:  # an index of an older layout
                index.execute("DROP TABLE runs")
            index.execute(
                "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, kind TEXT, status TEXT, "
                "seed INTEGER, updated TEXT, config TEXT, final TEXT, reason TEXT, stamp TEXT)"
            )

    def _indexed(self) -> dict[str, dict[str, Any]]:
        with self._index() as index:
            index.row_factory = sqlite3.Row
            return {row["run_id"]: dict(row) for row in index.execute("SELECT * FROM runs")}

    def _index_run(self, run: RunRecord, updated: str) -> None:
        final = run.final() if run.finished else {}  # a run that diverged at once has no row either
        config = run.config.model_dump_json() if run.config is not None else None
        with self._index() as index:
            index.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.config.kind if run.config is not None else None,
                    run.status,
                    getattr(run.config, "seed", None),
                    updated,
                    config,
                    json.dumps(final) if final else None,
                    run.message if run.status == "corrupt" else None,
                    _stamp(run.folder),
                ),
            )

    def reconcile(self) -> None:
        """Make the index agree with the run folders: add or update the row of every folder whose files
        changed since it was indexed (verifying it), and of every run whose training process is gone;
        drop rows without a folder. A complete folder is always indexed complete."""
        indexed = self._indexed()
        folders = {folder.name: folder for folder in self._run_folders()}
        with self._index() as index:
            for run_id in indexed.keys() - folders.keys():
                index.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        for run_id, folder in sorted(folders.items()):
            row = indexed.get(run_id)
            if row is not None and row["stamp"] == _stamp(folder) and row["status"] != "running":
                continue
            run = self._read(folder)
            if run.status == "pending":  # never started: not a run yet
                if row is not None:
                    with self._index() as index:
                        index.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
                continue
            if row is None or (row["status"], row["stamp"]) != (run.status, _stamp(folder)):
                self._index_run(run, _updated(folder))

    def reindex(self) -> None:
        """Rebuild the index from the run folders, verifying every run."""
        with self._index() as index:
            index.execute("DELETE FROM runs")
        self.reconcile()

    def _run_folders(self) -> list[Path]:
        return sorted(path for path in (self.root / "runs").iterdir() if path.is_dir())

    # --- reading runs -----------------------------------------------------------------------------------

    def folder(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

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
        """The stored run, verified (its rows when it finished; its weights are read on demand)."""
        return self._read(self.folder(self.resolve(run_id)))

    def _read(self, folder: Path) -> RunRecord:
        """The run in `folder`, with status `corrupt` and the reason as its message when it does not
        verify."""
        run = RunRecord(config=None, status="pending", run_id=folder.name, folder=folder)
        try:
            raw = json.loads((folder / "config.json").read_text())
            run.config = parse_run_config(raw)
        except FileNotFoundError:  # killed before its config landed: nothing there yet
            exists = (folder / "status.json").exists()
            return _corrupt(run, "config.json is missing") if exists else run
        except (OSError, ValueError) as error:  # ValueError: bad JSON, bad UTF-8 or an invalid config
            return _corrupt(run, f"config.json cannot be read: {_first_line(error)}")
        if config_hash(run.config) != folder.name:
            return _corrupt(run, f"config.json hashes to {config_hash(run.config)}, not to its folder's name")
        if not (folder / "status.json").exists():
            return run
        try:
            status = _status_file(folder)
            if status.get("status") not in STORED_STATUSES:
                raise ValueError(f"unknown status {status.get('status')!r}")
        except (OSError, ValueError, AttributeError) as error:
            return _corrupt(run, f"status.json cannot be read: {_first_line(error)}")
        run.status = status["status"]
        run.diverged_at_step = status.get("step")
        run.seconds = status.get("seconds", 0.0)
        run.resumed_from_step = status.get("resumed_from_step", 0)
        run.message = status.get("message", "") or status.get("reason", "")
        run.extra = status.get("extra", {})
        if run.status == "running" and not _owner_alive(folder):
            run.status = "interrupted"
        if run.finished:
            problem = self._verify_result(run, status.get("checksums"))
            if problem:
                run.rows = []
                return _corrupt(run, problem)
        return run

    def _verify_result(self, run: RunRecord, checksums: dict[str, str] | None) -> str:
        """Why the finished run's files are not its result ('' when they are); fills `run.rows`."""
        folder = run.folder
        for name in CHECKSUMMED:
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if checksums is not None and self._sha256(path) != checksums.get(name):
                return f"{name} does not match its checksum (truncated or changed)"
        try:
            frame = pd.read_csv(io.BytesIO((folder / "metrics.csv").read_bytes()))
        except (ValueError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
            return f"metrics.csv cannot be read: {_first_line(error)}"
        run.rows = frame.to_dict("records")
        kind = kind_of(run.config)
        if run.status == "complete" and kind.last_row is not None:
            column, last = kind.last_row(run.config)
            reached = run.rows[-1].get(column) if run.rows else None
            if reached != last:
                return f"metrics.csv ends at {column} {reached}, not at the run's last {column} {last}"
        if run.status == "diverged" and run.rows and run.diverged_at_step is not None:
            reached = run.rows[-1].get(kind.divergence_column)
            if reached is None or reached > run.diverged_at_step:
                return (
                    f"metrics.csv ends at {kind.divergence_column} {reached}, after the divergence at "
                    f"{run.diverged_at_step}"
                )
        return ""

    def _sha256(self, path: Path) -> str:
        """A file's SHA-256, computed once per version of the file (weights can be large, and a sweep
        reads each run several times)."""
        stat = path.stat()
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in self._checksums:
            self._checksums[key] = atomic.file_sha256(path)
        return self._checksums[key]

    def list(self) -> list[dict[str, Any]]:
        """One dict per indexed run, newest first."""
        with self._index() as index:
            index.row_factory = sqlite3.Row
            rows = index.execute("SELECT * FROM runs ORDER BY updated DESC").fetchall()
        return [dict(row) for row in rows]

    def is_finished(self, config: BaseModel) -> bool:
        """Whether the store holds a complete or diverged run of `config` that verifies."""
        folder = self.folder(config_hash(config))
        return folder.is_dir() and self._read(folder).finished

    def checkpoint_position(self, config: BaseModel) -> int:
        """The step or epoch an unfinished run of `config` would resume from (0 for a corrupt checkpoint)."""
        return checkpoint_position(self.folder(config_hash(config)) / "checkpoint.pt")

    # --- training runs --------------------------------------------------------------------------------

    def run(
        self, config: BaseModel, force: bool = False, on_step: Callable[[int], None] | None = None
    ) -> RunRecord:
        """The finished run of `config`: stored if it exists and verifies (unless `force`), else trained or
        resumed. A run another process is training raises :class:`RunBusyError`."""
        run_id = self._prepare(config)
        with _exclusive(self.folder(run_id) / ".lock", run_id):
            run = self._read(self.folder(run_id))
            if run.finished and not force:
                return run
            checkpoint = run.folder / "checkpoint.pt"
            if force:
                checkpoint.unlink(missing_ok=True)
            check_runnable(config)
            self._start(run, config)
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
        skip_busy: bool = False,
    ) -> list[RunRecord]:
        """The runs of `configs` (in order), training the missing ones together where they can.

        Pending runs whose kind has a batched engine are grouped by its batch key and by the position
        their checkpoints resume from, and each group (up to `max_batch` runs) trains in one
        computation; the others train one by one with :meth:`run`. A run another process is training
        is skipped and every other run trained; then, with `skip_busy`, the skipped ones come back with
        status `busy`, else a :class:`RunBusyError` names them.
        """
        run_ids = [self._prepare(config) for config in configs]
        pending = [
            config for config, run_id in zip(configs, run_ids) if not self._read(self.folder(run_id)).finished
        ]
        busy: set[str] = set()
        for group in plan_batches(pending, self, max_batch):
            if len(group) == 1:
                try:
                    self.run(group[0], on_step=on_step)
                except RunBusyError:
                    busy.add(config_hash(group[0]))
            else:
                busy |= self._run_batch(group, on_step)
        records = [self._read(self.folder(run_id)) for run_id in run_ids]
        busy = {record.run_id for record in records if record.run_id in busy and not record.finished}
        if busy and not skip_busy:
            raise RunBusyError(f"runs {', '.join(sorted(busy))} are being computed by another process")
        for record in records:
            if record.run_id in busy:
                record.status = "busy"
        return records

    def _run_batch(self, configs: list[BaseModel], on_step: Callable[[int], None] | None) -> set[str]:
        """Train `configs` in one computation, skipping those another process holds; return their ids."""
        busy = set()
        with ExitStack() as locks:
            held = []
            for config in configs:
                run_id = config_hash(config)
                try:
                    locks.enter_context(_exclusive(self.folder(run_id) / ".lock", run_id))
                    held.append(config)
                except RunBusyError:
                    busy.add(run_id)
            runs = [self._read(self.folder(config_hash(config))) for config in held]
            todo = [index for index, run in enumerate(runs) if not run.finished]  # others may have finished
            if not todo:
                return busy
            configs, runs = [held[i] for i in todo], [runs[i] for i in todo]
            for config in configs:
                check_runnable(config)
            recorded = environment()  # one batch, one process: the same for every run
            for run, config in zip(runs, configs):
                self._start(run, config, recorded)
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
        return busy

    def _prepare(self, config: BaseModel) -> str:
        """Create the run's folder with its config (rewritten when it does not verify); return its id."""
        run_id = config_hash(config)
        folder = self.folder(run_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise atomic.WriteError(error.errno, f"cannot create {folder}: {error.strerror}") from None
        path = folder / "config.json"
        if not path.is_file() or _config_hash_of(path) != run_id:
            atomic.write_json(path, config.model_dump(mode="json"))
        return run_id

    def _start(self, run: RunRecord, config: BaseModel, recorded: dict[str, Any] | None = None) -> None:
        """Mark the run running; a previous attempt's result files go (a corrupt or forced run)."""
        run.config = config
        for name in CHECKSUMMED:
            if name != "metrics.csv" or not (run.folder / "checkpoint.pt").is_file():
                (run.folder / name).unlink(missing_ok=True)
        atomic.write_json(
            run.folder / "environment.json", recorded if recorded is not None else environment()
        )
        self._write_status(run, "running")

    def _write_status(self, run: RunRecord, status: str, **details: Any) -> None:
        run.status = status
        written = {"status": status, "updated": _now(), **details}
        atomic.write_json(run.folder / "status.json", written)
        self._index_run(run, written["updated"])

    def _finish(self, run: RunRecord, record: RunRecord) -> RunRecord:
        """Write a trained run's weights and metrics, then its final status (last: it marks completeness)
        with both files' checksums."""
        checksums = {"weights.pt": atomic.save_torch(run.folder / "weights.pt", record.weights)}
        metrics = pd.DataFrame(record.rows) if record.rows else pd.DataFrame(columns=["step", "train_loss"])
        text = metrics.to_csv(index=False).encode()
        atomic.write_bytes(run.folder / "metrics.csv", text)
        checksums["metrics.csv"] = atomic.sha256(text)
        record.run_id, record.folder = run.run_id, run.folder
        self._write_status(
            record,
            record.status,
            step=record.diverged_at_step,
            message=record.message,
            seconds=round(record.seconds, 3),
            resumed_from_step=record.resumed_from_step,
            extra=record.extra,
            checksums=checksums,
        )
        (run.folder / "checkpoint.pt").unlink(missing_ok=True)
        return self._read(run.folder)

    # --- check and repair -------------------------------------------------------------------------------

    def check(self) -> list[str]:
        """What is wrong in the store, one line each (empty: nothing); changes nothing (open the store
        with `reconcile=False` to see the index as it was)."""
        problems = [self.index_problem] if self.index_problem else []
        indexed = self._indexed()
        for folder in self._run_folders():
            run = self._read(folder)
            if run.status == "corrupt":
                problems.append(f"run {folder.name}: corrupt: {run.message}")
            row = indexed.pop(folder.name, None)
            if run.status == "pending":
                continue
            if row is None:
                problems.append(f"run {folder.name}: {run.status} but not in the index")
            elif row["status"] != run.status:
                problems.append(f"run {folder.name}: {run.status}, but the index says {row['status']}")
        problems += [f"run {run_id}: in the index, but its folder is gone" for run_id in indexed]
        problems += [f"stale lock {path} (process {pid} is gone)" for path, pid in self._stale_locks()]
        problems += [f"temporary file {path}" for path in self._temporary_files()]
        return problems

    def repair(self) -> list[str]:
        """Fix what :meth:`check` finds: mark unverifiable runs corrupt in their status (they retrain),
        clear stale locks, remove temporary files, rebuild the index from the folders. Returns what was
        done, one line each."""
        done = [f"rebuilt {self.index_problem.removeprefix('index ')}"] if self.index_problem else []
        for folder in self._run_folders():
            run = self._read(folder)
            if run.status != "corrupt" or _status_file_says(folder, "corrupt"):
                continue
            try:
                with _exclusive(folder / ".lock", folder.name):
                    atomic.write_json(
                        folder / "status.json",
                        {"status": "corrupt", "reason": run.message, "updated": _now()},
                    )
                done.append(f"run {folder.name}: marked corrupt ({run.message})")
            except RunBusyError:
                done.append(f"run {folder.name}: left alone (another process holds it)")
        for path, pid in self._stale_locks():
            _clear_lock(path)
            done.append(f"cleared stale lock {path} (process {pid} is gone)")
        for path in self._temporary_files():
            path.unlink(missing_ok=True)
            done.append(f"removed temporary file {path}")
        self.reindex()
        done.append(f"rebuilt the index from {len(self._run_folders())} run folders")
        return done

    def _lock_files(self) -> list[Path]:
        return sorted(
            [*(self.root / "runs").glob("*/.lock"), *(self.root / "measurements").glob("*/*/.lock")]
        )

    def _stale_locks(self) -> list[tuple[Path, int]]:
        stale = []
        for path in self._lock_files():
            pid = _lock_pid(path)
            if pid is not None and not _pid_alive(pid):
                stale.append((path, pid))
        return stale

    def _temporary_files(self) -> list[Path]:
        """Temporary files of writes that never finished (in folders no live process holds)."""
        found = []
        for pattern in (
            f"runs/*/.*{atomic.TEMPORARY_SUFFIX}",
            f"measurements/*/*/.*{atomic.TEMPORARY_SUFFIX}",
        ):
            found += [path for path in self.root.glob(pattern) if not _owner_alive(path.parent)]
        return sorted(found)

    # --- measurements ---------------------------------------------------------------------------------

    def measurement(
        self, name: str, settings: BaseModel, measure: Callable[[], Tables], force: bool = False
    ) -> Tables:
        """The tables `measure()` returns for `settings` of reproduction `name`, stored under the hash of
        the settings and the package's source (see `source_fingerprint`) with the environment that
        computed them, and reused on the next call (unless `force`, or a table does not match the
        checksum its status keeps: then it is measured again)."""
        key = content_hash({"settings": settings.model_dump(mode="json"), "source": source_fingerprint()})
        folder = self.root / "measurements" / name / key
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(folder / ".lock", f"{name}/{key}"):
            status = folder / "status.json"
            if status.is_file() and not force:
                stored = _stored_tables(folder)
                if stored is not None:
                    return stored
            status.unlink(missing_ok=True)
            atomic.write_json(folder / "settings.json", settings.model_dump(mode="json"))
            atomic.write_json(folder / "environment.json", environment())
            started = time.perf_counter()
            tables = measure()
            checksums = {}
            for table, frame in tables.items():
                buffer = io.BytesIO()
                frame.to_parquet(buffer)
                atomic.write_bytes(folder / f"{table}.parquet", buffer.getvalue())
                checksums[table] = atomic.sha256(buffer.getvalue())
            atomic.write_json(
                status,
                {
                    "status": "complete",
                    "tables": list(tables),
                    "checksums": checksums,
                    "seconds": round(time.perf_counter() - started, 3),
                    "updated": _now(),
                },
            )
            return tables


def _stored_tables(folder: Path) -> Tables | None:
    """A complete measurement's tables, or None (with a warning when its files do not verify)."""
    try:
        status = _status_file(folder)
        if status.get("status") != "complete":
            return None
        tables = {}
        for table in status["tables"]:
            path = folder / f"{table}.parquet"
            expected = status.get("checksums", {}).get(table)
            if expected is not None and atomic.file_sha256(path) != expected:
                raise ValueError(f"{path.name} does not match its checksum")
            tables[table] = pd.read_parquet(path)
        return tables
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        warnings.warn(
            f"measurement {folder} is corrupt ({_first_line(error)}): measuring again", stacklevel=3
        )
        return None


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


def usable_folder(path: Path, what: str) -> None:
    """Create `path` as a folder, or say why it cannot be one (a file, no permission, ...), naming it as
    `what` (the option that gave it: "store", "--out")."""
    if path.exists() and not path.is_dir():
        raise PathError(f"{what} {path}: is a file, not a folder; allowed: a folder (or a path to create)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PathError(f"{what} {path}: cannot create {error.filename or path}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PathError(f"{what} {path}: not writable; allowed: a folder this user can write")


def _corrupt(run: RunRecord, reason: str) -> RunRecord:
    run.status, run.message = "corrupt", reason
    return run


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def _config_hash_of(path: Path) -> str | None:
    try:
        return config_hash(parse_run_config(json.loads(path.read_text())))
    except (OSError, ValueError):
        return None


def _stamp(folder: Path | None) -> str:
    """The sizes and modification times of a run's files: a change means the index row is out of date."""
    parts = []
    for name in ("config.json", "status.json", *CHECKSUMMED):
        try:
            stat = (folder / name).stat()
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:-")
    return "|".join(parts)


def _status_file(folder: Path) -> dict[str, Any]:
    """A run folder's status.json (a folder without one is a run that has not started: pending)."""
    path = folder / "status.json"
    if not path.is_file():
        return {"status": "pending"}
    status = json.loads(path.read_text())
    if not isinstance(status, dict):
        raise ValueError("status.json does not hold a mapping")  # noqa: TRY004 - a bad file, read as one
    return status


def _updated(folder: Path) -> str:
    """When the run's status was last written ('' when unreadable)."""
    try:
        return str(_status_file(folder).get("updated", ""))
    except (OSError, ValueError):
        return ""


def _status_file_says(folder: Path, status: str) -> bool:
    try:
        return _status_file(folder).get("status") == status
    except (OSError, ValueError):
        return False


def _lock_pid(path: Path) -> int | None:
    """The pid written in a lock file by the process that holds it (None: not held, or unreadable)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux): kill(pid, 0) is all there is
        return True


def _owner_alive(folder: Path) -> bool:
    """Whether a live process holds the folder's lock (by the pid it wrote there)."""
    pid = _lock_pid(folder / ".lock")
    return pid is not None and _pid_alive(pid)


def _clear_lock(path: Path) -> None:
    """Empty a lock file left by a dead process (taking the lock first: a live holder keeps it)."""
    descriptor = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(descriptor, 0)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
    except BlockingIOError:
        pass
    finally:
        os.close(descriptor)


@contextmanager
def _exclusive(lock_path: Path, name: str) -> Iterator[None]:
    """Hold `lock_path` (flock) with this process's pid written in it, or raise :class:`RunBusyError`."""
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_pid(lock_path)
            by = f" (pid {owner})" if owner is not None else ""
            raise RunBusyError(f"{name} is being computed by another process{by}") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
