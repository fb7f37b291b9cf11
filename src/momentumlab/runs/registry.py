"""The registry of run kinds: which config schema, trainer and batched engine a kind of run has.

A run kind is plain data (:class:`RunKind`). Its config type is a pydantic model whose ``kind`` field
names the kind, so a config file or a stored ``config.json`` says which schema reads it. The kinds
of the package register themselves when :mod:`momentumlab.runs` is imported; a user's package adds
its own with :func:`register_run_kind` or through an entry point in the group
``momentumlab.run_kinds`` whose object is a :class:`RunKind`, found the first time a kind is asked for.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel

from momentumlab.config import ConfigError, apply_overrides, flatten, load_raw, validate
from momentumlab.runs.record import RunRecord

ENTRY_POINT_GROUP = "momentumlab.run_kinds"


class Trainer(Protocol):
    def __call__(
        self,
        config: Any,
        checkpoint_path: Path | None = None,
        progress: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> RunRecord:
        """Train one run of `config`, resuming from `checkpoint_path` when it holds a checkpoint.

        `on_step(t)` is called before step (or epoch) t; a trainer saves checkpoints at its own pace with
        :func:`momentumlab.train.checkpoint.save_checkpoint`, and records a non-finite loss as diverged.
        """


class BatchTrainer(Protocol):
    def __call__(
        self,
        configs: Sequence[Any],
        checkpoint_paths: Sequence[Path | None],
        progress: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> list[RunRecord]:
        """Train runs with equal batch keys in one computation; one record per config, in order, each
        equal to what the single-run trainer returns for that config."""


@dataclass(frozen=True)
class MemoryEstimate:
    """About how many bytes a run needs at its peak, and the config fields that set it."""

    bytes: int
    fields: tuple[str, ...]


@dataclass(frozen=True)
class RunKind:
    """A kind of training run: `config` is its schema (with a field ``kind: Literal[name]``), `train` its
    single-run trainer; `batch_key` and `train_batch`, when given, let runs with equal keys (not None)
    train together.

    What the store verifies when it reads a run back: `last_row(config)` gives the (column, value) the
    metrics of a complete run end at, and `divergence_column` the column that counts what a diverged
    run's `diverged_at_step` counts (its last row lies at or before it). `memory` estimates a run's
    peak memory, checked before it trains. Each is optional (a user's kind is verified by checksums).
    """

    name: str
    config: type[BaseModel]
    train: Trainer
    batch_key: Callable[[Any], str | None] | None = None
    train_batch: BatchTrainer | None = None
    last_row: Callable[[Any], tuple[str, float]] | None = None
    divergence_column: str = "step"
    memory: Callable[[Any], MemoryEstimate] | None = None

    def __post_init__(self) -> None:
        field = self.config.model_fields.get("kind")
        if field is None or field.default != self.name:
            raise ValueError(
                f"run kind {self.name!r}: its config {self.config.__name__} needs a field "
                f"kind: Literal[{self.name!r}] = {self.name!r}"
            )
        if (self.batch_key is None) != (self.train_batch is None):
            raise ValueError(f"run kind {self.name!r}: give both batch_key and train_batch, or neither")

    @property
    def module(self) -> str:
        """The module that defines the config; worker processes import it to know the kind."""
        return self.config.__module__

    def key(self, config: BaseModel) -> str | None:
        """The batch key of `config` (None: it trains alone), prefixed by the kind's name."""
        if self.batch_key is None:
            return None
        key = self.batch_key(config)
        return None if key is None else f"{self.name}:{key}"


_KINDS: dict[str, RunKind] = {}
_entry_points_loaded = False


def register_run_kind(kind: RunKind) -> RunKind:
    """Make `kind` known to the store, sweeps and the command line (re-registering a name replaces it)."""
    _KINDS[kind.name] = kind
    return kind


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        kind = entry_point.load()
        if not isinstance(kind, RunKind):
            raise ConfigError(
                f"entry point {entry_point.name} = {entry_point.value!r} in {ENTRY_POINT_GROUP} is not a "
                f"momentumlab RunKind (its type is {type(kind).__name__})"
            )
        register_run_kind(kind)


def run_kinds() -> dict[str, RunKind]:
    """Every registered kind by name (the package's, the entry points', the ones registered in code)."""
    _load_entry_points()
    return dict(_KINDS)


def run_kind(name: str) -> RunKind:
    """The kind called `name`, or a ConfigError listing the known ones."""
    kinds = run_kinds()
    if not isinstance(name, str) or name not in kinds:
        raise ConfigError(
            f"kind = {name!r} is not a registered run kind; allowed: {', '.join(sorted(kinds))}"
        )
    return kinds[name]


def kind_of(config: BaseModel) -> RunKind:
    """The kind whose schema `config` is."""
    return run_kind(config.kind)


def import_kind_module(module: str) -> None:
    """Import the module that registers a kind (in a worker process that has not seen it yet)."""
    importlib.import_module(module)


def parse_run_config(raw: dict[str, Any]) -> BaseModel:
    """Validate plain config data with the schema of the kind it names in its ``kind`` field."""
    if "kind" not in raw:
        raise ConfigError(
            "kind is missing: a run config names its kind at the top level; allowed: "
            + ", ".join(sorted(run_kinds()))
        )
    return validate(run_kind(raw["kind"]).config, raw)


def load_run_config(path: Path, overrides: Sequence[str] = ()) -> BaseModel:
    """A run config from a YAML or TOML file naming its kind, with dotted overrides applied, that this
    machine can run (:func:`check_runnable`)."""
    config = parse_run_config(apply_overrides(load_raw(path), list(overrides)))
    check_runnable(config)
    return config


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_lr_fits(lr: float, dtype: str) -> None:
    """Refuse a learning rate the weights' dtype cannot hold (float32 updates overflow above ~3.4e38)."""
    if dtype != "float64" and lr > FLOAT32_MAX:
        raise ValueError(
            f"optimizer.lr = {lr:g} overflows {dtype} weights; allowed: ≤ {FLOAT32_MAX:.4g} (or train.dtype "
            "= 'float64')"
        )


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:,.1f} GB"


def check_runnable(config: BaseModel) -> None:
    """Refuse a config this machine cannot run: a CUDA device it lacks, or a run whose memory estimate
    exceeds the device's memory (checked before anything is allocated)."""
    devices = {key: value for key, value in flatten(config.model_dump(mode="json")).items()}
    devices = {key: value for key, value in devices.items() if key.split(".")[-1] == "device"}
    for field, device in devices.items():
        if isinstance(device, str) and device.startswith("cuda"):
            index = int(device.partition(":")[2] or 0)
            available = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if index >= available:
                allowed = "'cpu'" + (f" or cuda:0..cuda:{available - 1}" if available else "")
                raise ConfigError(
                    f"{field} = {device!r}: this machine has {available} CUDA device(s); allowed: {allowed}"
                )
    estimate_memory = kind_of(config).memory
    if estimate_memory is None:
        return
    estimate = estimate_memory(config)
    device = next(iter(devices.values()), "cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        capacity = torch.cuda.get_device_properties(int(device.partition(":")[2] or 0)).total_memory
    else:
        capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if estimate.bytes > capacity:
        raw = flatten(config.model_dump(mode="json"))
        fields = ", ".join(f"{field} = {raw[field]}" for field in estimate.fields)
        raise ConfigError(
            f"{fields}: the run needs about {_gigabytes(estimate.bytes)} of memory, {device} has "
            f"{_gigabytes(capacity)}; allowed: sizes whose estimate fits"
        )
