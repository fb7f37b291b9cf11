"""CIFAR-10 and CIFAR-100 read from a local folder in the official python-pickle format.

The official archives (https://www.cs.toronto.edu/~kriz/cifar.html) extract to `cifar-10-batches-py/`
(data_batch_1 … data_batch_5, test_batch) and `cifar-100-python/` (train, test). Each file is a pickled
dict: b"data" is uint8 (N, 3072), each row the 1024 red, then 1024 green, then 1024 blue values of a
32×32 image in row-major order; b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100) lists the classes.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from momentumlab.atomic import atomic_write
from momentumlab.data.images import DatasetError, ImageData, ImageSet

CifarName = Literal["cifar10", "cifar100"]
Split = Literal["train", "test"]

CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
CHANNELS, SIDE = 3, 32
PIXELS_PER_IMAGE = CHANNELS * SIDE * SIDE  # 3072
CIFAR10_TRAIN_BATCHES = 5

# What pickle.load raises on truncated or corrupted bytes (seen by fuzzing files; ValueError covers the
# Unicode errors, ImportError a garbled class path, MemoryError a garbled length).
UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
)

# The official fine → coarse (superclass) map of CIFAR-100, only needed to write files in its format.
CIFAR100_COARSE_OF_FINE = np.array(
    [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15]
    + [0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17]
    + [4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4]
    + [6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]
)


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant lives inside the data folder and how its files name the labels."""

    title: str
    folder: str
    archive: str
    files: dict[str, tuple[str, ...]]  # split → file names
    label_key: bytes
    num_classes: int


LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        files={
            "train": tuple(f"data_batch_{k}" for k in range(1, CIFAR10_TRAIN_BATCHES + 1)),
            "test": ("test_batch",),
        },
        label_key=b"labels",
        num_classes=10,
    ),
    "cifar100": CifarLayout(
        title="CIFAR-100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        files={"train": ("train",), "test": ("test",)},
        label_key=b"fine_labels",
        num_classes=100,
    ),
}


