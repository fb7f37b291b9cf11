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

import itertools
import json
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, Field, model_validator

from momentumlab import atomic
from momentumlab.config import (
    ConfigError,
    StrictModel,
    apply_overrides,
    config_hash,
    flatten,
    load_raw,
    validate,
)
from momentumlab.runs import import_kind_module, kind_of, parse_run_config, run_kind
from momentumlab.store import RunStore, plan_batches

PER_NEURON = re.compile(r"_r\d+$")  # per-filter columns stay in each run's metrics.csv
RESULT_TABLE = "results.csv"


class SweepSpec(StrictModel):
    """What a sweep file holds (see the module docstring)."""

    kind: str = Field(description="the run kind of every point (a registered name)")
    base: dict[str, Any] = Field(default_factory=dict, description="a partial run config")
    base_file: str | None = Field(None, description="a run config file, relative to the sweep file")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted field → values")
    points: list[dict[str, Any]] = Field(default_factory=list, description="explicit dotted settings")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @model_validator(mode="after")
    def _well_formed(self) -> SweepSpec:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} = []: give at least one value")
            if key == "seed":
                raise ValueError("grid.seed: list the seeds under `seeds`")
        if any(seed < 0 for seed in self.seeds):
            raise ValueError(f"seeds = {self.seeds}: seeds must be non-negative")
        return self


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
                except ConfigError as error:
                    raise ConfigError(f"sweep point {setting}: {error}") from None
                configs.setdefault(config_hash(config), config)
    return list(configs.values())


def _train_batch(root: str, kind_module: str, raw_configs: list[dict[str, Any]], threads: int) -> list[str]:
    """Worker entry point (local process or Ray task): train one batch into the store at `root`.

    The worker imports the module that defines the batch's run kind, so user kinds train there too.
    """
    torch.set_num_threads(threads)
    import_kind_module(kind_module)
    configs = [parse_run_config(raw) for raw in raw_configs]
    return [run.run_id for run in RunStore(root).run_many(configs)]


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
) -> list[str]:
    """Train the unfinished runs among `configs`; return a message per batch that failed.

    local: `workers` = 1 trains in this process (with the store's progress bar), more use that many
    processes; ray: one task per batch on the cluster at `address` (None starts a local instance).
    The store folder must be visible to every worker (a shared file system on a cluster).
    """
    if workers < 1:
        raise ConfigError(f"workers = {workers}: allowed: ≥ 1")
    pending = [config for config in configs if not store.is_finished(config)]
    echo(f"{len(configs)} runs, {len(configs) - len(pending)} already in the store, {len(pending)} to train")
    if not pending:
        return []
    slots = workers if backend == "local" else _ray_slots(address)
    batches = _split(plan_batches(pending, store, max_batch), slots)
    echo(f"{len(batches)} batches on {backend} ({slots} worker{'s' if slots > 1 else ''})")
    if backend == "ray":
        return _execute_ray(batches, store.root, address)
    if workers == 1:
        failures = []
        for batch in batches:
            try:
                store.run_many(batch, max_batch=max_batch)
            except Exception as error:  # noqa: BLE001 - one failed batch must not lose the others
                failures.append(f"{len(batch)} runs: {type(error).__name__}: {error}")
        return failures
    threads = max(1, (os.cpu_count() or 1) // workers)
    failures = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(_train_batch, str(store.root), *_worker_arguments(batch), threads): batch
            for batch in batches
        }
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as error:  # noqa: BLE001 - reported, the other batches go on
                failures.append(f"{len(futures[future])} runs: {type(error).__name__}: {error}")
    return failures


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "backend = 'ray' needs Ray; install it with: pip install 'momentumlab[ray]'"
        ) from None
    return ray


def _ray_slots(address: str | None) -> int:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _execute_ray(batches: list[list[BaseModel]], root: Path, address: str | None) -> list[str]:
    ray = _import_ray()
    task = ray.remote(num_cpus=1)(_train_batch)
    futures = {task.remote(str(root.resolve()), *_worker_arguments(batch), 1): batch for batch in batches}
    failures = []
    for future, batch in futures.items():
        try:
            ray.get(future)
        except Exception as error:  # noqa: BLE001 - reported, the other batches go on
            failures.append(f"{len(batch)} runs: {type(error).__name__}: {error}")
    return failures


def result_table(configs: list[BaseModel], store: RunStore) -> pd.DataFrame:
    """One row per run: id, status, every config field (dotted) and the final measurements."""
    rows = []
    for config in configs:
        run = store.get(config_hash(config))
        final = {k: v for k, v in run.final().items() if not PER_NEURON.search(k)} if run.finished else {}
        rows.append(
            {
                "run_id": run.run_id,
                "status": run.status,
                "diverged_at": run.diverged_at_step,
                "seconds": run.seconds,
                **flatten(config.model_dump(mode="json")),
                **final,
            }
        )
    table = pd.DataFrame(rows)
    for column in table.columns:
        values = table[column].dropna()
        if values.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all():
            table[column] = pd.to_numeric(table[column])  # None (e.g. full batch) becomes NaN, as in the CSV
        elif values.map(lambda v: isinstance(v, list)).any():
            table[column] = table[column].astype(str)
    return table


def write_result(table: pd.DataFrame, spec: SweepSpec, out: Path) -> None:
    """Save the table as CSV and Parquet beside the sweep it came from."""
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "sweep.json", spec.model_dump_json(indent=2))
    atomic.write_text(out / RESULT_TABLE, table.to_csv(index=False))
    temporary = out / "results.parquet.tmp"
    table.to_parquet(temporary, index=False)
    os.replace(temporary, out / "results.parquet")


def load_result(path: Path) -> pd.DataFrame:
    """A sweep result: its folder, or the CSV/Parquet table itself."""
    if path.is_dir():
        path = path / RESULT_TABLE
    if not path.is_file():
        raise ConfigError(
            f"sweep result {str(path)!r} does not exist (expected a folder with {RESULT_TABLE})"
        )
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


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
