"""The registry of run kinds: which config schema, trainer and batched engine a kind of run has.

A run kind is plain data (:class:`RunKind`). Its config type is a pydantic model whose ``kind`` field
names the kind, so a config file or a stored ``config.json`` says which schema reads it. The kinds
of the package register themselves when :mod:`momentumlab.runs` is imported; a user's package adds
its own with :func:`register_run_kind` or through an entry point in the group
``momentumlab.run_kinds`` whose object is a :class:`RunKind`, found the first time a kind is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from momentumlab.config import ConfigError, apply_overrides, load_raw, validate
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
class RunKind:
    """A kind of training run: `config` is its schema (with a field ``kind: Literal[name]``), `train` its
    single-run trainer; `batch_key` and `train_batch`, when given, let runs with equal keys (not None)
    train together."""

    name: str
    config: type[BaseModel]
    train: Trainer
    batch_key: Callable[[Any], str | None] | None = None
    train_batch: BatchTrainer | None = None

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
    """A run config from a YAML or TOML file naming its kind, with dotted overrides applied."""
    return parse_run_config(apply_overrides(load_raw(path), list(overrides)))
