"""Sweeps: a grid over any config fields (seeds included), run through the store by an executor.

A sweep file (YAML or TOML)::

    kind: feature_margin           # any registered run kind (momentumlab.runs)
    base: {train: {steps: 2000}}   # a (partial) run config; or base_file: path/to/config.yaml
    grid:                          # every combination of these dotted fields
      optimizer.lr: [0.1, 0.5, 2.0]
      optimizer.momentum: [0.0, 0.9]
    points:                        # optional explicit settings, each crossed with the grid
      - {optimizer.name: ema_momentum}
    seeds: [0, 1, 2]

Every point is one run in the store, so finished points are reused and a killed sweep, rerun,
trains only what is missing (unfinished runs resume from their checkpoints). Pending runs that
can share one computation train together (:func:`momentumlab.store.plan_batches`); the batches go
to local worker processes or to a Ray cluster. The result is a tidy table, one row per run.
"""

from __future__ import annotations

import ctypes
import io
import itertools
import json
import math
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, Field, StrictInt, model_validator

from momentumlab import atomic
from momentumlab.config import (
    INT_LIMIT,
    ConfigError,
    StrictModel,
    apply_overrides,
    config_hash,
    flatten,
    load_raw,
    validate,
)
from momentumlab.runs import check_runnable, import_kind_module, kind_of, parse_run_config, run_kind
from momentumlab.store import RunStore, plan_batches, usable_folder

PER_NEURON = re.compile(r"_r\d+$")  # per-filter columns stay in each run's metrics.csv
RESULT_TABLE = "results.csv"
MAX_POINTS = 100_000  # a larger grid is refused before it is expanded (10¹² points would take years)
RAY_CONNECT_SECONDS = 10.0  # how long a Ray address may take to answer before the sweep gives up
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies (Linux)


class SweepSpec(StrictModel):
    """What a sweep file holds (see the module docstring)."""

    kind: str = Field(description="the run kind of every point (a registered name)")
    base: dict[str, Any] = Field(default_factory=dict, description="a partial run config")
    base_file: str | None = Field(None, description="a run config file, relative to the sweep file")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted field → values")
    points: list[dict[str, Any]] = Field(default_factory=list, description="explicit dotted settings")
    seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)

    @model_validator(mode="after")
    def _well_formed(self) -> SweepSpec:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} = []: give at least one value")
            if key == "seed":
                raise ValueError("grid.seed: list the seeds under `seeds`")
        if any(not 0 <= seed < INT_LIMIT for seed in self.seeds):
            raise ValueError(f"seeds = {self.seeds}: allowed: integers in 0..2**63-1")
        if self.size() > MAX_POINTS:
            raise ValueError(f"the sweep has {self.size()} points; allowed: at most {MAX_POINTS}")
        return self

    def size(self) -> int:
        """How many runs the sweep expands to (before duplicates are dropped)."""
        return (
            max(1, len(self.points))
            * math.prod(len(values) for values in self.grid.values())
            * len(self.seeds)
        )


def load_sweep(path: Path) -> tuple[SweepSpec, dict[str, Any]]:
    """The sweep in `path` and its base run config as plain data (with `base_file` merged under `base`)."""
    spec = validate(SweepSpec, load_raw(path))
    run_kind(spec.kind)  # an unknown kind fails here, before the base is read
    base: dict[str, Any] = {}
    if spec.base_file is not None:
        base = load_raw((path.parent / spec.base_file).resolve())
    merged = _merge(base, spec.base)
    if merged.get("kind", spec.kind) != spec.kind:
        raise ConfigError(f"base kind = {merged['kind']!r} differs from the sweep's kind = {spec.kind!r}")
    return spec, {**merged, "kind": spec.kind}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def _override(key: str, value: Any) -> str:
    """A dotted ``key=value`` override whose value parses back to `value` (JSON is YAML)."""
    return f"{key}={json.dumps(value)}"


def expand(spec: SweepSpec, base: dict[str, Any]) -> list[BaseModel]:
    """Every run of the sweep: points × grid × seeds, validated, duplicates dropped, in a stable order."""
    keys = list(spec.grid)
    configs: dict[str, BaseModel] = {}
    for point in spec.points or [{}]:
        for values in itertools.product(*spec.grid.values()):
            for seed in spec.seeds:
                setting = {**point, **dict(zip(keys, values)), "seed": seed}
                overrides = [_override(key, value) for key, value in setting.items()]
                try:
                    config = parse_run_config(apply_overrides(base, overrides))
                    check_runnable(config)
                except ConfigError as error:
                    raise ConfigError(f"sweep point {setting}: {error}") from None
                configs.setdefault(config_hash(config), config)
    return list(configs.values())


