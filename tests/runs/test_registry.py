"""The run-kind registry: the package's kinds, kinds a user registers in code or by entry point, errors."""

from __future__ import annotations

import sys
from typing import Literal

import pytest
from pydantic import Field

from momentumlab import RunKind, StrictModel, register_run_kind
from momentumlab.config import ConfigError
from momentumlab.runs import kind_of, parse_run_config, registry, run_kind, run_kinds
from momentumlab.runs.feature_margin import FeatureMarginRunConfig
from momentumlab.train.feature_margin import train_feature_margin
from momentumlab.train.feature_margin_batched import batch_key


class ToyConfig(StrictModel):
    kind: Literal["toy"] = "toy"
    seed: int = Field(0, ge=0)


def test_the_package_registers_its_three_kinds():
    kinds = run_kinds()
    assert {"feature_margin", "teacher_student", "image"} <= set(kinds)
    fm = kinds["feature_margin"]
    assert (fm.config, fm.train) == (FeatureMarginRunConfig, train_feature_margin)
    assert kinds["image"].batch_key is None and kinds["image"].key(kinds["image"].config()) is None
    config = FeatureMarginRunConfig()
    assert kind_of(config) is fm
    assert fm.key(config) == f"feature_margin:{batch_key(config)}"
    assert fm.module == "momentumlab.runs.feature_margin"


def test_a_kind_registered_in_code_parses_its_configs(monkeypatch):
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    kind = register_run_kind(RunKind("toy", ToyConfig, train_feature_margin))
    assert run_kind("toy") is kind
    assert parse_run_config({"kind": "toy", "seed": 3}) == ToyConfig(seed=3)
    with pytest.raises(ConfigError, match=r"seed = -1: Input should be greater than or equal to 0"):
        parse_run_config({"kind": "toy", "seed": -1})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seed": 1}, "kind is missing: a run config names its kind at the top level; allowed: "),
        ({"kind": "mlp"}, "kind = 'mlp' is not a registered run kind; allowed: feature_margin, image"),
        ({"kind": ["feature_margin"]}, "kind = ['feature_margin'] is not a registered run kind"),
    ],
)
def test_a_config_without_a_known_kind_is_refused(raw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_run_config(raw)


def test_a_kind_must_match_its_schema_and_give_both_batch_parts():
    class Unnamed(StrictModel):
        seed: int = 0

    with pytest.raises(ValueError, match=r"needs a field kind: Literal\['toy'\] = 'toy'"):
        RunKind("toy", Unnamed, train_feature_margin)
    with pytest.raises(ValueError, match=r"needs a field kind: Literal\['other'\]"):
        RunKind("other", ToyConfig, train_feature_margin)
    with pytest.raises(ValueError, match="give both batch_key and train_batch, or neither"):
        RunKind("toy", ToyConfig, train_feature_margin, batch_key=lambda config: "key")


def write_distribution(folder, name: str, entry_point: str) -> None:
    """An installed distribution as importlib.metadata sees it: a dist-info folder on sys.path."""
    info = folder / f"{name}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[momentumlab.run_kinds]\n{entry_point}\n")


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as a new process has it: entry points not read yet, no kinds registered by tests."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def test_an_entry_point_adds_a_kind(tmp_path, monkeypatch, fresh_registry):
    (tmp_path / "toy_kind.py").write_text(
        "from typing import Literal\n"
        "from momentumlab import RunKind, StrictModel\n"
        "from momentumlab.train.feature_margin import train_feature_margin\n"
        "class EntryConfig(StrictModel):\n"
        "    kind: Literal['entry_toy'] = 'entry_toy'\n"
        "KIND = RunKind('entry_toy', EntryConfig, train_feature_margin)\n"
    )
    write_distribution(tmp_path, "toy_kind", "entry_toy = toy_kind:KIND")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "toy_kind" not in sys.modules
    assert run_kind("entry_toy").config.__name__ == "EntryConfig"
    assert parse_run_config({"kind": "entry_toy"}).kind == "entry_toy"
    monkeypatch.delitem(sys.modules, "toy_kind")


def test_an_entry_point_that_is_not_a_kind_is_reported(tmp_path, monkeypatch, fresh_registry):
    (tmp_path / "not_a_kind.py").write_text("KIND = 42\n")
    write_distribution(tmp_path, "not_a_kind", "broken = not_a_kind:KIND")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ConfigError,
        match=r"entry point broken = 'not_a_kind:KIND' .* is not a momentumlab RunKind \(its type is int\)",
    ):
        run_kinds()
    monkeypatch.delitem(sys.modules, "not_a_kind")
