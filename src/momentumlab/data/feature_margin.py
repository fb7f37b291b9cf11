"""The feature–margin distribution (D) of Jelassi & Li (SPEC §1, seed 001 §2).

Each example has P patches in R^d. One patch, at a uniformly random position p(X), carries the
feature: X[p] = c·w* with c = α·y (large margin, probability 1 − μ) or c = β·y (small margin,
probability μ). Every other patch is Gaussian noise orthogonal to w*: X[j] ~ N(0, σ²(I − w*w*ᵀ)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field, model_validator

from momentumlab.config import StrictModel


class FeatureMarginDataConfig(StrictModel):
    """The feature–margin distribution (D) of Jelassi & Li (SPEC §1)."""

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


@dataclass(frozen=True)
class FeatureMarginSet:
    """One sample of (D): inputs, labels and what the theory needs to know about each example."""

    inputs: torch.Tensor  # X, shape (N, P, d)
    labels: torch.Tensor  # y ∈ {−1, +1}, shape (N,)
    is_small_margin: torch.Tensor  # bool, shape (N,): the example is in Z_2
    signal_position: torch.Tensor  # p(X), long, shape (N,)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> FeatureMarginSet:
        return FeatureMarginSet(
            inputs=self.inputs.to(device=device, dtype=dtype),
            labels=self.labels.to(device=device, dtype=dtype),
            is_small_margin=self.is_small_margin.to(device),
            signal_position=self.signal_position.to(device),
        )

    def noise_patch_mask(self) -> torch.Tensor:
        """Bool (N, P): True at the noise patches j ≠ p(X_i)."""
        n, patches = self.labels.shape[0], self.inputs.shape[1]
        mask = torch.ones(n, patches, dtype=torch.bool, device=self.labels.device)
        mask[torch.arange(n, device=mask.device), self.signal_position] = False
        return mask


@dataclass(frozen=True)
class FeatureMarginData:
    """Train, test and validation samples of (D) sharing one feature direction w*."""

    feature: torch.Tensor  # w*, unit vector of shape (d,)
    train: FeatureMarginSet
    test: FeatureMarginSet
    validation: FeatureMarginSet

    def to(self, device: torch.device | str, dtype: torch.dtype) -> FeatureMarginData:
        return FeatureMarginData(
            feature=self.feature.to(device=device, dtype=dtype),
            train=self.train.to(device, dtype),
            test=self.test.to(device, dtype),
            validation=self.validation.to(device, dtype),
        )


def _sample(
    config: FeatureMarginDataConfig, feature: torch.Tensor, n: int, generator: torch.Generator
) -> FeatureMarginSet:

    d, patches = config.dim, config.patches
    labels = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    is_small_margin = torch.rand(n, generator=generator, dtype=torch.float64) < config.small_margin_fraction
    margin = torch.where(
        is_small_margin,
        torch.tensor(config.beta_margin, dtype=torch.float64),
        torch.tensor(config.large_margin, dtype=torch.float64),
    )
    signal_position = torch.randint(0, patches, (n,), generator=generator)
    noise = torch.randn(n, patches, d, generator=generator, dtype=torch.float64) * config.noise_std
    noise -= (noise @ feature)[..., None] * feature  # project onto the orthogonal complement of w*
    noise[torch.arange(n), signal_position] = (margin * labels)[:, None] * feature  # X[p] = c·w*
    return FeatureMarginSet(noise, labels, is_small_margin, signal_position)


def make_feature_margin_data(config: FeatureMarginDataConfig, seed: int) -> FeatureMarginData:
    """Draw w*, a training, a test and a validation set from (D), deterministically from `seed`
    (float64, CPU). The validation set is drawn last, so its size leaves train and test unchanged."""
    generator = torch.Generator().manual_seed(seed)
    feature = torch.randn(config.dim, generator=generator, dtype=torch.float64)
    feature /= feature.norm()
    train = _sample(config, feature, config.n_train, generator)
    test = _sample(config, feature, config.n_test, generator)
    validation = _sample(config, feature, config.n_val, generator)
    return FeatureMarginData(feature=feature, train=train, test=test, validation=validation)
