"""The run store: one folder per run, keyed by the config hash, plus an SQLite index of all runs.

    ROOT/index.sqlite
    ROOT/runs/<hash>/config.json        the full config
                     status.json        running | complete | diverged | failed (+ step, message)
                     metrics.csv        one row per logged step (complete and diverged runs)
                     weights.pt         final weights
                     environment.json   package versions, git revision, machine
                     checkpoint.pt      while a run is unfinished

Every file is written atomically, and `status.json` is written last, so a folder whose status is
not complete/diverged is never read as a result. Asking for a complete config returns the stored
result; an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import ValidationError

from momentumlab import atomic
from momentumlab.config import ImageRunConfig, RunConfig, TeacherStudentRunConfig, config_hash
from momentumlab.train.checkpoint import checkpoint_position
from momentumlab.train.loop import RunRecord, train

AnyRunConfig = RunConfig | ImageRunConfig | TeacherStudentRunConfig
CONFIG_TYPES = (RunConfig, ImageRunConfig, TeacherStudentRunConfig)
FINISHED = ("complete", "diverged")
RUN_ID_PREFIX = re.compile(r"[0-9a-f]{1,16}")
DEFAULT_ROOT_VARIABLE = "MOMENTUMLAB_STORE"


class RunStoreError(RuntimeError):
    """A run that cannot be found, is ambiguous, or is busy in another process."""


@dataclass
class StoredRun:
    run_id: str
    folder: Path
    config: AnyRunConfig
    status: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status.get("status") in FINISHED

    def metrics(self) -> pd.DataFrame:
        """The logged rows (step, loss, accuracies, theory quantities) as a DataFrame."""
        return pd.read_csv(self.folder / "metrics.csv")

    def final(self) -> dict[str, float]:
        """The last logged row (empty for a run that diverged before its first row)."""
        metrics = self.metrics()
        return metrics.iloc[-1].to_dict() if len(metrics) else {}

    def weights(self) -> dict[str, torch.Tensor]:
        return torch.load(self.folder / "weights.pt", weights_only=True)

    def environment(self) -> dict[str, Any]:
        return json.loads((self.folder / "environment.json").read_text())


def default_root() -> Path:
    return Path(os.environ.get(DEFAULT_ROOT_VARIABLE, "runs"))


def environment() -> dict[str, Any]:
    """What produced a run: versions, code revision and machine."""
    packages = {}
    for name in ("momentumlab", "torch", "numpy", "pandas", "pydantic"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", *args], cwd=source, capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    return {
        "python": sys.version.split()[0],
        "packages": packages,
        "git_revision": revision,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if revision else None,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "hostname": platform.node(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class RunStore:
    """Runs on disk under `root`, found by their config hash (or a unique prefix of it)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        with self._index() as index:
            index.execute(
                "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, status TEXT, optimizer TEXT,"
                " lr REAL, momentum REAL, seed INTEGER, steps INTEGER, updated TEXT, config TEXT, final TEXT)"
            )

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

    def _write_status(self, run: StoredRun, status: str, final: dict | None = None, **details: Any) -> None:
        run.status = {"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details}
        atomic.write_json(run.folder / "status.json", run.status)
        optimizer = run.config.optimizer
        with self._index() as index:
            index.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    status,
                    optimizer.name,
                    optimizer.lr,
                    optimizer.momentum,
                    run.config.seed,
                    _length(run.config),
                    run.status["updated"],
                    run.config.model_dump_json(),
                    json.dumps(final) if final is not None else None,
                ),
            )

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

    def get(self, run_id: str) -> StoredRun:
        folder = self.folder(self.resolve(run_id))
        config = load_config(json.loads((folder / "config.json").read_text()))
        status_file = folder / "status.json"
        status = json.loads(status_file.read_text()) if status_file.is_file() else {"status": "running"}
        return StoredRun(folder.name, folder, config, status)

    def list(self) -> list[dict[str, Any]]:
        """One dict per indexed run, newest first."""
        with self._index() as index:
            index.row_factory = sqlite3.Row
            rows = index.execute("SELECT * FROM runs ORDER BY updated DESC").fetchall()
        return [dict(row) for row in rows]

    def run(
        self,
        config: AnyRunConfig,
        force: bool = False,
        progress: bool = False,
        on_step: Callable[[int], None] | None = None,
        data_dir: Path | None = None,
    ) -> StoredRun:
        """The finished run of `config`: stored if it exists (unless `force`), else trained or resumed.

        `data_dir` is where an image run's dataset lives; it is not part of the run's identity.
        """
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
                record = _train(config, checkpoint, progress, on_step, data_dir)
            except BaseException as error:
                self._write_status(run, "failed", message=f"{type(error).__name__}: {error}")
                raise
            self._finish(run, record)
            return run

    def run_many(
        self,
        configs: Sequence[AnyRunConfig],
        progress: bool = False,
        on_step: Callable[[int], None] | None = None,
        max_batch: int = 64,
    ) -> list[StoredRun]:
        """The finished runs of `configs` (in order), training the missing ones together where they can.

        Pending runs that a batched engine accepts are grouped by its batch key and by the position
        their checkpoints resume from, and each group (up to `max_batch` runs) trains in one
        computation; the others train one by one with :meth:`run`.
        """
        run_ids = [self._prepare(config) for config in configs]
        pending = {run_id: config for run_id, config in zip(run_ids, configs) if not self.is_finished(config)}
        for group in plan_batches(list(pending.values()), self, max_batch):
            if len(group) == 1:
                self.run(group[0], progress=progress, on_step=on_step)
            else:
                self._run_batch(group, progress, on_step)
        return [self.get(run_id) for run_id in run_ids]

    def _run_batch(
        self, configs: list[AnyRunConfig], progress: bool, on_step: Callable[[int], None] | None
    ) -> None:
        _, train_batch = batched_engine(configs[0])
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
            try:
                records = train_batch(configs, checkpoints, progress=progress, on_step=on_step)
            except BaseException as error:
                for run in runs:
                    self._write_status(run, "failed", message=f"{type(error).__name__}: {error}")
                raise
            for run, record in zip(runs, records):
                self._finish(run, record)

    def is_finished(self, config: AnyRunConfig) -> bool:
        """Whether the store holds a complete or diverged run of `config`."""
        status = self.folder(config_hash(config)) / "status.json"
        return status.is_file() and json.loads(status.read_text()).get("status") in FINISHED

    def checkpoint_position(self, config: AnyRunConfig) -> int:
        """The step or epoch an unfinished run of `config` would resume from."""
        return checkpoint_position(self.folder(config_hash(config)) / "checkpoint.pt")

    def _prepare(self, config: AnyRunConfig) -> str:
        """Create the run's folder with its config; return its id."""
        run_id = config_hash(config)
        folder = self.folder(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "config.json").is_file():
            atomic.write_json(folder / "config.json", config.model_dump(mode="json"))
        return run_id

    def _start(self, run: StoredRun, recorded: dict[str, Any] | None = None) -> None:
        atomic.write_json(
            run.folder / "environment.json", recorded if recorded is not None else environment()
        )
        self._write_status(run, "running")

    def _finish(self, run: StoredRun, record: RunRecord) -> None:
        """Write a trained run's weights and metrics, then its final status (last, so it marks completeness)."""
        atomic.save_torch(run.folder / "weights.pt", record.weights)
        metrics = pd.DataFrame(record.rows) if record.rows else pd.DataFrame(columns=["step", "train_loss"])
        atomic.write_text(run.folder / "metrics.csv", metrics.to_csv(index=False))
        self._write_status(
            run,
            record.status,
            final=record.rows[-1] if record.rows else None,
            step=record.diverged_at_step,
            message=record.message,
            seconds=round(record.seconds, 3),
            resumed_from_step=record.resumed_from_step,
            extra=record.extra,
        )
        (run.folder / "checkpoint.pt").unlink(missing_ok=True)


