"""Table 1's teacher data (Jelassi & Li, SPEC §1): Gaussian inputs labelled by a random ReLU teacher.

x ~ N(0, I_d) and y = sign(f*(x) − m*), where f* is a randomly initialized network of
:mod:`momentumlab.models.mlp` (``linear``, ``mlp1``, ``mlp2``, ``cnn1``, ``cnn2``) and m* is the
median of f* over an auxiliary sample of :data:`OFFSET_SAMPLE` fresh inputs. A random ReLU network's
output has a nonzero mean (its read-out sees nonnegative features), so sign(f*) alone can give nearly
all-positive labels; subtracting the median makes both labels about equally likely while keeping the
decision boundary a level set of the teacher. The offset depends on the teacher only, not on the
training sample.

Inputs, teacher and offset sample come from three generators seeded by the data seed alone, so one
seed gives the same inputs under every teacher, and everything is deterministic in the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator

from momentumlab.config import StrictModel
from momentumlab.models.mlp import build_network
from momentumlab.seeds import TEACHER_STREAMS

OFFSET_SAMPLE = 2**12  # inputs used for the median m*; its label imbalance is about 0.5/√OFFSET_SAMPLE (1%)
TeacherName = Literal["linear", "mlp1", "mlp2", "cnn1", "cnn2"]


class TeacherDataConfig(StrictModel):
    """Table 1's data (SPEC §1): x ~ N(0, I_d), y = sign(teacher(x)) for a random ReLU teacher.

    `mlp1`/`mlp2` have one/two hidden layers of `teacher_width` units; `cnn1`/`cnn2` one/two 1-D
    convolutions (`teacher_width` channels, `kernel_size`) over the d coordinates, then a linear read-out.
    """

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


@dataclass(frozen=True)
class TeacherSet:
    """Inputs x of shape (N, d) and labels y ∈ {−1, +1} of shape (N,)."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> TeacherSet:
        return TeacherSet(
            self.inputs.to(device=device, dtype=dtype), self.labels.to(device=device, dtype=dtype)
        )


@dataclass(frozen=True)
class TeacherData:
    """Train, validation and test samples labelled by one teacher."""

    train: TeacherSet
    validation: TeacherSet
    test: TeacherSet

    def to(self, device: torch.device | str, dtype: torch.dtype) -> TeacherData:
        return TeacherData(
            self.train.to(device, dtype), self.validation.to(device, dtype), self.test.to(device, dtype)
        )


def make_teacher(config: TeacherDataConfig, seed: int) -> torch.nn.Module:
    """The random teacher network f* of `seed`, in float64."""
    generator = torch.Generator().manual_seed(seed * TEACHER_STREAMS + 1)
    teacher = build_network(config.teacher, config.dim, config.teacher_width, config.kernel_size, generator)
    return teacher.to(torch.float64)


@torch.no_grad()
def make_teacher_data(config: TeacherDataConfig, seed: int) -> TeacherData:
    """Train/validation/test sets of `config`, deterministic in `seed` (float64 inputs, ±1 labels)."""
    teacher = make_teacher(config, seed)
    offset_inputs = torch.randn(
        OFFSET_SAMPLE,
        config.dim,
        generator=torch.Generator().manual_seed(seed * TEACHER_STREAMS + 2),
        dtype=torch.float64,
    )
    offset = teacher(offset_inputs).median()  # m*
    generator = torch.Generator().manual_seed(seed * TEACHER_STREAMS)
    sets = []
    for n in (config.n_train, config.n_val, config.n_test):
        inputs = torch.randn(n, config.dim, generator=generator, dtype=torch.float64)
        labels = torch.where(teacher(inputs) > offset, 1.0, -1.0).to(torch.float64)  # y = sign(f*(x) − m*)
        sets.append(TeacherSet(inputs, labels))
    return TeacherData(*sets)
