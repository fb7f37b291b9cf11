"""FeatureMarginRunConfig: defaults, YAML/TOML loading, dotted overrides, error messages and the content hash."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import TINY_RAW, make_tiny_config, tiny_raw
from pydantic import ValidationError

from momentumlab.config import ConfigError, apply_overrides, config_hash, load_raw, parse_override, validate
from momentumlab.runs import load_run_config, parse_run_config
from momentumlab.runs.feature_margin import FeatureMarginRunConfig

TINY_YAML = """\
kind: feature_margin
seed: 3
data:
  n_train: 400
  n_test: 200
  dim: 10
  patches: 3
  alpha: 4.0
model:
  width: 4
  init_std: 0.1
optimizer:
  name: ema_momentum
  lr: 0.25
  momentum: 0.9
train:
  steps: 60
  batch_size: 40
  l2: 0.001
  log_every: 10
  checkpoint_every: 20
  dtype: float64
"""

TINY_TOML = """\
kind = "feature_margin"
seed = 3

[data]
n_train = 400
n_test = 200
dim = 10
patches = 3
alpha = 4.0

[model]
width = 4
init_std = 0.1

[optimizer]
name = "ema_momentum"
lr = 0.25
momentum = 0.9

[train]
steps = 60
batch_size = 40
l2 = 0.001
log_every = 10
checkpoint_every = 20
dtype = "float64"
"""

# The same config as TINY_YAML, as Python data with every section and key in a different order.
TINY_DICT_REORDERED = {
    "train": {
        "dtype": "float64",
        "checkpoint_every": 20,
        "log_every": 10,
        "l2": 0.001,
        "batch_size": 40,
        "steps": 60,
    },
    "optimizer": {"momentum": 0.9, "lr": 0.25, "name": "ema_momentum"},
    "model": {"init_std": 0.1, "width": 4},
    "data": {"alpha": 4.0, "patches": 3, "dim": 10, "n_test": 200, "n_train": 400},
    "seed": 3,
    "kind": "feature_margin",
}

# config_hash(FeatureMarginRunConfig()) with the top-level `kind` (since run kinds are a registry). The
# hash is the run store's key: if this value changes (a default changed, a field was added or renamed, or
# the hashing itself changed), every stored run is orphaned and will be retrained. Update it on purpose only.
DEFAULT_CONFIG_HASH = "9d8b85498a47cf01"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def from_overrides(overrides: list[str] = ()) -> FeatureMarginRunConfig:
    """The feature–margin defaults with dotted overrides, as `momentumlab run` builds a config."""
    return parse_run_config(apply_overrides({"kind": "feature_margin"}, list(overrides)))


def config_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        from_overrides(overrides)
    return str(caught.value)


# --- defaults and loading ----------------------------------------------------------------------------


def test_defaults_validate_to_the_documented_values():
    config = FeatureMarginRunConfig()
    assert validate(FeatureMarginRunConfig, {}) == config
    assert from_overrides() == config
    assert config.seed == 0
    assert (config.data.n_train, config.data.n_test, config.data.dim, config.data.patches) == (
        20000,
        2000,
        30,
        5,
    )
    assert config.data.alpha is None
    assert config.data.large_margin == pytest.approx(30**0.49)
    assert (config.model.width, config.model.init_std) == (5, 0.05)
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.momentum) == ("gd", 0.5, 0.0)
    assert (config.train.steps, config.train.batch_size, config.train.l2) == (3000, None, 0.0)
    assert (config.train.dtype, config.train.device) == ("float32", "cpu")


def test_yaml_and_toml_give_the_same_config(tmp_path):
    from_yaml = load_run_config(write(tmp_path, "run.yaml", TINY_YAML))
    from_toml = load_run_config(write(tmp_path, "run.toml", TINY_TOML))
    assert from_yaml == from_toml
    assert from_yaml.seed == 3
    assert from_yaml.data.alpha == 4.0 and from_yaml.data.large_margin == 4.0
    assert from_yaml.optimizer.name == "ema_momentum"
    assert from_yaml.optimizer.momentum == 0.9
    assert from_yaml.train.batch_size == 40
    assert from_yaml.train.dtype == "float64"
    assert config_hash(from_yaml) == config_hash(from_toml)


def test_yml_suffix_is_read_as_yaml_and_a_config_must_name_its_kind(tmp_path):
    assert load_run_config(write(tmp_path, "run.yml", TINY_YAML)).optimizer.lr == 0.25
    with pytest.raises(ConfigError, match="kind is missing.*allowed: feature_margin, image, teacher_student"):
        load_run_config(write(tmp_path, "nameless.yaml", "seed: 3\n"))
    for text in ("", "# nothing but a comment\n", "{}\n"):  # never the defaults of some kind
        with pytest.raises(ConfigError, match="is empty; allowed: a mapping"):
            load_run_config(write(tmp_path, "empty.yaml", text))
    with pytest.raises(
        ConfigError, match="kind = 'mlp' is not a registered run kind; allowed: feature_margin"
    ):
        load_run_config(write(tmp_path, "unknown.yaml", "kind: mlp\n"))


def test_the_shipped_config_file_loads():
    path = Path(__file__).resolve().parents[1] / "configs" / "feature_margin_gdm.yaml"
    config = load_run_config(path)
    assert config.optimizer.name == "ema_momentum"
    assert (config.optimizer.lr, config.optimizer.momentum) == (0.5, 0.99)
    assert config.train.steps == 5000
    assert config.train.log_every == 50


# --- overrides ---------------------------------------------------------------------------------------


def test_parse_override_splits_the_path_and_yaml_parses_the_value():
    assert parse_override("optimizer.lr=0.1") == (["optimizer", "lr"], 0.1)
    assert isinstance(parse_override("optimizer.lr=0.1")[1], float)
    assert parse_override("train.batch_size=null") == (["train", "batch_size"], None)
    assert parse_override("train.batch_size=") == (["train", "batch_size"], None)
    assert parse_override("train.steps=12") == (["train", "steps"], 12)
    assert parse_override("optimizer.name=heavy_ball") == (["optimizer", "name"], "heavy_ball")
    assert parse_override(" seed =7") == (["seed"], 7)
    assert parse_override("data.note=a=b") == (["data", "note"], "a=b")  # only the first '=' splits


def test_overrides_set_nested_values_with_yaml_types(tmp_path):
    path = write(tmp_path, "run.yaml", TINY_YAML)
    config = load_run_config(
        path,
        [
            "optimizer.lr=0.1",
            "train.batch_size=null",
            "seed=11",
            "optimizer.name=heavy_ball",
            "data.alpha=null",
        ],
    )
    assert config.optimizer.lr == 0.1 and isinstance(config.optimizer.lr, float)
    assert config.train.batch_size is None
    assert config.seed == 11
    assert config.optimizer.name == "heavy_ball"
    assert config.optimizer.momentum == 0.9  # untouched values come from the file
    assert config.data.alpha is None and config.data.large_margin == pytest.approx(10**0.49)


def test_apply_overrides_copies_and_creates_sections():
    raw = {"optimizer": {"lr": 0.5}}
    result = apply_overrides(raw, ["optimizer.momentum=0.9", "train.l2=1e-3", "optimizer.lr=0.2"])
    assert raw == {"optimizer": {"lr": 0.5}}  # the input is not modified
    assert result == {"optimizer": {"lr": 0.2, "momentum": 0.9}, "train": {"l2": "1e-3"}}
    # PyYAML reads '1e-3' as a string; validation still turns it into the float.
    assert validate(FeatureMarginRunConfig, {"train": result["train"]}).train.l2 == 0.001


def test_later_overrides_win():
    assert from_overrides(["optimizer.lr=0.1", "optimizer.lr=0.3"]).optimizer.lr == 0.3


@pytest.mark.parametrize("text", ["optimizer.lr", "noequals", "=0.1", " =0.1"])
def test_malformed_override_is_rejected(text):
    with pytest.raises(ConfigError, match="must look like key.path=value") as caught:
        from_overrides([text])
    assert repr(text) in str(caught.value)


def test_override_with_invalid_yaml_is_rejected():
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        parse_override("train.steps=[1,")
    assert "'train.steps=[1,'" in str(caught.value)


def test_override_into_a_value_is_rejected(tmp_path):
    path = write(tmp_path, "run.yaml", TINY_YAML)
    with pytest.raises(ConfigError) as caught:
        load_run_config(path, ["optimizer.lr.x=1"])
    assert "optimizer.lr is a value, not a section" in str(caught.value)


# --- validation messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field", "value", "allowed"),
    [
        ("optimizer.momentum=1.5", "optimizer.momentum", "1.5", "less than 1"),
        ("optimizer.momentum=-0.1", "optimizer.momentum", "-0.1", "greater than or equal to 0"),
        ("optimizer.lr=0", "optimizer.lr", "0", "greater than 0"),
        ("optimizer.lr=-2.5", "optimizer.lr", "-2.5", "greater than 0"),
        ("train.steps=0", "train.steps", "0", "greater than or equal to 1"),
        ("train.batch_size=0", "train.batch_size", "0", "greater than or equal to 1"),
        ("data.small_margin_fraction=1.2", "data.small_margin_fraction", "1.2", "less than or equal to 1"),
        ("data.dim=1", "data.dim", "1", "greater than or equal to 2"),
        ("model.init_std=0", "model.init_std", "0", "greater than 0"),
        ("seed=-1", "seed", "-1", "greater than or equal to 0"),
        (
            "optimizer.name=adam",
            "optimizer.name",
            "'adam'",
            "'gd', 'ema_momentum', 'heavy_ball' or 'nesterov'",
        ),
        ("train.dtype=float16", "train.dtype", "'float16'", "'float32' or 'float64'"),
        ("train.device=tpu", "train.device", "'tpu'", "cpu|cuda"),
        ("train.steps=1.5", "train.steps", "1.5", "valid integer"),
    ],
)
def test_invalid_value_names_field_value_and_allowed_range(override, field, value, allowed):
    message = config_error([override])
    assert message.startswith("invalid config:")
    assert f"{field} = {value}:" in message
    assert allowed in message


def test_every_invalid_field_is_reported_at_once():
    message = config_error(["optimizer.lr=-1", "train.steps=0"])
    assert "optimizer.lr = -1:" in message
    assert "train.steps = 0:" in message


@pytest.mark.parametrize(
    ("override", "field"),
    [("optimizer.momentm=0.5", "optimizer.momentm"), ("foo=1", "foo"), ("train.epochs=3", "train.epochs")],
)
def test_unknown_fields_are_reported(override, field):
    message = config_error([override])
    assert f"{field} = " in message
    assert "unknown field" in message


def test_unknown_field_in_a_file_is_reported(tmp_path):
    path = write(tmp_path, "run.yaml", TINY_YAML.replace("  width: 4\n", "  width: 4\n  depth: 2\n"))
    with pytest.raises(ConfigError) as caught:
        load_run_config(path)
    assert "model.depth = 2: unknown field" in str(caught.value)


def test_gd_with_momentum_is_rejected():
    message = config_error(["optimizer.momentum=0.5"])
    assert "momentum = 0.5 is not allowed with name = 'gd'" in message
    assert "ema_momentum" in message  # says what to use instead
    # With a momentum rule the same value is fine, and GD with momentum 0 is fine.
    assert from_overrides(["optimizer.name=ema_momentum", "optimizer.momentum=0.5"]).optimizer.momentum == 0.5
    assert from_overrides(["optimizer.momentum=0"]).optimizer.name == "gd"


def test_batch_size_larger_than_the_training_set_is_rejected():
    message = config_error(["data.n_train=400", "train.batch_size=401"])
    assert "train.batch_size = 401 exceeds data.n_train = 400" in message
    assert "allowed: 1..400 or null (full batch)" in message
    assert from_overrides(["data.n_train=400", "train.batch_size=400"]).train.batch_size == 400


def test_small_margin_must_be_below_large_margin():
    message = config_error(["data.alpha=0.5", "data.beta_margin=0.5"])
    assert "beta_margin = 0.5 must be smaller than the large margin alpha = 0.5" in message


def test_missing_file_is_rejected(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_run_config(missing)
    assert str(caught.value) == f"config file {str(missing)!r} does not exist"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.yaml", "seed: [1, 2\n", "could not be parsed"),
        ("bad.toml", "seed = = 1\n", "could not be parsed"),
        ("list.yaml", "- 1\n- 2\n", "must hold a mapping at the top level"),
    ],
)
def test_unparsable_files_are_rejected(tmp_path, name, text, expected):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_raw(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("date.yaml", "kind: feature_margin\nseed: 2020-01-01\n"),
        ("date.toml", 'kind = "feature_margin"\nseed = 2020-01-01\n'),
    ],
)
def test_a_date_value_in_a_file_is_a_config_error(tmp_path, name, text):
    # YAML and TOML both parse 2020-01-01 as a date, which is not JSON data.
    with pytest.raises(ConfigError) as caught:
        load_run_config(write(tmp_path, name, text))
    assert "seed = datetime.date(2020, 1, 1): Input should be a valid integer" in str(caught.value)


def test_configs_are_frozen():
    config = FeatureMarginRunConfig()
    with pytest.raises(ValidationError, match="frozen"):
        config.seed = 5  # type: ignore[misc]
    assert config.seed == 0


# --- content hash ------------------------------------------------------------------------------------


def test_hash_is_16_hex_digits_and_pinned_for_the_defaults():
    value = config_hash(FeatureMarginRunConfig())
    assert re.fullmatch(r"[0-9a-f]{16}", value)
    assert value == DEFAULT_CONFIG_HASH


def test_hash_is_equal_for_equal_configs_built_differently(tmp_path):
    from_yaml = load_run_config(write(tmp_path, "run.yaml", TINY_YAML))
    from_toml = load_run_config(write(tmp_path, "run.toml", TINY_TOML))
    from_dict = validate(FeatureMarginRunConfig, TINY_DICT_REORDERED)
    overridden = from_overrides(
        [
            "seed=3",
            "data.n_train=400",
            "data.n_test=200",
            "data.dim=10",
            "data.patches=3",
            "data.alpha=4.0",
            "model.width=4",
            "model.init_std=0.1",
            "optimizer.name=ema_momentum",
            "optimizer.lr=0.25",
            "optimizer.momentum=0.9",
            "train.steps=60",
            "train.batch_size=40",
            "train.l2=0.001",
            "train.log_every=10",
            "train.checkpoint_every=20",
            "train.dtype=float64",
        ],
    )
    # Spelling defaults out explicitly, or giving an int where a float is expected, changes nothing.
    explicit = validate(
        FeatureMarginRunConfig,
        TINY_DICT_REORDERED
        | {
            "model": {"init_std": 0.1, "width": 4},
            "optimizer": {"momentum": 0.9, "lr": 0.25, "name": "ema_momentum"},
        },
    )
    hashes = {config_hash(c) for c in (from_yaml, from_toml, from_dict, overridden, explicit)}
    assert len(hashes) == 1
    assert config_hash(FeatureMarginRunConfig()) == config_hash(
        validate(FeatureMarginRunConfig, {"optimizer": {"lr": 0.5, "momentum": 0}})
    )
    assert config_hash(validate(FeatureMarginRunConfig, {"optimizer": {"lr": 1}})) == config_hash(
        validate(FeatureMarginRunConfig, {"optimizer": {"lr": 1.0}})
    )


# One change per field of the tiny config; each must give a different run id.
CHANGES = [
    "seed=1",
    "data.n_train=401",
    "data.n_test=201",
    "data.n_val=199",
    "data.dim=11",
    "data.patches=4",
    "data.alpha=3.0",
    "data.beta_margin=0.3",
    "data.noise_std=0.4",
    "data.small_margin_fraction=0.03",
    "data.seed=0",
    "model.width=5",
    "model.init_std=0.06",
    "optimizer.name=heavy_ball",
    "optimizer.lr=0.51",
    "train.steps=61",
    "train.batch_size=40",
    "train.l2=0.01",
    "train.gradient_penalty=0.01",
    "train.sharpness_every=7",
    "train.log_every=11",
    "train.log_geometric=true",
    "train.checkpoint_every=21",
    "train.dtype=float64",
    "train.device=cuda",
]


def test_hash_changes_with_every_field():
    base = make_tiny_config()
    hashes = {config_hash(base)}
    for change in CHANGES:
        changed = make_tiny_config(change)
        assert changed != base, change
        hashes.add(config_hash(changed))
    momentum = make_tiny_config("optimizer.name=ema_momentum", "optimizer.momentum=0.9")
    momentum_changed = make_tiny_config("optimizer.name=ema_momentum", "optimizer.momentum=0.95")
    hashes |= {config_hash(momentum), config_hash(momentum_changed)}
    assert len(hashes) == len(CHANGES) + 3  # all distinct


def test_hash_covers_every_field_of_the_config():
    """A field left out of the hash would let two different computations share a run id."""
    leaves = []

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                leaves.append(f"{prefix}{key}")

    walk(FeatureMarginRunConfig().model_dump(mode="json"), "")
    changed_fields = {change.split("=")[0] for change in CHANGES} | {"optimizer.momentum"}
    # `kind` has a single allowed value per schema, so it cannot change.
    assert set(leaves) - changed_fields == {"kind"}


def test_hash_of_the_tiny_config_is_stable_within_a_process():
    assert config_hash(make_tiny_config()) == config_hash(validate(FeatureMarginRunConfig, tiny_raw()))
    assert config_hash(make_tiny_config()) == config_hash(validate(FeatureMarginRunConfig, TINY_RAW))
