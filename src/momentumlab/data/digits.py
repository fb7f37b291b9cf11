"""scikit-learn's handwritten digits: 1 797 grey 8×8 images of the digits 0–9, shipped with scikit-learn.

A small real image task for full-batch curvature measurements: the whole training set fits in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from momentumlab.data.images import ImageData, ImageSet

PIXEL_MAX = 16.0  # the raw pixels are integers 0..16
NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsSet:
    """Images (N, 1, 8, 8), float32 in [0, 1], and their labels (N,), long in 0..9."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class DigitsData:
    train: DigitsSet
    test: DigitsSet


def load_digits_dataset(test_fraction: float = 0.2, seed: int = 0) -> DigitsData:
    """The digits split into train and test, stratified by label; the split is a function of `seed`."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}: must lie strictly between 0 and 1")
    digits = load_digits()
    images = torch.from_numpy(digits.images / PIXEL_MAX).to(torch.float32).unsqueeze(1)
    labels = torch.from_numpy(digits.target).to(torch.long)
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    train_index, test_index = torch.from_numpy(train_index), torch.from_numpy(test_index)
    return DigitsData(
        train=DigitsSet(images[train_index], labels[train_index]),
        test=DigitsSet(images[test_index], labels[test_index]),
    )


def load_digits_images(test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """The same split as :func:`load_digits_dataset`, as the image pipelines' :class:`ImageData`."""
    data = load_digits_dataset(test_fraction, seed)
    return ImageData(
        name="digits",
        train=ImageSet.clean(data.train.inputs, data.train.labels),
        test=ImageSet.clean(data.test.inputs, data.test.labels),
        num_classes=NUM_CLASSES,
    )
