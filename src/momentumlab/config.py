"""Typed run configurations: validation, YAML/TOML loading, dotted overrides and a content hash.

A run is fully described by a :class:`RunConfig`. Its hash (:func:`config_hash`) keys the run store,
so two runs with the same hash are the same computation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """An invalid configuration; the message names the field, the value and what is allowed."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureMarginDataConfig(StrictModel):
    """The feature–margin distribution (D) of Jelassi & Li (SPEC §1)."""

    kind: Literal["feature_margin"] = "feature_margin"
    n_train: int = Field(20000, ge=1, description="N, training examples")
    n_test: int = Field(2000, ge=1, description="test examples")
    n_val: int = Field(2000, ge=0, description="validation examples (for choosing hyperparameters)")
    dim: int = Field(30, ge=2, description="d, patch dimension")
    patches: int = Field(5, ge=2, description="P, patches per example")
    alpha: float | None = Field(None, gt=0, description="large margin α; null means d^0.49")
    beta_margin: float = Field(0.2, gt=0, description="small margin β")
    noise_std: float = Field(0.5, ge=0, description="σ, std of the noise patches")
    small_margin_fraction: float = Field(0.02, ge=0, le=1, description="μ")
    seed: int | None = Field(None, ge=0, description="data seed; null means the run's seed")

    @property
    def large_margin(self) -> float:
        """α, resolved from the theory's scaling α = d^0.49 when not set."""
        return self.alpha if self.alpha is not None else self.dim**0.49

    @model_validator(mode="after")
    def _small_below_large(self) -> FeatureMarginDataConfig:
        if self.beta_margin >= self.large_margin:
            raise ValueError(
                f"beta_margin = {self.beta_margin} must be smaller than the large margin "
                f"alpha = {self.large_margin:.4g}"
            )
        return self


class CubicCNNConfig(StrictModel):
    """Two-layer CNN with cubic activation and second layer fixed to ones (SPEC §1)."""

    kind: Literal["cubic_cnn"] = "cubic_cnn"
    width: int = Field(5, ge=1, description="m, number of filters")
    init_std: float = Field(0.05, gt=0, description="σ0, std of the Gaussian initialization")


OptimizerName = Literal["gd", "ema_momentum", "heavy_ball", "nesterov"]


class OptimizerConfig(StrictModel):
    """Which update rule, with the learning rate and momentum in that rule's own parameterization.

    `ema_momentum` is the paper's GD+M (g ← γg + (1−γ)∇L; W ← W − ηg); `heavy_ball` and `nesterov`
    are PyTorch's forms (b ← μb + ∇L). See :mod:`momentumlab.optim.momentum` for the conversion.
    """

    name: OptimizerName = "gd"
    lr: float = Field(0.5, gt=0, description="η (or h for heavy ball)")
    momentum: float = Field(0.0, ge=0, lt=1, description="γ / β / μ depending on the rule")

    @model_validator(mode="after")
    def _gd_has_no_momentum(self) -> OptimizerConfig:
        if self.name == "gd" and self.momentum != 0:
            raise ValueError(
                f"momentum = {self.momentum} is not allowed with name = 'gd'; "
                "use 'ema_momentum', 'heavy_ball' or 'nesterov'"
            )
        return self


class TrainConfig(StrictModel):
    steps: int = Field(3000, ge=1, description="T, optimizer steps")
    batch_size: int | None = Field(None, ge=1, description="null means full batch")
    l2: float = Field(0.0, ge=0, description="λ in the objective's (λ/2)‖W‖²")
    gradient_penalty: float = Field(0.0, ge=0, description="adds this times ‖∇L‖² to the objective")
    log_every: int = Field(50, ge=1)
    log_geometric: bool = Field(
        False, description="also log at steps ⌈1.5^k⌉ (1, 2, 3, 4, …) below log_every"
    )
    sharpness_every: int | None = Field(
        None, ge=1, description="log the top Hessian eigenvalue every this many steps (and at the end)"
    )
    checkpoint_every: int = Field(500, ge=1)
    dtype: Literal["float32", "float64"] = "float32"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")


class RunConfig(StrictModel):
    """Everything that determines one training run."""

    seed: int = Field(0, ge=0)
    data: FeatureMarginDataConfig = FeatureMarginDataConfig()
    model: CubicCNNConfig = CubicCNNConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _batch_fits_data(self) -> RunConfig:
        if self.train.batch_size is not None and self.train.batch_size > self.data.n_train:
            raise ValueError(
                f"train.batch_size = {self.train.batch_size} exceeds data.n_train = "
                f"{self.data.n_train}; allowed: 1..{self.data.n_train} or null (full batch)"
            )
        return self


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


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(config)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"  {field} = {item['input']!r}: {message}")
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


