"""The teacher–student run kind (Jelassi & Li, Table 1): a ReLU student fitted to a random teacher's labels.

Schema :class:`TeacherStudentRunConfig`; single-run trainer
:func:`momentumlab.train.teacher_student.train_student`; batched engine
:func:`momentumlab.train.teacher_student_batched.train_students_batched` for runs with equal
:func:`~momentumlab.train.teacher_student_batched.student_batch_key`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from momentumlab.config import StrictModel
from momentumlab.data.teacher import TeacherDataConfig
from momentumlab.optim.momentum import OptimizerConfig
from momentumlab.runs.registry import MemoryEstimate, RunKind, check_lr_fits, register_run_kind
from momentumlab.train import teacher_student_batched
from momentumlab.train.teacher_student import train_student

StudentName = Literal["mlp1", "mlp2", "cnn1", "cnn2"]


class StudentConfig(StrictModel):
    """An over-parameterized ReLU student (same architecture family as the teachers), scalar output."""

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

    kind: Literal["teacher_student"] = "teacher_student"
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
        check_lr_fits(self.optimizer.lr, self.train.dtype)
        return self


def memory(config: TeacherStudentRunConfig) -> MemoryEstimate:
    """Peak memory of one run: the inputs, the student's activations on every example (one per hidden
    unit and layer, per coordinate for a CNN) with their gradients, and its parameters."""
    data, model = config.data, config.model
    examples = data.n_train + data.n_val + data.n_test
    convolution = model.architecture.startswith("cnn")
    layers = 2 if model.architecture.endswith("2") else 1
    per_unit = data.dim if convolution else 1
    parameters = model.width * (model.kernel_size if convolution else data.dim)
    if layers == 2:
        parameters += model.width * model.width * (model.kernel_size if convolution else 1)
    values = examples * data.dim + 2 * layers * examples * model.width * per_unit + 4 * parameters
    itemsize = 8 if config.train.dtype == "float64" else 4
    return MemoryEstimate(
        itemsize * values,
        ("data.n_train", "data.n_val", "data.n_test", "data.dim", "model.width", "model.architecture"),
    )


KIND = register_run_kind(
    RunKind(
        "teacher_student",
        TeacherStudentRunConfig,
        train_student,
        batch_key=teacher_student_batched.student_batch_key,
        train_batch=teacher_student_batched.train_students_batched,
        last_row=lambda config: ("epoch", config.train.epochs),
        divergence_column="epoch",
        memory=memory,
    )
)
