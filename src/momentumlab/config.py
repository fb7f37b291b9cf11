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
import reprlib
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """An invalid configuration; the message names the field, the value and what is allowed."""


class PathError(ConfigError):
    """A path given as input that cannot be used (a file where a folder is needed, not writable, ...);
    the message names the path and the problem."""


INT_LIMIT = 2**63  # every integer field is stored as SQLite's (and torch's) signed 64-bit integer


def _admits(annotation: Any, kind: type) -> bool:
    """Whether a field annotation accepts values of type `kind` (through unions and Optional)."""
    if annotation is kind:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_admits(arg, kind) for arg in typing.get_args(annotation))
    return False


class StrictModel(BaseModel):
    """A frozen pydantic model that refuses unknown fields, non-finite floats, booleans given for numbers
    and integers beyond 64 bits."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        numeric = _admits(annotation, int) or _admits(annotation, float)
        if isinstance(value, bool) and numeric and not _admits(annotation, bool):
            raise ValueError("a boolean is not a number; allowed: a number")  # YAML's true is not 1
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _ints_fit_64_bits(cls, value: Any) -> Any:
        if type(value) is int and not -INT_LIMIT <= value < INT_LIMIT:
            raise ValueError("does not fit in 64 bits; allowed: below 2**63 = 9223372036854775808")
        return value


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
MAX_YAML_NODES = 100_000  # a YAML document whose aliases expand beyond this many nodes is refused
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, MAX_VALUE_CHARS, MAX_VALUE_CHARS


def _shown(value: Any) -> str:
    """repr(value), cut to about MAX_VALUE_CHARS characters without building the whole repr first."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else f"{text[:MAX_VALUE_CHARS]}…"


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
        if not item["loc"]:  # a check across fields: its message names them and their values
            lines.append(f"  {message}")
            continue
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
        parsed = load_yaml(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {_shown(text)}: value is not valid YAML ({error})") from None
    except ConfigError as error:
        raise ConfigError(f"override {key.strip()}: {error}") from None
    return key.strip().split("."), parsed


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing documents whose aliases expand beyond MAX_YAML_NODES nodes (an alias
    bomb is a few lines that expand to billions)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return None
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a recursive alias counts once
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            total = 1
            for child in children:
                total += expanded(child)
                if total > MAX_YAML_NODES:
                    break
            sizes[id(node)] = total
        return sizes[id(node)]

    if expanded(root) > MAX_YAML_NODES:
        raise ConfigError(
            f"YAML aliases expand to more than {MAX_YAML_NODES} values; allowed: at most {MAX_YAML_NODES}"
        )
    return yaml.SafeLoader(text).get_single_data()


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
    """Read a YAML or TOML file (UTF-8, not empty) into plain data."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text (byte {error.object[error.start]:#04x} at "
            f"position {error.start}); allowed: a UTF-8 YAML or TOML file"
        ) from None
    except OSError as error:
        raise PathError(f"config file {str(path)!r} cannot be read: {error.strerror}") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else load_yaml(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {str(path)!r} could not be parsed: {error}") from None
    except ConfigError as error:
        raise ConfigError(f"config file {str(path)!r}: {error}") from None
    if raw is None or raw == {}:
        raise ConfigError(f"config file {str(path)!r} is empty; allowed: a mapping (at least `kind: ...`)")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return raw
