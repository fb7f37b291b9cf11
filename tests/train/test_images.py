"""The image trainer: exact chunked full-batch gradients, updates against autograd reference loops,
weight decay, learning-rate schedules, resumption, divergence and the CUDA path."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import NEEDS_CUDA, fail_on_step, raise_at

from momentumlab.config import ConfigError, validate
from momentumlab.models.conv import SmallCNN
from momentumlab.optim.lr_schedules import (
    LRScheduleConfig,
    cosine_factor,
    lr_factor,
    multistep_factor,
    warmup_factor,
)
from momentumlab.runs.image import ImageRunConfig
from momentumlab.train.images import (
    accumulate_gradient,
    build_image_data,
    build_image_model,
    epoch_batches,
    standardize,
    train_images,
)
from momentumlab.train.syncs import syncs_per_mark


def digits_config(**sections) -> ImageRunConfig:
    """A few seconds' worth of digits: 64 train / 32 test images, SmallCNN of width 4, full batch."""
    raw = {
        "seed": 0,
        "data": {"name": "digits", "train_size": 64, "test_size": 32, "corrupted_fraction": 0.25},
        "model": {"name": "small_cnn", "width": 4},
        "optimizer": {"name": "gd", "lr": 0.5},
        "train": {"epochs": 3, "chunk_size": 24},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return validate(ImageRunConfig, raw)


def reference_weights(config: ImageRunConfig) -> dict[str, torch.Tensor]:
    """Plain loop: one autograd pass per batch on L + (λ/2)‖θ‖², hand-written update rules."""
    data = build_image_data(config)
    images, _ = standardize(data.train.images, data.test.images)
    labels = data.train.labels
    model = build_image_model(config, images.shape[1], images.shape[-1], data.num_classes)
    parameters = list(model.parameters())
    buffers = [torch.zeros_like(p) for p in parameters]
    name, momentum, wd = config.optimizer.name, config.optimizer.momentum, config.train.weight_decay
    for epoch in range(config.train.epochs):
        lr = config.optimizer.lr * lr_factor(config.train.lr_schedule, epoch, config.train.epochs)
        for batch in epoch_batches(config.seed, epoch, len(labels), config.train.batch_size):
            x, y = (images, labels) if batch is None else (images[batch], labels[batch])
            objective = F.cross_entropy(model(x), y) + wd / 2 * sum(p.pow(2).sum() for p in parameters)
            gradients = torch.autograd.grad(objective, parameters)
            with torch.no_grad():
                for parameter, buffer, gradient in zip(parameters, buffers, gradients):
                    if name == "gd":
                        parameter -= lr * gradient
                    elif name == "ema_momentum":  # g ← γg + (1−γ)∇, θ ← θ − ηg
                        buffer.mul_(momentum).add_((1 - momentum) * gradient)
                        parameter -= lr * buffer
                    else:  # heavy ball: b ← μb + ∇, θ ← θ − hb
                        buffer.mul_(momentum).add_(gradient)
                        parameter -= lr * buffer
    return {key: value.detach() for key, value in model.state_dict().items()}


def test_chunked_full_batch_gradient_equals_one_big_batch_float64():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=3, num_classes=5, width=4, image_size=8).double()
    images, labels = torch.rand(23, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (23,))
    loss = F.cross_entropy(model(images), labels)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    for chunk_size in (1, 5, 7, 23, 100):
        chunked_loss = accumulate_gradient(model, images, labels, chunk_size)
        assert chunked_loss.item() == pytest.approx(loss.item(), rel=1e-13)
        for parameter, gradient in zip(model.parameters(), expected):
            torch.testing.assert_close(parameter.grad, gradient, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "sections",
    [
        {"train": {"epochs": 1}},  # one GD step
        {"optimizer": {"name": "ema_momentum", "lr": 0.5, "momentum": 0.9}},  # GD+M, buffer from 0
        {"optimizer": {"name": "heavy_ball", "lr": 0.1, "momentum": 0.9}},
        {"train": {"weight_decay": 0.05}, "optimizer": {"name": "ema_momentum", "lr": 0.5, "momentum": 0.5}},
        {"train": {"batch_size": 16}, "optimizer": {"name": "ema_momentum", "lr": 0.2, "momentum": 0.9}},
        {"train": {"lr_schedule": {"name": "multistep", "milestones": [1, 2], "gamma": 0.5}}},
        {"train": {"lr_schedule": {"name": "cosine", "warmup_epochs": 1}}},
    ],
    ids=["gd-one-step", "gd+m", "heavy-ball", "weight-decay", "sgd+m", "multistep", "cosine-warmup"],
)
def test_updates_equal_autograd_reference(sections):
    config = digits_config(**sections)
    record = train_images(config)
    assert record.status == "complete"
    steps_per_epoch = 64 // (config.train.batch_size or 64)
    assert record.extra == {"steps_per_epoch": steps_per_epoch, "train_size": 64, "test_size": 32}
    expected = reference_weights(config)
    for key, value in record.weights.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)


