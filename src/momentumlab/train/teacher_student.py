"""One teacher–student run of Table 1 (Jelassi & Li, SPEC §1), the plain reference trainer.

A ReLU student (:mod:`momentumlab.models.mlp`) is trained on the teacher's ±1 labels
(:mod:`momentumlab.data.teacher`) with autograd and :func:`~momentumlab.optim.momentum.build_optimizer`
on the logistic objective with coupled weight decay

    L(θ) = (1/n) Σ_i log(1 + exp(−y_i f_θ(x_i))) + (λ/2)‖θ‖²

over the whole training set (GD, `train.batch_size` null: one step per epoch) or over minibatches
(SGD: n_train // batch_size steps per epoch, batches from
:func:`~momentumlab.train.common.minibatch_indices`). The student's initialization depends on the run's
seed and architecture only, so GD and GD+M (and every teacher) of one seed start from the same weights.

Rows are measured at epoch 0, every `log_every_epochs` epochs and at the end: the logistic loss and
accuracy (y·f > 0) on the train, validation and test sets, each evaluated in chunks of examples
(:func:`outputs_in_chunks`). A non-finite objective on a step, or a non-finite training loss at a
measurement, ends the run as diverged; its `diverged_at_step` holds the epoch (completed epochs) at
which that was seen. Every `checkpoint_every_epochs` epochs and at the end, model, optimizer state and
rows are saved, so a resumed run ends with the rows of an uninterrupted one.
:mod:`momentumlab.train.teacher_student_batched` trains many runs at once with the same results and
checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from momentumlab.data.teacher import TeacherData, TeacherSet, make_teacher_data
from momentumlab.memory import reuse_freed_memory
from momentumlab.models.mlp import build_network
from momentumlab.optim.momentum import build_optimizer
from momentumlab.runs.record import RunRecord
from momentumlab.seeds import initialization_seed
from momentumlab.train.checkpoint import load_checkpoint, save_checkpoint
from momentumlab.train.common import DTYPES, minibatch_indices

if TYPE_CHECKING:
    from momentumlab.runs.teacher_student import TeacherStudentRunConfig

ROW_CHUNK_BYTES = 2 * 2**20  # a logged row's forward: hidden features of one chunk of examples
MIN_ROW_CHUNK = 64  # examples


def build_student_data(config: TeacherStudentRunConfig) -> TeacherData:
    """The run's teacher data, seeded by `data.seed` (or the run's seed when that is null)."""
    return make_teacher_data(config.data, config.data.seed if config.data.seed is not None else config.seed)


def build_student(config: TeacherStudentRunConfig) -> nn.Module:
    """The student at initialization: a function of the run's seed and architecture alone."""
    generator = torch.Generator().manual_seed(initialization_seed(config.seed))
    spec = config.model
    return build_network(spec.architecture, config.data.dim, spec.width, spec.kernel_size, generator)


def steps_per_epoch(config: TeacherStudentRunConfig) -> int:
    """1 at full batch, else n_train // batch_size (the last partial batch is dropped)."""
    batch_size = config.train.batch_size
    return 1 if batch_size is None else config.data.n_train // batch_size


def logistic_objective(
    outputs: torch.Tensor, labels: torch.Tensor, parameters: Iterable[torch.Tensor], weight_decay: float
) -> torch.Tensor:
    """The training objective on a batch; λ is the weight decay."""
    penalty = sum(parameter.square().sum() for parameter in parameters)  # ‖θ‖²
    return F.softplus(-labels * outputs).mean() + 0.5 * weight_decay * penalty  # L + (λ/2)‖θ‖²


