"""Many teacher–student runs in one computation, with the results and checkpoints of the reference trainer.

Runs that share the student architecture, the data's shapes, epochs, batch size, logging, dtype and
device (:func:`student_batch_key`) train together: their parameters are the rows of one (R, P) tensor,
evaluated and differentiated by :class:`~momentumlab.models.stacked_students.StackedStudents` (batched
products and a hand-written backward pass, no autograd) and stepped by
:func:`~momentumlab.optim.stacked_update.stacked_update`, one update with per-run coefficients for every
rule of :mod:`momentumlab.optim.momentum`; each run keeps its own data (seed and teacher), minibatch
order (its seed, one permutation per epoch), learning rate, momentum rule and weight decay. The
gradient is that of the run's objective, weight decay included, exactly as
:func:`~momentumlab.train.teacher_student.train_student` computes it.

Everything a single run's record depends on is delegated to the reference code on that run's own
module and optimizer: rows are :func:`~momentumlab.train.teacher_student.measure` of the run's weights, and
checkpoints are :func:`~momentumlab.train.checkpoint.save_checkpoint` of its module and optimizer,
so either trainer resumes the other's checkpoints. A run whose objective turns non-finite is recorded
as diverged at that epoch and leaves the stack; the others go on unchanged.

The runs step in chunks of a few megabytes of hidden features (:data:`CHUNK_BYTES`): the step's time
is spent in passes over those features, and on the CPU larger tensors (fresh memory mappings beyond
glibc's 32 MiB threshold, then cache misses) made a step of 60 stacked CNNs up to twice as slow per run
as chunks of a few runs. An MLP's chunk counts its features of every layer: a full-batch step of 32
two-layer MLPs was 1.5-1.8x slower in one chunk than in chunks of 8, with the same bits. A CNN's chunk
counts its widest features: its bits depend on how the runs are chunked, so its chunks stay as they
were measured. On a GPU the runs are one chunk, and a step's one host round trip is the check that
every objective is finite.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from momentumlab.config import content_hash, flatten
from momentumlab.data.teacher import TeacherData
from momentumlab.memory import reuse_freed_memory
from momentumlab.models.stacked_students import StackedStudents
from momentumlab.optim.momentum import OptimizerConfig, build_optimizer
from momentumlab.optim.stacked_update import stacked_update, update_coefficients
from momentumlab.runs.record import RunRecord
from momentumlab.train.checkpoint import checkpoint_position, load_checkpoint, save_checkpoint
from momentumlab.train.common import DTYPES, minibatch_indices, order_on_device
from momentumlab.train.teacher_student import (
    build_student,
    build_student_data,
    is_due,
    measure,
    steps_per_epoch,
    student_record,
)

if TYPE_CHECKING:
    from momentumlab.runs.teacher_student import TeacherStudentRunConfig

# hidden features of one chunk's step: an MLP's of all layers, a CNN's widest (each the fastest of 0.5-8 MiB)
CHUNK_BYTES = {"mlp": 2 * 2**20, "cnn": 4 * 2**20}


def _shared_fields(config: TeacherStudentRunConfig) -> dict:
    """The config with what may differ inside a batch blanked: seeds, teacher, optimizer, weight decay."""
    raw = config.model_dump(mode="json")
    raw["seed"] = 0
    raw["data"].update(seed=None, teacher="linear", teacher_width=1, kernel_size=1)
    raw["optimizer"] = OptimizerConfig().model_dump(mode="json")
    raw["train"]["weight_decay"] = 0.0
    return raw


def student_batch_key(config: TeacherStudentRunConfig) -> str:
    """Equal keys for runs that can train in one batch."""
    return content_hash(_shared_fields(config))


@dataclass
class _Run:
    """One run's reference objects: its module and optimizer hold its state at rows and checkpoints."""

    config: TeacherStudentRunConfig
    checkpoint: Path | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: TeacherData
    rows: list[dict[str, float]]
    status: str = "complete"
    diverged_at: int | None = None

    def load(self, state: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]) -> None:
        """Copy this run's (parameters, buffers) slice of the stack into its module and optimizer."""
        parameters, buffers = state
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                parameter.copy_(parameters[name])
                if self.config.optimizer.name != "gd":  # GD keeps no state, as in the reference
                    self.optimizer.state[parameter]["momentum_buffer"] = buffers[name].clone()


