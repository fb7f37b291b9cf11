"""CIFAR files in the official pickle format, data-folder resolution, clear errors, and the digits."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from momentumlab.data.cifar import CIFAR100_COARSE_OF_FINE, load_cifar, write_cifar_files
from momentumlab.data.digits import load_digits_dataset
from momentumlab.data.images import (
    DATA_DIR_VARIABLE,
    DatasetError,
    ImageSet,
    load_image_dataset,
    resolve_data_dir,
)


def random_cifar(seed: int, n_train: int, n_test: int, num_classes: int):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(n_train, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, num_classes, size=n_train),
        rng.integers(0, 256, size=(n_test, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, num_classes, size=n_test),
    )


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> tuple[Path, tuple]:
    arrays = random_cifar(0, n_train=12, n_test=4, num_classes=10)
    write_cifar_files(tmp_path, "cifar10", *arrays)
    return tmp_path, arrays


def test_cifar10_round_trip_is_exact(cifar10_dir):
    data_dir, (train_images, train_labels, test_images, test_labels) = cifar10_dir
    data = load_image_dataset("cifar10", data_dir)
    assert data.name == "cifar10" and data.num_classes == 10
    for split, images, labels in (
        (data.train, train_images, train_labels),
        (data.test, test_images, test_labels),
    ):
        assert split.images.shape == (len(images), 3, 32, 32) and split.images.dtype == torch.float32
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        expected = torch.from_numpy(images).permute(0, 3, 1, 2)  # HWC → CHW
        assert torch.equal((split.images * 255).round().to(torch.uint8), expected)
        assert split.labels.dtype == torch.int64 and split.labels.tolist() == labels.tolist()
        assert split.is_corrupted.dtype == torch.bool and not split.is_corrupted.any()


def test_files_use_the_official_plane_layout(cifar10_dir):
    data_dir, (train_images, train_labels, _, _) = cifar10_dir
    folder = data_dir / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == [f"data_batch_{k}" for k in range(1, 6)] + [
        "test_batch"
    ]
    with (folder / "data_batch_1").open("rb") as stream:
        batch = pickle.load(stream, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (3, 3072)  # 12 images in 5 batches
    row, image = batch[b"data"][1], train_images[1]
    assert np.array_equal(row[:1024], image[:, :, 0].ravel())  # red plane, row-major
    assert np.array_equal(row[1024:2048], image[:, :, 1].ravel())
    assert np.array_equal(row[2048:], image[:, :, 2].ravel())
    assert batch[b"labels"] == train_labels[:3].tolist()


def test_cifar100_reads_the_fine_labels(tmp_path):
    train_images, train_labels, test_images, test_labels = random_cifar(
        1, n_train=7, n_test=3, num_classes=100
    )
    train_labels[0] = 99
    folder = write_cifar_files(tmp_path, "cifar100", train_images, train_labels, test_images, test_labels)
    assert folder == tmp_path / "cifar-100-python"
    with (folder / "train").open("rb") as stream:
        batch = pickle.load(stream, encoding="bytes")
    assert batch[b"coarse_labels"] == CIFAR100_COARSE_OF_FINE[train_labels].tolist()
    data = load_cifar("cifar100", tmp_path)
    assert data.num_classes == 100 and len(data.train) == 7 and len(data.test) == 3
    assert data.train.labels.tolist() == train_labels.tolist() and data.train.labels[0] == 99
    assert torch.equal(
        (data.test.images * 255).round().to(torch.uint8), torch.from_numpy(test_images).permute(0, 3, 1, 2)
    )


def test_data_dir_comes_from_the_argument_then_the_environment(cifar10_dir, tmp_path, monkeypatch):
    data_dir, _ = cifar10_dir
    monkeypatch.delenv(DATA_DIR_VARIABLE, raising=False)
    with pytest.raises(
        DatasetError, match=f"--data-dir D or set the environment variable {DATA_DIR_VARIABLE}"
    ):
        resolve_data_dir(None)
    with pytest.raises(DatasetError, match=DATA_DIR_VARIABLE):
        load_image_dataset("cifar10")
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(data_dir))
    assert resolve_data_dir(None) == data_dir
    assert len(load_image_dataset("cifar10").train) == 12
    empty = tmp_path / "empty"
    assert resolve_data_dir(empty) == empty  # the argument wins over the environment
    with pytest.raises(DatasetError, match="CIFAR-10 not found"):
        load_image_dataset("cifar10", empty)


def test_missing_folder_names_the_path_and_the_fetch_command(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_image_dataset("cifar100", tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "cifar-100-python") in message
    assert f"momentumlab data fetch cifar100 --dir {tmp_path}" in message
    assert "cifar-100-python.tar.gz" in message


def test_missing_file_names_it(cifar10_dir):
    data_dir, _ = cifar10_dir
    missing = data_dir / "cifar-10-batches-py" / "data_batch_3"
    missing.unlink()
    with pytest.raises(DatasetError, match="data_batch_3 is missing") as caught:
        load_image_dataset("cifar10", data_dir)
    assert str(missing) in str(caught.value) and "momentumlab data fetch cifar10 --dir" in str(caught.value)


def test_truncated_pickle_is_a_dataset_error_not_a_pickle_traceback(cifar10_dir):
    data_dir, _ = cifar10_dir
    path = data_dir / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated") as caught:
        load_image_dataset("cifar10", data_dir)
    assert str(path) in str(caught.value) and "momentumlab data fetch cifar10 --dir" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("batch", "problem"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels range over 0..10"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "must be a uint8 array"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"shape \(2, 1024\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "must hold 2 integer labels"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "not a dict with the keys"),
    ],
)
def test_malformed_contents_are_rejected(cifar10_dir, batch, problem):
    data_dir, _ = cifar10_dir
    with (data_dir / "cifar-10-batches-py" / "test_batch").open("wb") as stream:
        pickle.dump(batch, stream, protocol=2)
    with pytest.raises(DatasetError, match=problem):
        load_cifar("cifar10", data_dir)


def test_writer_rejects_wrong_arrays(tmp_path):
    train_images, train_labels, test_images, test_labels = random_cifar(
        2, n_train=3, n_test=2, num_classes=10
    )
    with pytest.raises(ValueError, match="expected uint8 \\(N, 32, 32, 3\\)"):
        write_cifar_files(
            tmp_path, "cifar10", train_images.transpose(0, 3, 1, 2), train_labels, test_images, test_labels
        )
    with pytest.raises(ValueError, match="test_labels: expected 2 labels in 0..9"):
        write_cifar_files(tmp_path, "cifar10", train_images, train_labels, test_images, test_labels + 10)


def test_digits_through_the_common_loader():
    data = load_image_dataset("digits", seed=3)
    reference = load_digits_dataset(seed=3)
    assert data.name == "digits" and data.num_classes == 10
    assert len(data.train) + len(data.test) == 1797
    assert data.train.images.shape[1:] == (1, 8, 8) and data.train.images.dtype == torch.float32
    assert torch.equal(data.train.images, reference.train.inputs)
    assert torch.equal(data.test.labels, reference.test.labels) and data.test.labels.dtype == torch.int64
    assert 0.0 <= data.train.images.min() and data.train.images.max() == 1.0
    assert not data.train.is_corrupted.any() and not data.test.is_corrupted.any()


def test_subset_keeps_images_labels_and_groups_together():
    images = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1)
    data = ImageSet(images, torch.tensor([0, 1, 2, 3]), torch.tensor([False, True, False, True]))
    part = data.subset(torch.tensor([3, 0]))
    assert len(part) == 2 and part.images.flatten().tolist() == [3.0, 0.0]
    assert part.labels.tolist() == [3, 0] and part.is_corrupted.tolist() == [True, False]
    assert data.subset(data.is_corrupted).labels.tolist() == [1, 3]


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: cifar10, cifar100, digits"):
        load_image_dataset("mnist")
