"""The image run kind: ResNet-18, WRN-16-k or a small CNN on CIFAR-10/100 or the digits (Figures 1 and 4).

Schema :class:`ImageRunConfig`; trainer :func:`momentumlab.train.images.train_images` (no batched engine:
one image run already fills the machine).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from momentumlab.config import StrictModel
from momentumlab.data.images import ImageDataConfig
from momentumlab.optim.graduated import GraduatedConfig
from momentumlab.optim.lr_schedules import LRScheduleConfig
from momentumlab.optim.momentum import OptimizerConfig
from momentumlab.runs.registry import RunKind, check_lr_fits, register_run_kind
from momentumlab.train.images import train_images


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

    kind: Literal["image"] = "image"
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
        check_lr_fits(self.optimizer.lr, "float32")
        return self


# Jelassi & Li's CIFAR training (Figures 1 and 4): 300 epochs; their grid-searched learning-rate schedule and
# weight decay are not reported, so this is one point of that grid (cosine after 5 warm-up epochs, 5e-4).
CIFAR_TRAIN = ImageTrainConfig(
    epochs=300,
    chunk_size=1000,
    weight_decay=5e-4,
    lr_schedule=LRScheduleConfig(name="cosine", warmup_epochs=5),
    device="cuda",
)

KIND = register_run_kind(
    RunKind("image", ImageRunConfig, train_images, last_row=lambda config: ("epoch", config.train.epochs))
)