def _layout(name: str) -> CifarLayout:
    if name not in LAYOUTS:
        raise ValueError(f"CIFAR dataset name {name!r} is unknown; allowed: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def _how_to_get(name: str, data_dir: Path) -> str:
    layout = LAYOUTS[name]
    return (
        f"get it with `momentumlab data fetch {name} --dir {data_dir}`, or download {layout.archive} "
        f"(the python version) from {CIFAR_PAGE} and extract it into {data_dir}"
    )


def _read_file(name: str, data_dir: Path, path: Path) -> tuple[np.ndarray, np.ndarray]:
    layout = LAYOUTS[name]

    def fail(problem: str) -> DatasetError:
        return DatasetError(
            f"{layout.title}: {problem}; expected the official python-pickle file at {path}; "
            + _how_to_get(name, data_dir)
        )

    if not path.is_file():
        raise fail(f"the file {path} is missing")
    try:
        with path.open("rb") as stream:
            batch: Any = pickle.load(stream, encoding="bytes")
    except UNPICKLING_ERRORS as error:
        raise fail(f"{path} is corrupt or truncated ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
        raise fail(f"{path} is not a dict with the keys b'data' and {layout.label_key!r}")
    data = batch[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise fail(f"{path}: b'data' must be a uint8 array of shape (N, {PIXELS_PER_IMAGE})")
    if data.shape[1] != PIXELS_PER_IMAGE:
        raise fail(f"{path}: b'data' has shape {data.shape}, expected (N, {PIXELS_PER_IMAGE})")
    labels = np.asarray(batch[layout.label_key])
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise fail(f"{path}: {layout.label_key!r} must hold {data.shape[0]} integer labels")
    if labels.size and not 0 <= labels.min() <= labels.max() < layout.num_classes:
        raise fail(
            f"{path}: labels range over {labels.min()}..{labels.max()}, expected 0..{layout.num_classes - 1}"
        )
    return data, labels.astype(np.int64)


def read_cifar_split(name: CifarName, data_dir: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """One split's validated pixels, uint8 (N, 3072), and labels, int64 (N,); else a DatasetError."""
    layout = _layout(name)
    folder = data_dir / layout.folder
    if not folder.is_dir():
        raise DatasetError(
            f"{layout.title} not found: expected the folder {folder} holding "
            f"{', '.join(sum(layout.files.values(), ()))}; " + _how_to_get(name, data_dir)
        )
    parts = [_read_file(name, data_dir, folder / file) for file in layout.files[split]]
    return np.concatenate([data for data, _ in parts]), np.concatenate([labels for _, labels in parts])


def verify_cifar(name: CifarName, data_dir: Path) -> None:
    """Read and validate every file of the dataset without converting it; raise DatasetError if broken."""
    for split in ("train", "test"):
        read_cifar_split(name, data_dir, split)


def _image_set(data: np.ndarray, labels: np.ndarray) -> ImageSet:
    images = torch.from_numpy(data).reshape(-1, CHANNELS, SIDE, SIDE).to(torch.float32) / 255.0
    return ImageSet.clean(images, torch.from_numpy(labels))


def load_cifar(name: CifarName, data_dir: Path) -> ImageData:
    """CIFAR-10 or CIFAR-100 (fine labels) from `data_dir`: images float32 (N, 3, 32, 32) in [0, 1]."""
    return ImageData(
        name=name,
        train=_image_set(*read_cifar_split(name, data_dir, "train")),
        test=_image_set(*read_cifar_split(name, data_dir, "test")),
        num_classes=_layout(name).num_classes,
    )


def _check_images(images: np.ndarray, labels: np.ndarray, split: str, num_classes: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (SIDE, SIDE, CHANNELS):
        raise ValueError(
            f"{split}_images: dtype {images.dtype}, shape {images.shape}; expected uint8 (N, 32, 32, 3)"
        )
    in_range = labels.size == 0 or 0 <= labels.min() <= labels.max() < num_classes
    if labels.shape != (images.shape[0],) or not in_range:
        raise ValueError(f"{split}_labels: expected {images.shape[0]} labels in 0..{num_classes - 1}")


def _batch(name: str, batch_label: bytes, images: np.ndarray, labels: np.ndarray, first: int) -> dict:
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), PIXELS_PER_IMAGE)
    batch = {
        b"batch_label": batch_label,
        LAYOUTS[name].label_key: [int(label) for label in labels],
        b"data": rows,
        b"filenames": [f"image_{first + k:06d}.png".encode() for k in range(len(images))],
    }
    if name == "cifar100":
        batch[b"coarse_labels"] = [int(CIFAR100_COARSE_OF_FINE[label]) for label in labels]
    return batch


def write_cifar_files(
    directory: Path,
    name: CifarName,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> Path:
    """Write images, uint8 (N, 32, 32, 3), as `name` in the official format; return the dataset folder.

    The files are the ones :func:`load_cifar` reads, with every key of the official pickles (CIFAR-10's
    training set split into its 5 batches); the label-name `meta` files are not written. Used by the
    tests and by the CI smoke runs of the image reproductions, which have no network.
    """
    layout = _layout(name)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    _check_images(train_images, train_labels, "train", layout.num_classes)
    _check_images(test_images, test_labels, "test", layout.num_classes)
    folder = Path(directory) / layout.folder
    if name == "cifar10":
        chunks = np.array_split(np.arange(len(train_images)), CIFAR10_TRAIN_BATCHES)
        batches = {
            file: _batch(
                name,
                f"training batch {k + 1} of {CIFAR10_TRAIN_BATCHES}".encode(),
                train_images[index],
                train_labels[index],
                first=int(index[0]) if index.size else 0,
            )
            for k, (file, index) in enumerate(zip(layout.files["train"], chunks))
        }
        batches["test_batch"] = _batch(name, b"testing batch 1 of 1", test_images, test_labels, first=0)
    else:
        batches = {
            "train": _batch(name, b"training", train_images, train_labels, first=0),
            "test": _batch(name, b"testing", test_images, test_labels, first=0),
        }
    for file, batch in batches.items():
        atomic_write(folder / file, lambda stream, batch=batch: pickle.dump(batch, stream, protocol=2))
    return folder