def outputs_in_chunks(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """f(x) of every example, in chunks whose widest hidden features (the read-out's inputs: an MLP's
    width, a CNN's channels·d) take at most :data:`ROW_CHUNK_BYTES`.

    On the CPU, one forward over thousands of examples page-faulted its fresh tensors on most calls: a
    2-CNN's over the 5 000 test examples took 11.5 ms (4 655 page faults) against 4.4 ms in chunks (none).
    A chunk is a power of two of at least 64 examples, so the matrix products' blocks of rows fall where
    they fall in one forward: the outputs have the same bits (tested against one forward).
    """
    per_example = model.readout.in_features * inputs.element_size()
    size = max(MIN_ROW_CHUNK, 1 << (max(1, ROW_CHUNK_BYTES // per_example).bit_length() - 1))
    return torch.cat([model(chunk) for chunk in inputs.split(size)])


def set_measurements(prefix: str, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Logistic loss and accuracy (y·f > 0) of `outputs` on one set (NaN for an empty set)."""
    if labels.numel() == 0:
        return {f"{prefix}_loss": math.nan, f"{prefix}_accuracy": math.nan}
    margins = labels * outputs
    return {
        f"{prefix}_loss": F.softplus(-margins).mean().item(),
        f"{prefix}_accuracy": (margins > 0).double().mean().item(),
    }


@torch.no_grad()
def measure(model: nn.Module, data: TeacherData, epoch: int, step: int) -> dict[str, float]:
    """The row logged after `epoch` epochs (`step` optimizer steps)."""
    row = {"epoch": float(epoch), "step": float(step)}
    for prefix, sample in (("train", data.train), ("val", data.validation), ("test", data.test)):
        row |= set_measurements(prefix, outputs_in_chunks(model, sample.inputs), sample.labels)
    return row


def is_due(done: int, every: int, epochs: int) -> bool:
    """Whether an event that happens every `every` epochs (and after the last epoch) is due after `done`."""
    return done % every == 0 or done == epochs


def minibatch(config: TeacherStudentRunConfig, train: TeacherSet, step: int) -> TeacherSet:
    """The examples of optimizer step `step`: all of them at full batch, else its minibatch."""
    if config.train.batch_size is None:
        return train
    batch = minibatch_indices(config.seed, step, config.train.batch_size, len(train))
    return TeacherSet(train.inputs[batch], train.labels[batch])


def train_student(
    config: TeacherStudentRunConfig,
    checkpoint_path: Path | None = None,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> RunRecord:
    """Train one run of `config`, resuming from `checkpoint_path` when it holds a checkpoint.

    `on_step(e)` is called before epoch e (tests use it to interrupt a run at a chosen epoch).
    """
    reuse_freed_memory()
    started = time.perf_counter()
    spec = config.train
    dtype, device = DTYPES[spec.dtype], torch.device(spec.device)
    data = build_student_data(config).to(device, dtype)
    model = build_student(config).to(device=device, dtype=dtype)
    optimizer = build_optimizer(config.optimizer, model.parameters())
    rows, start = load_checkpoint(checkpoint_path, model, optimizer, device)
    per_epoch = steps_per_epoch(config)

    if start == 0:
        rows.append(measure(model, data, 0, 0))
    bar = tqdm(total=spec.epochs, initial=start, disable=None if progress else True, leave=False)
    status, diverged_at = "complete", None
    for epoch in range(start, spec.epochs):
        if on_step is not None:
            on_step(epoch)
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            batch = minibatch(config, data.train, step)
            optimizer.zero_grad(set_to_none=True)
            loss = logistic_objective(
                model(batch.inputs), batch.labels, model.parameters(), spec.weight_decay
            )
            if not math.isfinite(loss.item()):
                status, diverged_at = "diverged", epoch
                break
            loss.backward()
            optimizer.step()
        if status == "diverged":
            break
        done = epoch + 1
        if is_due(done, spec.log_every_epochs, spec.epochs):
            row = measure(model, data, done, done * per_epoch)
            if not math.isfinite(row["train_loss"]):
                status, diverged_at = "diverged", done
                break
            rows.append(row)
            bar.set_postfix(
                loss=f"{row['train_loss']:.3g}", acc=f"{row['train_accuracy']:.3f}", refresh=False
            )
        if is_due(done, spec.checkpoint_every_epochs, spec.epochs):
            save_checkpoint(checkpoint_path, model, optimizer, rows, done)
        bar.update()
    bar.close()
    model.zero_grad(set_to_none=True)
    return student_record(config, status, rows, model, diverged_at, started, start, per_epoch)


def student_record(
    config: TeacherStudentRunConfig,
    status: str,
    rows: list[dict[str, float]],
    model: nn.Module,
    diverged_at: int | None,
    started: float,
    start: int,
    per_epoch: int,
) -> RunRecord:
    """The run's record; `diverged_at` and `resumed_from_step` count epochs."""
    return RunRecord(
        config=config,
        status=status,
        rows=rows,
        weights={name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()},
        diverged_at_step=diverged_at,
        seconds=time.perf_counter() - started,
        resumed_from_step=start,
        message=f"non-finite loss at epoch {diverged_at}" if diverged_at is not None else "",
        extra={"steps_per_epoch": per_epoch},
    )