BatchTrainer = Callable[..., list[RunRecord]]


def batched_engine(config: AnyRunConfig) -> tuple[str, BatchTrainer] | None:
    """(batch key, batched trainer) for a config that can share a computation with others, else None."""
    if isinstance(config, RunConfig):
        from momentumlab.train.batched import batch_key, train_batched

        key = batch_key(config)
        return (f"feature_margin:{key}", train_batched) if key is not None else None
    if isinstance(config, TeacherStudentRunConfig):
        from momentumlab.train.batched_students import student_batch_key, train_students_batched

        key = student_batch_key(config)
        return (f"teacher_student:{key}", train_students_batched) if key is not None else None
    return None


def plan_batches(
    configs: Sequence[AnyRunConfig], store: RunStore, max_batch: int
) -> list[list[AnyRunConfig]]:
    """Split configs into groups that train in one computation each (same batch key and resume position),
    at most `max_batch` runs per group; configs no engine accepts form groups of one."""
    if max_batch < 1:
        raise ValueError(f"max_batch = {max_batch} must be ≥ 1")
    groups: dict[tuple[str, int], list[AnyRunConfig]] = {}
    alone: list[list[AnyRunConfig]] = []
    for config in configs:
        engine = batched_engine(config)
        if engine is None:
            alone.append([config])
        else:
            groups.setdefault((engine[0], store.checkpoint_position(config)), []).append(config)
    batches = [group[i : i + max_batch] for group in groups.values() for i in range(0, len(group), max_batch)]
    return batches + alone


def load_config(raw: dict[str, Any]) -> AnyRunConfig:
    """The config type that `raw` (a stored config.json) validates as."""
    for config_type in CONFIG_TYPES:
        try:
            return config_type.model_validate(raw)
        except ValidationError:
            continue
    raise RunStoreError("config.json is not a RunConfig, ImageRunConfig or TeacherStudentRunConfig")


def _length(config: AnyRunConfig) -> int:
    """Optimizer steps of a feature-margin run, epochs otherwise (the index's `steps` column)."""
    return config.train.steps if isinstance(config, RunConfig) else config.train.epochs


def _train(
    config: AnyRunConfig,
    checkpoint: Path,
    progress: bool,
    on_step: Callable[[int], None] | None,
    data_dir: Path | None,
) -> RunRecord:
    if isinstance(config, ImageRunConfig):
        from momentumlab.train.images import train_images  # imports the image models only when needed

        return train_images(config, checkpoint, progress=progress, on_step=on_step, data_dir=data_dir)
    if isinstance(config, TeacherStudentRunConfig):
        from momentumlab.train.students import train_student

        return train_student(config, checkpoint, progress=progress, on_step=on_step)
    return train(config, checkpoint, progress=progress, on_step=on_step)


@contextmanager
def _exclusive(lock_path: Path, run_id: str) -> Iterator[None]:
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunStoreError(f"run {run_id} is being trained by another process") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
