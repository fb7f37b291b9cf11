"""Image classification data shared by every image pipeline: CIFAR-10, CIFAR-100 and the digits.

Each example carries a group label, `is_corrupted`, so that every metric can be reported on the
small-margin (corrupted) subset of Figure 4 and on the rest (SPEC §1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from momentumlab.config import StrictModel

ImageDatasetName = Literal["cifar10", "cifar100", "digits"]
IMAGE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "digits")

DATA_DIR_VARIABLE = "MOMENTUMLAB_DATA"


class ImageDataConfig(StrictModel):
    """An image classification dataset, optionally subsampled and with a small-margin (corrupted) part."""

    name: ImageDatasetName = "cifar10"
    corrupted_fraction: float = Field(
        0.0, ge=0, lt=1, description="fraction of train and of test images made small-margin (Figure 4: 0.1)"
    )
    noise_variance: float = Field(0.005, ge=0, description="variance of the corruption's Gaussian noise")
    downsample: int = Field(2, ge=1, description="the corruption lowers the resolution by this factor")
    train_size: int | None = Field(None, ge=1, description="random training subset; null means all")
    test_size: int | None = Field(None, ge=1, description="random test subset; null means all")
    seed: int | None = Field(None, ge=0, description="data seed (split, subsets, corruption); null: run's")


@dataclass(frozen=True)
class ImageSet:
    """Images with their labels and group: the example is in the small-margin (corrupted) group."""

    images: torch.Tensor  # float32 (N, C, H, W) in [0, 1]
    labels: torch.Tensor  # int64 (N,)
    is_corrupted: torch.Tensor  # bool (N,)

    @classmethod
    def clean(cls, images: torch.Tensor, labels: torch.Tensor) -> ImageSet:
        """A set in which no example is corrupted."""
        return cls(images, labels, torch.zeros(labels.shape[0], dtype=torch.bool))

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The examples at `indices` (long indices or a bool mask), in that order."""
        return ImageSet(self.images[indices], self.labels[indices], self.is_corrupted[indices])


@dataclass(frozen=True)
class ImageData:
    """A named train/test pair of image sets over `num_classes` classes."""

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int


class DatasetError(RuntimeError):
    """A missing or unreadable dataset; the message says what was expected where, and how to get it."""


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The data folder: the argument if given, else $MOMENTUMLAB_DATA, else a :class:`DatasetError`."""
    if data_dir is not None:
        return Path(data_dir)
    from_environment = os.environ.get(DATA_DIR_VARIABLE, "")
    if from_environment:
        return Path(from_environment)
    raise DatasetError(
        "no data folder given: pass --data-dir D or set the environment variable "
        f"{DATA_DIR_VARIABLE}=D, where D holds cifar-10-batches-py/ or cifar-100-python/ "
        "(get them with `momentumlab data fetch cifar10 --dir D`)"
    )


def load_image_dataset(name: ImageDatasetName, data_dir: Path | None = None, seed: int = 0) -> ImageData:
    """Load `name`; CIFAR is read from the data folder, the digits ship with scikit-learn.

    `seed` fixes the digits' train/test split; CIFAR's split is the official one.
    """
    # Imported here: both loaders build on this module's types.
    from momentumlab.data.cifar import load_cifar
    from momentumlab.data.digits import load_digits_images

    if name == "digits":
        return load_digits_images(seed=seed)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, resolve_data_dir(data_dir))
    raise ValueError(f"dataset name {name!r} is unknown; allowed: {', '.join(IMAGE_DATASETS)}")