def test_one_gd_step_by_hand():
    config = digits_config(train={"epochs": 1})
    data = build_image_data(config)
    images, _ = standardize(data.train.images, data.test.images)
    model = build_image_model(config, 1, 8, 10)
    loss = F.cross_entropy(model(images), data.train.labels)
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    record = train_images(config)
    for (key, initial), gradient in zip(model.named_parameters(), gradients):
        torch.testing.assert_close(record.weights[key], initial.detach() - 0.5 * gradient)  # θ − η∇L
    assert record.rows[0]["train_loss"] == pytest.approx(loss.item(), rel=1e-6)


def test_rows_report_corrupted_and_clean_accuracy():
    record = train_images(digits_config())
    assert [row["epoch"] for row in record.rows] == [0, 1, 2, 3]
    data = build_image_data(digits_config())
    assert int(data.train.is_corrupted.sum()) == 16 and int(data.test.is_corrupted.sum()) == 8
    last = record.rows[-1]
    # 8 corrupted and 24 clean test images: the overall accuracy is their weighted mean
    overall = (8 * last["test_accuracy_corrupted"] + 24 * last["test_accuracy_clean"]) / 32
    assert last["test_accuracy"] == pytest.approx(overall)
    assert last["test_accuracy_ratio"] == pytest.approx(
        last["test_accuracy_corrupted"] / last["test_accuracy_clean"]
    )
    assert last["train_loss"] < record.rows[0]["train_loss"]


@pytest.mark.parametrize(
    "sections",
    [
        {"optimizer": {"name": "ema_momentum", "lr": 0.5, "momentum": 0.9}, "train": {"epochs": 4}},
        {
            "optimizer": {"name": "ema_momentum", "lr": 0.2, "momentum": 0.9},
            "train": {"epochs": 3, "batch_size": 16, "checkpoint_every_epochs": 1},
        },
    ],
    ids=["full-batch", "minibatch"],
)
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, sections):
    config = digits_config(**sections)
    expected = train_images(config)
    checkpoint = tmp_path / "checkpoint.pt"
    interrupt = 6 if config.train.batch_size else 2  # mid-epoch 1 for minibatches (4 steps per epoch)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_images(config, checkpoint, on_step=raise_at(interrupt))
    resumed = train_images(config, checkpoint)
    assert resumed.resumed_from_step == (4 if config.train.batch_size else 2)
    assert resumed.rows == expected.rows
    for key, value in expected.weights.items():
        assert torch.equal(resumed.weights[key], value)
    again = train_images(config, checkpoint, on_step=fail_on_step)  # a finished run is not retrained
    assert again.rows == expected.rows


def test_divergence_is_recorded():
    # η = 1e20 throws the weights to ~1e19 in one step; the next forward pass overflows to inf/NaN
    record = train_images(digits_config(optimizer={"name": "gd", "lr": 1e20}, train={"epochs": 6}))
    assert record.status == "diverged"
    assert record.diverged_at_step == 1
    assert len(record.rows) == 2 and math.isnan(record.rows[-1]["train_loss"])
    assert "non-finite" in record.message