@dataclass
class Outcome:
    """What a sweep's execution left undone: a message per batch that failed, and the runs another
    process was training (`busy`: skipped, the rest of their batch trained)."""

    failures: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)


def _train_batch(root: str, kind_module: str, raw_configs: list[dict[str, Any]], threads: int) -> list[str]:
    """Worker entry point (local process or Ray task): train one batch into the store at `root`; return
    the ids of its runs that another process was training.

    The worker imports the module that defines the batch's run kind, so user kinds train there too.
    """
    torch.set_num_threads(threads)
    import_kind_module(kind_module)
    configs = [parse_run_config(raw) for raw in raw_configs]
    return [run.run_id for run in RunStore(root).run_many(configs, skip_busy=True) if run.status == "busy"]


def _die_with(parent: int) -> None:
    """Worker initializer: be killed when the sweep's process dies (Linux), so that a killed sweep
    leaves no worker training (the kernel then releases its run locks)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _worker_arguments(batch: list[BaseModel]) -> tuple[str, list[dict[str, Any]]]:
    return kind_of(batch[0]).module, [config.model_dump(mode="json") for config in batch]


def _split(batches: list[list[BaseModel]], workers: int) -> list[list[BaseModel]]:
    """Cut batches so that `workers` processes all have work (a batch never grows)."""
    size = max(1, math.ceil(sum(len(batch) for batch in batches) / workers))
    return [batch[i : i + size] for batch in batches for i in range(0, len(batch), size)]


def execute(
    configs: list[BaseModel],
    store: RunStore,
    backend: Literal["local", "ray"] = "local",
    workers: int = 1,
    address: str | None = None,
    max_batch: int = 64,
    echo: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Train the unfinished runs among `configs`; return the batches that failed and the runs that
    another process was training.

    local: `workers` = 1 trains in this process (with the store's progress bar), more use that many
    processes, which die with this one; ray: one task per batch on the cluster at `address` (None
    starts a local instance). The store folder must be visible to every worker (a shared file system
    on a cluster).
    """
    if workers < 1:
        raise ConfigError(f"workers = {workers}: allowed: ≥ 1")
    pending = [config for config in configs if not store.is_finished(config)]
    echo(f"{len(configs)} runs, {len(configs) - len(pending)} already in the store, {len(pending)} to train")
    outcome = Outcome()
    if not pending:
        return outcome
    slots = workers if backend == "local" else _ray_slots(address)
    batches = _split(plan_batches(pending, store, max_batch), slots)
    echo(f"{len(batches)} batches on {backend} ({slots} worker{'s' if slots > 1 else ''})")
    if backend == "ray":
        return _execute_ray(batches, store.root, address)
    if workers == 1:
        for batch in batches:
            try:
                runs = store.run_many(batch, max_batch=max_batch, skip_busy=True)
                outcome.busy += [run.run_id for run in runs if run.status == "busy"]
            except Exception as error:  # noqa: BLE001 - one failed batch must not lose the others
                outcome.failures.append(f"{len(batch)} runs: {type(error).__name__}: {error}")
        return outcome
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_die_with, initargs=(os.getpid(),)
    ) as pool:
        futures = {
            pool.submit(_train_batch, str(store.root), *_worker_arguments(batch), threads): batch
            for batch in batches
        }
        for future in as_completed(futures):
            try:
                outcome.busy += future.result()
            except Exception as error:  # noqa: BLE001 - reported, the other batches go on
                outcome.failures.append(f"{len(futures[future])} runs: {type(error).__name__}: {error}")
    return outcome


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "backend = 'ray' needs Ray; install it with: pip install 'momentumlab[ray]'"
        ) from None
    return ray