class _Chunk:
    """Stacked parameters, momentum buffers, hyperparameters and training data of some runs."""

    def __init__(self, runs: list[_Run]):
        self.runs = runs
        named = [dict(run.model.named_parameters()) for run in runs]
        self.inputs = torch.stack([run.data.train.inputs for run in runs])
        self.labels = torch.stack([run.data.train.labels for run in runs])
        self.students = StackedStudents(
            {name: p.shape for name, p in named[0].items()}, self.inputs.shape[-1]
        )
        buffers = [
            {
                name: run.optimizer.state[p].get("momentum_buffer", torch.zeros_like(p))
                for name, p in n.items()
            }
            for run, n in zip(runs, named)
        ]
        self.parameters, self.buffers = self.pack(named), self.pack(buffers)  # θ and b, (r, P)
        coefficients = [(run.config.optimizer.lr, *update_coefficients(run.config.optimizer)) for run in runs]
        self.coefficients = self.parameters.new_tensor(coefficients)  # (r, 5)
        self.weight_decay = self.parameters.new_tensor([run.config.train.weight_decay for run in runs])
        self.features = self.students.features(self.inputs)  # the full batch's, made once
        self.epoch, self.permutations = -1, torch.empty(0)

    def pack(self, per_run: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Each run's tensors by parameter name as a row of the students' layout, (r, P)."""
        return self.students.pack(
            {name: torch.stack([run[name].detach() for run in per_run]) for name in per_run[0]}
        )

    def keep(self, kept: torch.Tensor) -> None:
        """Drop the runs where `kept` is False from every stacked tensor."""
        self.runs = [run for run, k in zip(self.runs, kept.tolist()) if k]
        self.parameters, self.buffers = self.parameters[kept], self.buffers[kept]
        self.coefficients, self.weight_decay = self.coefficients[kept], self.weight_decay[kept]
        self.inputs, self.labels, self.features = self.inputs[kept], self.labels[kept], self.features[kept]
        self.epoch = -1

    def slice(self, index: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run `index`'s parameters and momentum buffers (views into the stack)."""
        parameters, buffers = (
            self.students.unpack(flat[index : index + 1]) for flat in (self.parameters, self.buffers)
        )
        return {name: p[0] for name, p in parameters.items()}, {name: b[0] for name, b in buffers.items()}

    def advance(self, step: int, batch_size: int | None, epoch: int) -> None:
        """Step every run; a run whose objective is not finite first leaves, diverged at `epoch`, as in
        the reference (which stops before stepping on a non-finite objective)."""
        while self.runs:
            finite = self.step(step, batch_size)
            if finite is None:
                return
            for index in (~finite).nonzero().flatten().tolist():
                run = self.runs[index]
                run.load(self.slice(index))
                run.status, run.diverged_at = "diverged", epoch
            self.keep(finite)

    def record(self, done: int, per_epoch: int, logging: bool, saving: bool) -> None:
        """After `done` epochs: each run's row (a non-finite training loss ends it as diverged), checkpoint."""
        kept = []
        for index, run in enumerate(self.runs):
            run.load(self.slice(index))
            row = measure(run.model, run.data, done, done * per_epoch) if logging else None
            finite = row is None or math.isfinite(row["train_loss"])
            if not finite:
                run.status, run.diverged_at = "diverged", done
            elif row is not None:
                run.rows.append(row)
            if finite and saving:
                save_checkpoint(run.checkpoint, run.model, run.optimizer, run.rows, done)
            kept.append(finite)
        if not all(kept):
            self.keep(torch.tensor(kept))

    def step(self, step: int, batch_size: int | None) -> torch.Tensor | None:
        """One optimizer step of every run, unless some run's objective is not finite: then nothing moves
        and the result is whether each run's objective was finite, shape (r,); None when all were."""
        features, labels = self.features, self.labels
        if batch_size is not None:
            n = labels.shape[1]
            epoch, position = divmod(step, n // batch_size)
            if epoch != self.epoch:  # minibatch_indices(seed, e, n, n) is the whole permutation of epoch e
                permutations = [minibatch_indices(run.config.seed, epoch, n, n) for run in self.runs]
                # run r's examples are rows r·n … r·n + n − 1 of the runs' stacked data
                offsets = n * torch.arange(len(self.runs))[:, None]
                stacked = torch.stack(permutations) + offsets
                self.epoch, self.permutations = epoch, order_on_device(stacked, labels.device)
            rows = self.permutations[:, position * batch_size : (position + 1) * batch_size].flatten()
            labels = labels.reshape(-1).index_select(0, rows).view(len(self.runs), batch_size)
            features = self.students.minibatch_features(self.inputs, features, rows)
        parameters = self.parameters
        loss, gradient = self.students.loss_and_gradient(parameters, features, labels)
        penalty = parameters.square().sum(1)  # ‖θ_r‖²
        finite = torch.isfinite(loss + 0.5 * self.weight_decay * penalty)  # L_r + (λ/2)‖θ_r‖²
        if not finite.all():
            return finite
        stacked_update(parameters, self.buffers, gradient, self.coefficients, self.weight_decay)
        return None


def _chunks(runs: list[_Run], batch_rows: int) -> list[_Chunk]:
    """Consecutive runs grouped so that each chunk's hidden features (an MLP's of all layers, a CNN's
    widest) fit in the CHUNK_BYTES of its family (on the CPU; on a GPU all runs are one chunk)."""
    parameters = dict(runs[0].model.named_parameters())
    hidden = [p for name, p in parameters.items() if name.endswith("weight") and name != "readout.weight"]
    if "convolutions.0.weight" in parameters:  # a channel per coordinate, the widest layer
        family, per_row = "cnn", runs[0].config.data.dim * max(max(w.shape[:2]) for w in hidden)
    else:
        family, per_row = "mlp", sum(w.shape[0] for w in hidden)
    size = max(1, CHUNK_BYTES[family] // (batch_rows * per_row * hidden[0].element_size()))
    if hidden[0].device.type == "cuda":  # one chunk: one sync per step (the finiteness check)
        size = len(runs)
    return [_Chunk(runs[i : i + size]) for i in range(0, len(runs), size)]


def _batch_error(configs: Sequence[TeacherStudentRunConfig]) -> str | None:
    """Which fields keep `configs` from sharing a batch, or None when they can."""
    first = flatten(_shared_fields(configs[0]))
    for index, config in enumerate(configs[1:], start=1):
        fields = flatten(_shared_fields(config))
        differing = [key for key in first if fields[key] != first[key]]
        if differing:
            shown = ", ".join(
                f"{key} = {json.dumps(fields[key])} (run 0: {json.dumps(first[key])})" for key in differing
            )
            return (
                f"run {index} cannot share a batch with run 0: {shown}; runs of one batch may differ only in seed, "
                "data.seed, data.teacher, data.teacher_width, data.kernel_size, optimizer and train.weight_decay"
            )
    return None


def train_students_batched(
    configs: Sequence[TeacherStudentRunConfig],
    checkpoints: Sequence[Path | None],
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> list[RunRecord]:
    """Train every run of `configs` in one computation; the records equal `train_student`'s run by run.

    `checkpoints[i]` is run i's checkpoint file (or None); all must resume from the same epoch.
    `on_step(e)` is called before epoch e. Each record's `seconds` is the whole batch's wall time.
    """
    reuse_freed_memory()
    started = time.perf_counter()
    if not configs or len(configs) != len(checkpoints):
        raise ValueError(
            f"need one checkpoint path per config; got {len(configs)} configs, {len(checkpoints)} paths"
        )
    error = _batch_error(configs)
    if error is not None:
        raise ValueError(error)
    positions = [checkpoint_position(path) for path in checkpoints]
    if len(set(positions)) > 1:
        raise ValueError(f"the checkpoints resume from different epochs {positions}; a batch must share one")
    spec = configs[0].train
    runs = _load_runs(configs, checkpoints)
    per_epoch, start = steps_per_epoch(configs[0]), positions[0]
    if start == 0:
        for run in runs:
            run.rows.append(measure(run.model, run.data, 0, 0))

    chunks = _chunks(runs, spec.batch_size or configs[0].data.n_train)
    bar = tqdm(
        total=spec.epochs,
        initial=start,
        disable=None if progress else True,
        leave=False,
        desc=f"{len(runs)} runs",
    )
    for epoch in range(start, spec.epochs):
        if on_step is not None:
            on_step(epoch)
        for chunk in chunks:
            for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
                chunk.advance(step, spec.batch_size, epoch)
        done = epoch + 1
        logging = is_due(done, spec.log_every_epochs, spec.epochs)
        saving = is_due(done, spec.checkpoint_every_epochs, spec.epochs)
        if logging or saving:
            for chunk in chunks:
                chunk.record(done, per_epoch, logging, saving)
        bar.update()
    bar.close()
    for chunk in chunks:
        for index, run in enumerate(chunk.runs):
            run.load(chunk.slice(index))
    records = []
    for run in runs:
        record = student_record(
            run.config, run.status, run.rows, run.model, run.diverged_at, started, start, per_epoch
        )
        record.extra["batched_runs"] = len(runs)
        records.append(record)
    return records


def _load_runs(configs: Sequence[TeacherStudentRunConfig], checkpoints: Sequence[Path | None]) -> list[_Run]:
    """Each run's data (built once per distinct data config and seed), module and optimizer, restored
    from its checkpoint when it has one."""
    dtype, device = DTYPES[configs[0].train.dtype], torch.device(configs[0].train.device)
    runs, data = [], {}
    for config, path in zip(configs, checkpoints):
        seed = config.data.seed if config.data.seed is not None else config.seed
        key = (config.data.model_dump_json(), seed)
        if key not in data:
            data[key] = build_student_data(config).to(device, dtype)
        model = build_student(config).to(device=device, dtype=dtype)
        optimizer = build_optimizer(config.optimizer, model.parameters())
        rows, _ = load_checkpoint(path, model, optimizer, device)
        runs.append(_Run(config, path, model, optimizer, data[key], rows))
    return runs