def test_lr_schedules_closed_forms():
    assert [warmup_factor(e, 3) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert cosine_factor(0, 10) == 1.0
    assert cosine_factor(5, 10) == pytest.approx(0.5)
    assert cosine_factor(9, 10, final_factor=0.1) == pytest.approx(
        0.1 + 0.9 * (1 + math.cos(0.9 * math.pi)) / 2
    )
    assert cosine_factor(2, 12, warmup_epochs=2) == 1.0
    assert cosine_factor(7, 12, warmup_epochs=2) == pytest.approx(0.5)
    assert [multistep_factor(e, (2, 4), 0.1) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    schedule = LRScheduleConfig(name="cosine", warmup_epochs=1, final_factor=0.0)
    assert lr_factor(schedule, 0, 5) == 0.5  # warm-up half times the cosine's 1
    assert lr_factor(schedule, 3, 5) == pytest.approx((1 + math.cos(math.pi / 2)) / 2)
    assert lr_factor(LRScheduleConfig(), 4, 5) == 1.0
    with pytest.raises(ValueError, match="epoch=5"):
        lr_factor(schedule, 5, 5)


def test_minibatches_are_seeded_permutations():
    batches = epoch_batches(3, 1, 50, 16)
    assert len(batches) == 3 and all(len(batch) == 16 for batch in batches)
    assert len(set(torch.cat(batches).tolist())) == 48
    assert all(torch.equal(a, b) for a, b in zip(batches, epoch_batches(3, 1, 50, 16)))
    assert not torch.equal(batches[0], epoch_batches(3, 2, 50, 16)[0])
    assert epoch_batches(3, 1, 50, None) == [None]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"data": {"train_size": 10}, "train": {"batch_size": 20}}, "train.batch_size = 20 exceeds"),
        ({"model": {"name": "small_cnn", "norm": "batch"}}, "norm = 'batch' is not available"),
        ({"train": {"epochs": 5, "lr_schedule": {"name": "multistep", "milestones": [5]}}}, "below"),
        ({"train": {"lr_schedule": {"milestones": [3, 2]}}}, "strictly increasing"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"data": {"corrupted_fraction": 1.0}}, "data.corrupted_fraction"),
        ({"model": {"name": "resnet50"}}, "model.name"),
    ],
)
def test_invalid_image_configs_name_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate(ImageRunConfig, raw)


def test_subset_larger_than_the_dataset_is_refused():
    with pytest.raises(ConfigError, match="data.train_size = 5000 exceeds the 1437 images"):
        train_images(digits_config(data={"train_size": 5000}))


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (bf16 autocast, channels_last)"
)
def test_cuda_bf16_channels_last_run_matches_cpu_closely():
    sections = {"model": {"name": "resnet18", "norm": "none"}, "optimizer": {"name": "gd", "lr": 0.05}}
    # no sharpness: Lanczos on ResNet-18 takes minutes on a CPU
    train = {"epochs": 2, "chunk_size": 24, "sharpness_at_end": False}
    cpu = train_images(digits_config(**sections, train=train))
    cuda = train_images(digits_config(**sections, train={**train, "device": "cuda", "bf16": True}))
    assert cuda.status == "complete"
    for row_cpu, row_cuda in zip(cpu.rows, cuda.rows):
        assert row_cuda["train_loss"] == pytest.approx(row_cpu["train_loss"], rel=0.05)


@NEEDS_CUDA
def test_minibatches_on_the_gpu_train_as_on_the_cpu():
    """float32 without autocast: the epoch's order goes to the GPU once; cuDNN's convolutions (TF32 by
    default) round differently from the CPU's, so the rows agree closely, not bit for bit."""
    sections = {"optimizer": {"name": "ema_momentum", "lr": 0.1, "momentum": 0.9}}
    train = {"epochs": 2, "batch_size": 16, "bf16": False, "channels_last": False}
    cpu = train_images(digits_config(**sections, train=train))
    cuda = train_images(digits_config(**sections, train={**train, "device": "cuda"}))
    assert cuda.status == cpu.status == "complete"
    for row_cpu, row_cuda in zip(cpu.rows, cuda.rows, strict=True):
        assert row_cuda["train_loss"] == pytest.approx(row_cpu["train_loss"], rel=1e-2)


@NEEDS_CUDA
def test_an_image_training_step_on_the_gpu_syncs_once():
    """Steps 1 … 10 of 12 (4 per epoch): the loss's finiteness check is the only sync."""
    train = {
        "epochs": 3,
        "batch_size": 16,
        "log_every_epochs": 3,
        "device": "cuda",
        "sharpness_at_end": False,
    }
    config = digits_config(train=train)
    assert syncs_per_mark(lambda on_step: train_images(config, on_step=on_step)) == [1] * 10