def load_run_config(path: Path | None, overrides: list[str] = ()) -> RunConfig:
    """Load a :class:`RunConfig` from a file (or the defaults) with overrides applied."""
    raw = load_raw(path) if path is not None else {}
    return validate(RunConfig, apply_overrides(raw, list(overrides)))


class LRScheduleConfig(StrictModel):
    """The learning-rate factor per epoch (see :mod:`momentumlab.optim.lr_schedules`)."""

    name: Literal["constant", "cosine", "multistep"] = "constant"
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up from 1/(w+1) to 1 over this many epochs")
    final_factor: float = Field(0.0, ge=0, le=1, description="cosine: the factor it decays to")
    milestones: tuple[int, ...] = Field((), description="multistep: epochs at which the factor is × gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="multistep: the decay per milestone")

    @model_validator(mode="after")
    def _milestones_increase(self) -> LRScheduleConfig:
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones = {list(self.milestones)} must be strictly increasing epochs ≥ 1")
        return self


class ImageDataConfig(StrictModel):
    """An image classification dataset, optionally subsampled and with a small-margin (corrupted) part."""

    name: Literal["cifar10", "cifar100", "digits"] = "cifar10"
    corrupted_fraction: float = Field(
        0.0, ge=0, lt=1, description="fraction of train and of test images made small-margin (Figure 4: 0.1)"
    )
    noise_variance: float = Field(0.005, ge=0, description="variance of the corruption's Gaussian noise")
    downsample: int = Field(2, ge=1, description="the corruption lowers the resolution by this factor")
    train_size: int | None = Field(None, ge=1, description="random training subset; null means all")
    test_size: int | None = Field(None, ge=1, description="random test subset; null means all")
    seed: int | None = Field(None, ge=0, description="data seed (split, subsets, corruption); null: run's")


class ImageModelConfig(StrictModel):
    """Which image classifier; `norm` applies to the residual networks (the paper's Figure 1: none)."""

    name: Literal["resnet18", "wide_resnet16", "small_cnn"] = "resnet18"
    widen_factor: int = Field(8, ge=1, le=16, description="k of WRN-16-k")
    width: int = Field(16, ge=1, description="channels of the small CNN")
    norm: Literal["none", "batch"] = "none"

    @model_validator(mode="after")
    def _small_cnn_has_no_norm(self) -> ImageModelConfig:
        if self.name == "small_cnn" and self.norm != "none":
            raise ValueError(f"norm = {self.norm!r} is not available for small_cnn; allowed: 'none'")
        return self


class GraduatedConfig(StrictModel):
    """Implicit graduated optimization (Sato & Iiduka, SPEC §3): one hyperparameter moves each epoch so
    that the smoothing degree follows δ_{m+1} = γ_m δ_m (see :mod:`momentumlab.optim.schedules`)."""

    control: Literal["lr", "batch_size", "momentum"]
    variance: float = Field(gt=0, description="C², per-sample gradient variance (the noise probe's estimate)")
    gradient_bound: float = Field(gt=0, description="K, bound on the full-gradient norm")
    power: float = Field(0.9, gt=0, description="p in γ_m = ((M − m)/(M − m + 1))^p")


class ImageTrainConfig(StrictModel):
    """How an image classifier is trained: epochs, batches, regularization, schedule, device."""

    epochs: int = Field(300, ge=1)
    batch_size: int | None = Field(None, ge=1, description="null means full batch (one step per epoch)")
    chunk_size: int = Field(1000, ge=1, description="examples per forward/backward pass (memory bound)")
    weight_decay: float = Field(0.0, ge=0, description="coupled L2: adds (wd/2)‖θ‖² to the loss")
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    log_every_epochs: int = Field(1, ge=1)
    checkpoint_every_epochs: int = Field(1, ge=1)
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    bf16: bool = Field(True, description="bfloat16 autocast for forward and loss (CUDA only)")
    channels_last: bool = Field(True, description="channels-last memory format (CUDA only)")
    sharpness_at_end: bool = Field(True, description="log the top Hessian eigenvalue after the last epoch")
    graduated: GraduatedConfig | None = Field(None, description="graduated-optimization schedule, or none")


class ImageRunConfig(StrictModel):
    """Everything that determines one image-classification run."""

    seed: int = Field(0, ge=0)
    data: ImageDataConfig = ImageDataConfig()
    model: ImageModelConfig = ImageModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig(lr=0.1)
    train: ImageTrainConfig = ImageTrainConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ImageRunConfig:
        batch, train_size = self.train.batch_size, self.data.train_size
        if batch is not None and train_size is not None and batch > train_size:
            raise ValueError(
                f"train.batch_size = {batch} exceeds data.train_size = {train_size}; "
                f"allowed: 1..{train_size} or null (full batch)"
            )
        milestones = self.train.lr_schedule.milestones
        if milestones and milestones[-1] >= self.train.epochs:
            raise ValueError(
                f"train.lr_schedule.milestones = {list(milestones)} must lie below train.epochs = "
                f"{self.train.epochs}"
            )
        graduated = self.train.graduated
        if graduated is not None:
            if self.train.batch_size is None:
                raise ValueError("train.graduated needs minibatches; allowed: train.batch_size ≥ 1")
            if self.train.lr_schedule.name != "constant":
                raise ValueError(
                    f"train.lr_schedule.name = {self.train.lr_schedule.name!r} cannot combine with "
                    "train.graduated; allowed: 'constant'"
                )
            if self.optimizer.name == "nesterov" or (
                graduated.control == "momentum" and self.optimizer.name == "gd"
            ):
                raise ValueError(
                    f"optimizer.name = {self.optimizer.name!r} has no smoothing degree for "
                    f"train.graduated.control = {graduated.control!r}; allowed: 'heavy_ball' (SHB), "
                    "'ema_momentum' (NSHB)" + (", 'gd' (SGD)" if graduated.control != "momentum" else "")
                )
        if self.train.lr_schedule.warmup_epochs >= self.train.epochs:
            raise ValueError(
                f"train.lr_schedule.warmup_epochs = {self.train.lr_schedule.warmup_epochs} must be below "
                f"train.epochs = {self.train.epochs}"
            )
        return self


TeacherName = Literal["linear", "mlp1", "mlp2", "cnn1", "cnn2"]
StudentName = Literal["mlp1", "mlp2", "cnn1", "cnn2"]


class TeacherDataConfig(StrictModel):
    """Table 1's data (SPEC §1): x ~ N(0, I_d), y = sign(teacher(x)) for a random ReLU teacher.

    `mlp1`/`mlp2` have one/two hidden layers of `teacher_width` units; `cnn1`/`cnn2` one/two 1-D
    convolutions (`teacher_width` channels, `kernel_size`) over the d coordinates, then a linear read-out.
    """

    kind: Literal["teacher"] = "teacher"
    teacher: TeacherName = "linear"
    dim: int = Field(30, ge=2, description="d, input dimension")
    n_train: int = Field(500, ge=1)
    n_val: int = Field(1000, ge=0, description="validation examples (for choosing hyperparameters)")
    n_test: int = Field(5000, ge=1)
    teacher_width: int = Field(100, ge=1, description="hidden units / channels of the teacher")
    kernel_size: int = Field(5, ge=1, description="convolution kernel of a CNN teacher")
    seed: int | None = Field(None, ge=0, description="seed of the teacher and the inputs; null: run's")

    @model_validator(mode="after")
    def _kernel_fits(self) -> TeacherDataConfig:
        if self.teacher.startswith("cnn") and self.kernel_size > self.dim:
            raise ValueError(
                f"kernel_size = {self.kernel_size} exceeds dim = {self.dim}; allowed: 1..{self.dim}"
            )
        return self


class StudentConfig(StrictModel):
    """An over-parameterized ReLU student (same architecture family as the teachers), scalar output."""

    kind: Literal["student"] = "student"
    architecture: StudentName = "mlp1"
    width: int = Field(256, ge=1, description="hidden units (MLP) or channels (CNN)")
    kernel_size: int = Field(5, ge=1, description="convolution kernel (CNN)")


class StudentTrainConfig(StrictModel):
    """How a student is trained on the logistic loss of its ±1 labels."""

    epochs: int = Field(1000, ge=1)
    batch_size: int | None = Field(None, ge=1, description="null means full batch (GD)")
    weight_decay: float = Field(0.0, ge=0, description="coupled L2: adds (wd/2)‖θ‖² to the loss")
    log_every_epochs: int = Field(50, ge=1)
    checkpoint_every_epochs: int = Field(100, ge=1)
    dtype: Literal["float32", "float64"] = "float32"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")


class TeacherStudentRunConfig(StrictModel):
    """Everything that determines one teacher–student run (Table 1)."""

    seed: int = Field(0, ge=0, description="student initialization and minibatch order")
    data: TeacherDataConfig = TeacherDataConfig()
    model: StudentConfig = StudentConfig()
    optimizer: OptimizerConfig = OptimizerConfig(lr=0.1)
    train: StudentTrainConfig = StudentTrainConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TeacherStudentRunConfig:
        if self.train.batch_size is not None and self.train.batch_size > self.data.n_train:
            raise ValueError(
                f"train.batch_size = {self.train.batch_size} exceeds data.n_train = {self.data.n_train}; "
                f"allowed: 1..{self.data.n_train} or null (full batch)"
            )
        if self.model.architecture.startswith("cnn") and self.model.kernel_size > self.data.dim:
            raise ValueError(
                f"model.kernel_size = {self.model.kernel_size} exceeds data.dim = {self.data.dim}; "
                f"allowed: 1..{self.data.dim}"
            )
        return self