def check_reachable(address: str) -> None:
    """Refuse a Ray address nothing answers at within RAY_CONNECT_SECONDS (Ray itself retries forever)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit() or not host:
        raise ConfigError(f"--address = {address!r}: allowed: host:port (or ray://host:port, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except OSError as error:
        raise ConfigError(
            f"--address = {address!r}: no Ray cluster answers there within {RAY_CONNECT_SECONDS:g} s "
            f"({error.strerror or error}); allowed: the address of a running Ray head"
        ) from None


def _ray_slots(address: str | None) -> int:
    ray = _import_ray()
    if not ray.is_initialized():
        if address is not None and address != "auto":
            check_reachable(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _execute_ray(batches: list[list[BaseModel]], root: Path, address: str | None) -> Outcome:
    ray = _import_ray()
    task = ray.remote(num_cpus=1)(_train_batch)
    futures = {task.remote(str(root.resolve()), *_worker_arguments(batch), 1): batch for batch in batches}
    outcome = Outcome()
    for future, batch in futures.items():
        try:
            outcome.busy += ray.get(future)
        except Exception as error:  # noqa: BLE001 - reported, the other batches go on
            outcome.failures.append(f"{len(batch)} runs: {type(error).__name__}: {error}")
    return outcome


def result_table(configs: list[BaseModel], store: RunStore) -> pd.DataFrame:
    """One row per run: id, status, every config field (dotted) and the final measurements.

    Only complete runs have measurements: a diverged run has its divergence step and NaN metrics (its
    last finite row is not a final result); a run another process is training is `busy`.
    """
    rows, metrics = [], {}
    for config in configs:
        run = store.get(config_hash(config))
        final = {k: v for k, v in run.final().items() if not PER_NEURON.search(k)} if run.finished else {}
        metrics.update(dict.fromkeys(final))
        rows.append(
            {
                "run_id": run.run_id,
                "status": "busy" if run.status == "running" else run.status,
                "diverged_at": run.diverged_at_step,
                "seconds": run.seconds,
                **flatten(config.model_dump(mode="json")),
                **(final if run.status == "complete" else {}),
            }
        )
    table = pd.DataFrame(rows).reindex(columns=[*rows[0], *(m for m in metrics if m not in rows[0])])
    for column in table.columns:
        values = table[column].dropna()
        if values.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all():
            table[column] = pd.to_numeric(table[column])  # None (e.g. full batch) becomes NaN, as in the CSV
        elif values.map(lambda v: isinstance(v, list)).any():
            table[column] = table[column].astype(str)
    return table


def write_result(table: pd.DataFrame, spec: SweepSpec, out: Path) -> None:
    """Save the table as CSV and Parquet beside the sweep it came from."""
    usable_folder(out, "--out")
    atomic.write_text(out / "sweep.json", spec.model_dump_json(indent=2))
    atomic.write_text(out / RESULT_TABLE, table.to_csv(index=False))
    parquet = io.BytesIO()
    table.to_parquet(parquet, index=False)
    atomic.write_bytes(out / "results.parquet", parquet.getvalue())


def load_result(path: Path) -> pd.DataFrame:
    """A sweep result: its folder, or the CSV/Parquet table itself (refused when it is not one)."""
    if path.is_dir():
        path = path / RESULT_TABLE
    if not path.is_file():
        raise ConfigError(
            f"sweep result {str(path)!r} does not exist (expected a folder with {RESULT_TABLE})"
        )
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError) as error:  # pandas' and pyarrow's parse errors are ValueErrors
        first = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(
            f"sweep result {str(path)!r} cannot be read ({type(error).__name__}: {first}); allowed: a "
            f"{RESULT_TABLE} or results.parquet written by `momentumlab sweep`"
        ) from None
    if table.empty or "run_id" not in table:
        problem = "it has no rows" if table.empty else "it has no run_id column"
        raise ConfigError(
            f"sweep result {str(path)!r} is not a sweep table ({problem}); allowed: a table written by "
            "`momentumlab sweep`"
        )
    return table


def varied_fields(table: pd.DataFrame) -> list[str]:
    """Config fields (dotted) that take more than one value in the table, the seed excluded."""
    fields = [c for c in table.columns if "." in c or c == "seed"]
    return [c for c in fields if c not in ("seed", "data.seed") and table[c].nunique(dropna=False) > 1]


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of the accuracy columns, one row per setting of the varied fields."""
    keys = varied_fields(table)
    metrics = [
        c for c in ("train_accuracy", "val_accuracy", "test_accuracy", "test_accuracy_small") if c in table
    ]
    grouped = table.groupby(keys, dropna=False, sort=False) if keys else [((), table)]
    rows = []
    for setting, group in grouped:
        values = setting if isinstance(setting, tuple) else (setting,)
        row = dict(zip(keys, values))
        row["runs"] = len(group)
        row["diverged"] = int((group["status"] == "diverged").sum())
        for metric in metrics:
            row[metric] = f"{group[metric].mean():.4f} ± {group[metric].std(ddof=0):.4f}"
        rows.append(row)
    return pd.DataFrame(rows)