def test_final_sharpness_matches_the_dense_hessian():
    """The last row's sharpness is λ_max of the dense autograd Hessian of the mean cross-entropy + wd."""
    from torch.autograd.functional import hessian
    from torch.func import functional_call

    from momentumlab.runs.image import ImageRunConfig
    from momentumlab.train.images import build_image_data, build_image_model, standardize, train_images

    config = ImageRunConfig.model_validate(
        {
            "data": {"name": "digits", "train_size": 48, "test_size": 16},
            "model": {"name": "small_cnn", "width": 1},
            "optimizer": {"name": "gd", "lr": 0.5},
            "train": {"epochs": 2, "chunk_size": 20, "weight_decay": 0.01},
        }
    )
    record = train_images(config)
    final = record.rows[-1]
    data = build_image_data(config)
    inputs, _ = standardize(data.train.images.float(), data.test.images.float())
    labels = data.train.labels.long()
    model = build_image_model(config, 1, 8, 10)
    model.load_state_dict(record.weights)
    names = [name for name, _ in model.named_parameters()]
    shapes = [parameter.shape for _, parameter in model.named_parameters()]
    flat = torch.cat([parameter.detach().flatten() for parameter in model.parameters()]).double()

    def loss(vector: torch.Tensor) -> torch.Tensor:
        parameters, offset = {}, 0
        for name, shape in zip(names, shapes):
            parameters[name] = vector[offset : offset + shape.numel()].view(shape).float()
            offset += shape.numel()
        return torch.nn.functional.cross_entropy(
            functional_call(model, parameters, (inputs,)), labels
        ).double()

    dense = hessian(loss, flat)
    expected = torch.linalg.eigvalsh(dense).max().item() + 0.01
    assert final["epoch"] == 2 and 0 < final["sharpness_hvps"] <= flat.numel()
    assert abs(final["sharpness"] - expected) <= 1e-3 * abs(expected)
    assert "sharpness" not in record.rows[0]


def test_graduated_schedule_drives_each_epochs_hyperparameters():
    """train.graduated: every epoch's (η, b, β) is epoch_settings' plan, logged in the rows and used."""
    from momentumlab.optim.graduated import GraduatedSchedule, epoch_settings
    from momentumlab.runs.image import ImageRunConfig
    from momentumlab.train.images import epoch_hyperparameters, train_images

    raw = {
        "data": {"name": "digits", "train_size": 64, "test_size": 16},
        "model": {"name": "small_cnn", "width": 2},
        "optimizer": {"name": "ema_momentum", "lr": 0.1, "momentum": 0.5},
        "train": {"epochs": 3, "batch_size": 8, "chunk_size": 64, "sharpness_at_end": False},
    }
    unreachable = {"control": "batch_size", "variance": 4.0, "gradient_bound": 0.5}
    with pytest.raises(ConfigError, match="train.graduated"):
        epoch_hyperparameters(
            ImageRunConfig.model_validate({**raw, "train": {**raw["train"], "graduated": unreachable}})
        )
    # (control, β_1, C², K): each chosen so that its control moves in every epoch
    cases = [("lr", 0.5, 4.0, 0.05), ("batch_size", 0.5, 4.0, 0.05), ("momentum", 0.9, 0.5, 0.5)]
    for control, momentum, variance, bound in cases:
        graduated = {"control": control, "variance": variance, "gradient_bound": bound}
        optimizer = {**raw["optimizer"], "momentum": momentum}
        train = {**raw["train"], "graduated": graduated}
        config = ImageRunConfig.model_validate({**raw, "optimizer": optimizer, "train": train})
        plan = epoch_settings(
            GraduatedSchedule("nshb", control, 3, 0.1, 8, variance, bound, momentum=momentum)
        )
        assert epoch_hyperparameters(config) == [(s.lr, s.batch_size, s.momentum) for s in plan]
        assert len({(s.lr, s.batch_size, s.momentum) for s in plan}) == 3  # the control really moves
        record = train_images(config)
        logged = [(row["lr"], row["batch_size"], row["momentum"]) for row in record.rows[1:]]
        assert logged == [(s.lr, float(s.batch_size), s.momentum) for s in plan]
        assert [row["step"] for row in record.rows] == [
            0,
            *itertools.accumulate(64 // s.batch_size for s in plan),
        ]
    constant = ImageRunConfig.model_validate(raw)
    assert epoch_hyperparameters(constant) == [(0.1, 8, 0.5)] * 3


def test_graduated_schedule_rejects_what_it_cannot_drive():
    from momentumlab.config import validate
    from momentumlab.runs.image import ImageRunConfig

    base = {"data": {"name": "digits"}, "model": {"name": "small_cnn"}}
    graduated = {"control": "momentum", "variance": 1.0, "gradient_bound": 1.0}
    with pytest.raises(ConfigError, match="train.graduated needs minibatches"):
        validate(ImageRunConfig, {**base, "train": {"epochs": 2, "graduated": graduated}})
    with pytest.raises(ConfigError, match="optimizer.name = 'gd' has no smoothing degree"):
        validate(ImageRunConfig, {**base, "train": {"epochs": 2, "batch_size": 8, "graduated": graduated}})
