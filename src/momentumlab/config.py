"""Config machinery shared by every typed config: validation, YAML/TOML loading, dotted overrides, a
content hash.

The schemas live with what they configure: each run kind's in :mod:`momentumlab.runs`, a data
distribution's in its :mod:`momentumlab.data` module, an optimizer's in :mod:`momentumlab.optim`, a
reproduction's settings beside the reproduction. A config's hash (:func:`config_hash`) keys the run
store, so two configs with the same hash are the same computation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """An invalid configuration; the message names the field, the value and what is allowed."""


class StrictModel(BaseModel):
    """A frozen pydantic model that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def content_hash(raw: dict[str, Any]) -> str:
    """Stable hash (16 hex digits) of plain config data in canonical JSON form."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def config_hash(config: BaseModel) -> str:
    """Stable content hash (16 hex digits) of a config's full, canonical JSON form."""
    return content_hash(config.model_dump(mode="json"))


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config data → {dotted field: value} (tuples become lists, as in JSON)."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


MAX_VALUE_CHARS = 120  # an echoed value longer than this is cut (a config can be megabytes)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else f"{text[:MAX_VALUE_CHARS]}… ({len(text)} characters)"


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(config)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            lines.append(f"  {field}: missing (a required field)")
            continue
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"  {field} = {_shown(item['input'])}: {message}")
    return "invalid config:\n" + "\n".join(lines)


def validate(model_type: type[BaseModel], raw: dict[str, Any]) -> Any:
    """Build `model_type` from plain data, turning validation errors into a :class:`ConfigError`."""
    try:
        return model_type.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({error})") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted ``key=value`` override set."""
    result = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(path[: depth + 1])
                raise ConfigError(f"override {text!r}: {prefix} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def load_raw(path: Path) -> dict[str, Any]:
    """Read a YAML or TOML file into plain data."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {str(path)!r} could not be parsed: {error}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return raw
