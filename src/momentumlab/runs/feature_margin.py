"""The feature–margin run kind (Jelassi & Li, SPEC §1): the cubic CNN on the feature–margin data.

Schema :class:`FeatureMarginRunConfig`; single-run trainer
:func:`momentumlab.train.feature_margin.train_feature_margin`; batched engine
:func:`momentumlab.train.feature_margin_batched.train_batched` for runs with equal
:func:`~momentumlab.train.feature_margin_batched.batch_key`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from momentumlab.config import StrictModel
from momentumlab.data.feature_margin import FeatureMarginDataConfig
from momentumlab.optim.momentum import OptimizerConfig
from momentumlab.runs.registry import MemoryEstimate, RunKind, check_lr_fits, register_run_kind
from momentumlab.train import feature_margin_batched
from momentumlab.train.feature_margin import train_feature_margin


class CubicCNNConfig(StrictModel):
    """Two-layer CNN with cubic activation and second layer fixed to ones (SPEC §1)."""

    width: int = Field(5, ge=1, description="m, number of filters")
    init_std: float = Field(0.05, gt=0, description="σ0, std of the Gaussian initialization")


class FeatureMarginTrainConfig(StrictModel):
    """How a feature–margin run is trained and what it logs."""

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


class FeatureMarginRunConfig(StrictModel):
    """Everything that determines one feature–margin run."""

    kind: Literal["feature_margin"] = "feature_margin"
    seed: int = Field(0, ge=0)
    data: FeatureMarginDataConfig = FeatureMarginDataConfig()
    model: CubicCNNConfig = CubicCNNConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: FeatureMarginTrainConfig = FeatureMarginTrainConfig()

    @model_validator(mode="after")
    def _batch_fits_data(self) -> FeatureMarginRunConfig:
        if self.train.batch_size is not None and self.train.batch_size > self.data.n_train:
            raise ValueError(
                f"train.batch_size = {self.train.batch_size} exceeds data.n_train = "
                f"{self.data.n_train}; allowed: 1..{self.data.n_train} or null (full batch)"
            )
        check_lr_fits(self.optimizer.lr, self.train.dtype)
        return self


def memory(config: FeatureMarginRunConfig) -> MemoryEstimate:
    """Peak memory of one run: its P patches of dimension d for every example, and the training set's
    P × m filter responses (a few live at once during a step), at the run's precision."""
    data, width = config.data, config.model.width
    examples = data.n_train + data.n_val + data.n_test
    values = examples * data.patches * data.dim + 4 * data.n_train * data.patches * width + width * data.dim
    itemsize = 8 if config.train.dtype == "float64" else 4
    return MemoryEstimate(
        itemsize * values,
        ("data.n_train", "data.n_val", "data.n_test", "data.patches", "data.dim", "model.width"),
    )


KIND = register_run_kind(
    RunKind(
        "feature_margin",
        FeatureMarginRunConfig,
        train_feature_margin,
        batch_key=feature_margin_batched.batch_key,
        train_batch=feature_margin_batched.train_batched,
        last_row=lambda config: ("step", config.train.steps),
        memory=memory,
    )
)
