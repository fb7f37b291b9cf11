"""One image-classification run: data, model, (S)GD with or without momentum, per-epoch measurements.

The objective is the mean cross-entropy over the training set, L(θ) = (1/N) Σ_i ℓ_i(θ), plus the
coupled weight decay (λ/2)‖θ‖² over every parameter, applied as λθ added to the gradient before the
update rule sees it (so momentum averages it too, unlike decoupled AdamW-style decay).

- Full batch (`train.batch_size` null): one optimizer step per epoch on the exact ∇L, accumulated over
  chunks of `train.chunk_size` examples: each chunk's mean loss is back-propagated with weight n_c/N,
  so the summed gradients are Σ_c (n_c/N) ∇(mean_c ℓ) = ∇L, equal to one big batch up to float
  rounding. (With batch norm each chunk uses its own batch statistics, i.e. ghost batch norm; the
  paper's networks have none.)
- Minibatch: SGD / SGD+M; each epoch is a fresh permutation drawn from (seed, epoch), the last partial
  batch dropped, so a resumed run draws the same batches.
- Learning rate: η times :func:`~momentumlab.optim.lr_schedules.lr_factor` of the epoch.
- CUDA (`train.device` cuda): model and data on the GPU; `train.channels_last` stores both in the
  channels-last memory format; `train.bf16` runs forward and loss under
  ``torch.autocast("cuda", dtype=torch.bfloat16)``. Parameters, gradients and the optimizer stay
  float32; bfloat16 has float32's exponent range, so no loss scaling is needed.

Inputs are standardized per channel with the training set's mean and standard deviation. Every
`log_every_epochs` epochs (and at epoch 0 and the end) one row is measured in eval mode at θ after that
epoch: loss and accuracy on train and test, each also on the corrupted (small-margin) and clean
subsets, and the test ratio corrupted/clean. Every `checkpoint_every_epochs` epochs and at the end the
model, optimizer state and rows are saved atomically; a run resumes from its checkpoint with exactly the
rows of an uninterrupted run, and a finished run's checkpoint returns its record without training.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from momentumlab.config import ConfigError
from momentumlab.data.corruption import corrupt_small_margin
from momentumlab.data.images import ImageData, ImageSet, load_image_dataset
from momentumlab.memory import reuse_freed_memory
from momentumlab.models.conv import SmallCNN
from momentumlab.models.resnet import ResNet18
from momentumlab.models.wide_resnet import WideResNet16
from momentumlab.optim.graduated import GraduatedSchedule, epoch_settings
from momentumlab.optim.lr_schedules import build_schedule
from momentumlab.optim.momentum import build_optimizer
from momentumlab.probes.curvature import model_hvp, top_eigenvalues
from momentumlab.runs.record import RunRecord
from momentumlab.seeds import initialization_seed, minibatch_order_seed
from momentumlab.train.checkpoint import load_checkpoint, save_checkpoint
from momentumlab.train.common import order_on_device

if TYPE_CHECKING:
    from momentumlab.runs.image import ImageRunConfig

Precision = Callable[[], contextlib.AbstractContextManager]


def data_seed(config: ImageRunConfig) -> int:
    return config.data.seed if config.data.seed is not None else config.seed


def _random_subset(data: ImageSet, size: int | None, seed: int, field: str) -> ImageSet:
    if size is None:
        return data
    if size > len(data):
        raise ConfigError(
            f"{field} = {size} exceeds the {len(data)} images available; allowed: 1..{len(data)}"
        )
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size]
    return data.subset(chosen.sort().values)


def build_image_data(config: ImageRunConfig, data_dir: Path | None = None) -> ImageData:
    """The dataset of `config`: subsets drawn and corruption applied, all seeded by the data seed.

    Train and test get different corruption seeds, so their corrupted images are independent draws.
    """
    seed, spec = data_seed(config), config.data
    data = load_image_dataset(spec.name, data_dir, seed=seed)
    train = _random_subset(data.train, spec.train_size, 2 * seed, "data.train_size")
    test = _random_subset(data.test, spec.test_size, 2 * seed + 1, "data.test_size")
    if spec.corrupted_fraction > 0:
        corrupt = {"noise_variance": spec.noise_variance, "downsample": spec.downsample}
        train = corrupt_small_margin(train, spec.corrupted_fraction, seed=2 * seed, **corrupt)
        test = corrupt_small_margin(test, spec.corrupted_fraction, seed=2 * seed + 1, **corrupt)
    return ImageData(data.name, train, test, data.num_classes)


def build_image_model(
    config: ImageRunConfig, in_channels: int, image_size: int, num_classes: int
) -> nn.Module:
    """The model of `config`, initialized from the run's seed alone (same seed, same initial weights)."""
    spec = config.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(initialization_seed(config.seed))
        if spec.name == "resnet18":
            return ResNet18(num_classes, in_channels, spec.norm)
        if spec.name == "wide_resnet16":
            return WideResNet16(num_classes, in_channels, spec.widen_factor, spec.norm)
        return SmallCNN(in_channels, num_classes, spec.width, image_size)


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets shifted and scaled per channel by the training set's mean and standard deviation."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int | None) -> list[torch.Tensor | None]:
    """The batches of `epoch`: [None] (all data) at full batch, else a seeded permutation's full batches."""
    if batch_size is None:
        return [None]
    if batch_size > n:
        raise ConfigError(f"train.batch_size = {batch_size} exceeds the {n} training images")
    permutation = torch.randperm(
        n, generator=torch.Generator().manual_seed(minibatch_order_seed(seed, epoch))
    )
    return [permutation[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


SMOOTHING_METHODS = {"gd": "sgd", "heavy_ball": "shb", "ema_momentum": "nshb"}  # Sato & Iiduka's names


def epoch_hyperparameters(config: ImageRunConfig) -> list[tuple[float, int | None, float]]:
    """(η, b, β) of every epoch: the learning-rate schedule, or the graduated-optimization plan."""
    spec, optimizer = config.train, config.optimizer
    if spec.graduated is None:
        schedule = build_schedule(spec.lr_schedule, spec.epochs)
        return [(optimizer.lr * schedule(e), spec.batch_size, optimizer.momentum) for e in range(spec.epochs)]
    plan = GraduatedSchedule(
        method=SMOOTHING_METHODS[optimizer.name],
        control=spec.graduated.control,
        epochs=spec.epochs,
        lr=optimizer.lr,
        batch_size=spec.batch_size,
        variance=spec.graduated.variance,
        gradient_bound=spec.graduated.gradient_bound,
        momentum=optimizer.momentum,
        power=spec.graduated.power,
    )
    try:
        settings = epoch_settings(plan)
    except ValueError as error:  # a target δ that no setting of the control reaches
        raise ConfigError(f"train.graduated = {spec.graduated.model_dump()}: {error}") from None
    return [(setting.lr, setting.batch_size, setting.momentum) for setting in settings]


def _chunks(
    images: torch.Tensor, labels: torch.Tensor, chunk_size: int, memory_format: torch.memory_format
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(labels), chunk_size):
        chunk = images[start : start + chunk_size].contiguous(memory_format=memory_format)
        yield chunk, labels[start : start + chunk_size]


def accumulate_gradient(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    precision: Precision = contextlib.nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Set every `p.grad` to ∇ of the mean cross-entropy over all of `images`, one chunk at a time.

    Returns the mean loss (a detached scalar). Peak memory is that of one chunk's backward pass.
    """
    model.zero_grad(set_to_none=True)
    n, parts = len(labels), []
    for chunk, chunk_labels in _chunks(images, labels, chunk_size, memory_format):
        with precision():
            loss = F.cross_entropy(model(chunk), chunk_labels)  # autocast computes it in float32
        share = len(chunk_labels) / n
        (loss * share).backward()  # Σ_c (n_c/N) ∇ mean_c ℓ = ∇L
        parts.append(loss.detach() * share)
    return torch.stack(parts).sum()


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    precision: Precision = contextlib.nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy and correctness in eval mode (the model is put back in its mode after)."""
    training = model.training
    model.eval()
    losses, correct = [], []
    for chunk, chunk_labels in _chunks(images, labels, chunk_size, memory_format):
        with precision():
            logits = model(chunk)
            losses.append(F.cross_entropy(logits, chunk_labels, reduction="none").float())
        correct.append(logits.argmax(dim=1) == chunk_labels)
    model.train(training)
    return torch.cat(losses), torch.cat(correct)


def _mean(values: torch.Tensor) -> float:
    return values.float().mean().item() if values.numel() else math.nan


def split_measurements(prefix: str, losses: torch.Tensor, correct: torch.Tensor, corrupted: torch.Tensor):
    """Loss and accuracy on all examples and accuracy on the corrupted and clean ones."""
    return {
        f"{prefix}_loss": _mean(losses),
        f"{prefix}_accuracy": _mean(correct),
        f"{prefix}_accuracy_corrupted": _mean(correct[corrupted]),
        f"{prefix}_accuracy_clean": _mean(correct[~corrupted]),
    }


def train_images(
    config: ImageRunConfig,
    checkpoint_path: Path | None = None,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> RunRecord:
    """Train one run of `config`, resuming from `checkpoint_path` when it holds a checkpoint.

    `on_step(t)` is called before optimizer step t (tests use it to interrupt a run). Rows are keyed by
    `epoch` and `step` (optimizer steps taken so far).
    """
    reuse_freed_memory()
    started = time.perf_counter()
    spec = config.train
    device = torch.device(spec.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {spec.device!r}, but no CUDA device is available; allowed: 'cpu'")
    memory_format = torch.channels_last if cuda and spec.channels_last else torch.contiguous_format

    def precision() -> contextlib.AbstractContextManager:
        if cuda and spec.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    data = build_image_data(config)
    train_inputs, test_inputs = standardize(
        torch.as_tensor(data.train.images, dtype=torch.float32),
        torch.as_tensor(data.test.images, dtype=torch.float32),
    )
    train_inputs = train_inputs.to(device).contiguous(memory_format=memory_format)
    test_inputs = test_inputs.to(device).contiguous(memory_format=memory_format)
    train_labels = torch.as_tensor(data.train.labels, dtype=torch.long).to(device)
    test_labels = torch.as_tensor(data.test.labels, dtype=torch.long).to(device)
    train_corrupted = torch.as_tensor(data.train.is_corrupted, dtype=torch.bool).to(device)
    test_corrupted = torch.as_tensor(data.test.is_corrupted, dtype=torch.bool).to(device)
    n = len(train_labels)

    in_channels, image_size = train_inputs.shape[1], train_inputs.shape[-1]
    model = build_image_model(config, in_channels, image_size, data.num_classes)
    model = model.to(device=device, memory_format=memory_format)
    optimizer = build_optimizer(config.optimizer, model.parameters())
    hyperparameters = epoch_hyperparameters(config)
    batches = [1 if size is None else n // size for _, size, _ in hyperparameters]
    first_step = [0, *itertools.accumulate(batches)]  # optimizer steps taken before each epoch

    rows, start = load_checkpoint(checkpoint_path, model, optimizer, device)

    def measure(epoch: int) -> dict[str, float]:
        train_losses, train_correct = predict(
            model, train_inputs, train_labels, spec.chunk_size, precision, memory_format
        )
        test_losses, test_correct = predict(
            model, test_inputs, test_labels, spec.chunk_size, precision, memory_format
        )
        lr, batch_size, momentum = hyperparameters[max(epoch - 1, 0)]  # the epoch that ends here
        row = {"epoch": epoch, "step": first_step[epoch], "lr": lr, "momentum": momentum}
        row["batch_size"] = float(batch_size if batch_size is not None else n)
        row |= split_measurements("train", train_losses, train_correct, train_corrupted)
        row |= split_measurements("test", test_losses, test_correct, test_corrupted)
        clean = row["test_accuracy_clean"]
        row["test_accuracy_ratio"] = row["test_accuracy_corrupted"] / clean if clean > 0 else math.nan
        if epoch == spec.epochs and spec.sharpness_at_end and math.isfinite(row["train_loss"]):
            row |= sharpness()
        rows.append(row)
        return row

    def sharpness() -> dict[str, float]:
        """Top eigenvalue of the full-batch training objective's Hessian, weight decay included (Lanczos)."""
        buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}  # BN running stats
        hvp = model_hvp(model, F.cross_entropy, train_inputs, train_labels, chunk_size=spec.chunk_size)
        count = sum(parameter.numel() for parameter in model.parameters())
        generator = torch.Generator().manual_seed(config.seed)
        result = top_eigenvalues(hvp, count, tol=1e-4, generator=generator)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        top = result.eigenvalues[0].item() + spec.weight_decay  # λ_max(H + λI) = λ_max(H) + λ
        return {"sharpness": top, "sharpness_hvps": float(result.hvp_count)}

    if start == 0:
        measure(0)
    bar = tqdm(total=spec.epochs, initial=start, disable=None if progress else True, leave=False)
    status, diverged_at = "complete", None
    for epoch in range(start, spec.epochs):
        lr, batch_size, momentum = hyperparameters[epoch]
        for group in optimizer.param_groups:
            group["lr"], group["momentum"] = lr, momentum
        epoch_order = epoch_batches(config.seed, epoch, n, batch_size)
        if batch_size is not None:  # the epoch's order copied to the device once, not every step
            epoch_order = order_on_device(torch.cat(epoch_order), device).split(batch_size)
        for position, batch in enumerate(epoch_order):
            step = first_step[epoch] + position
            if on_step is not None:
                on_step(step)
            images, labels = (
                (train_inputs, train_labels) if batch is None else (train_inputs[batch], train_labels[batch])
            )
            loss = accumulate_gradient(model, images, labels, spec.chunk_size, precision, memory_format)
            if not math.isfinite(loss.item()):  # the step's one sync
                status, diverged_at = "diverged", step
                break
            with torch.no_grad():
                if spec.weight_decay > 0:
                    for parameter in model.parameters():
                        parameter.grad.add_(parameter, alpha=spec.weight_decay)  # ∇(λ/2)‖θ‖² = λθ
            optimizer.step()
        if status == "diverged":
            break
        done = epoch + 1
        if done % spec.log_every_epochs == 0 or done == spec.epochs:
            row = measure(done)
            if not math.isfinite(row["train_loss"]):
                status, diverged_at = "diverged", first_step[done]
                break
            bar.set_postfix(
                loss=f"{row['train_loss']:.3g}", acc=f"{row['train_accuracy']:.3f}", refresh=False
            )
        if done % spec.checkpoint_every_epochs == 0 or done == spec.epochs:
            save_checkpoint(checkpoint_path, model, optimizer, rows, done)
        bar.update()
    bar.close()
    model.zero_grad(set_to_none=True)
    return RunRecord(
        config=config,
        status=status,
        rows=rows,
        weights={name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        diverged_at_step=diverged_at,
        seconds=time.perf_counter() - started,
        resumed_from_step=first_step[start],
        message=f"non-finite loss at step {diverged_at}" if diverged_at is not None else "",
        extra={"steps_per_epoch": batches[0], "train_size": n, "test_size": len(test_labels)},
    )
