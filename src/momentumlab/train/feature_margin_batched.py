"""Many feature–margin runs in one computation: stacked weights and per-run hyperparameter tensors.

Runs with equal :func:`batch_key` (same data distribution, model, schedule, dtype and device) train
together; they may differ in seed (hence in data and initialization), update rule, learning rate,
momentum and λ. Their weights are stacked into one (R, m, d) tensor, and the update and the
minibatch products are batched over runs:

- full batch: on the CPU in float32, (L, ∇L) of a dataset's runs by one pass of the C kernel of
  :class:`~momentumlab.models.cubic_cnn.FullBatchCubicObjective` (one tiled copy of each dataset); on a
  GPU, in float64 or without a compiler, the R_k runs sharing a dataset form one (R_k·m, d) matrix
  against that dataset's (d, N·P) transposed data, and datasets with equally many runs share one `bmm`
  (on the CPU, one per cache-sized chunk of examples; on a GPU, one over all examples, cut into
  slices batched in the products: :func:`full_batch_slices`);
- minibatches: each run's batch (the one :func:`minibatch_indices` gives its solo run) is gathered
  into an (R, B·P, d) tensor and the products are one `bmm` over runs;
- update: every rule is b ← μb + τ∇; W ← W − c_g∇ − c_b·b with per-run coefficients
  (:func:`rule_coefficients`).

Everything else is :func:`momentumlab.train.feature_margin.train_feature_margin`'s, run by run: the same logged rows (measured
run by run at logged steps only), sharpness, divergence (a run whose loss turns non-finite is recorded
as diverged, then zeroed: W = 0 is a fixed point, so it stops costing anything and affects no one) and
one checkpoint per run in the single-run format, so either trainer resumes what the other started. As
there, a full-batch step that logs nothing takes the loss's finiteness from
:func:`~momentumlab.models.cubic_cnn.logistic_loss_bound` and computes the losses only where it fails.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from momentumlab.config import content_hash
from momentumlab.data.feature_margin import FeatureMarginData, FeatureMarginSet
from momentumlab.memory import reuse_freed_memory
from momentumlab.models.cubic_cnn import FullBatchCubicObjective, logistic_loss_bound
from momentumlab.optim.momentum import OptimizerConfig, build_optimizer
from momentumlab.probes.projections import feature_margin_measurements
from momentumlab.runs.record import RunRecord
from momentumlab.train.checkpoint import checkpoint_position, load_checkpoint, save_checkpoint
from momentumlab.train.common import DTYPES, minibatch_indices, order_on_device
from momentumlab.train.feature_margin import build_data, build_model, logged_steps, sharpness

if TYPE_CHECKING:
    from momentumlab.runs.feature_margin import FeatureMarginRunConfig

CPU_CHUNK_ELEMENTS = 2**19  # elements of a full-batch buffer per chunk on the CPU (2 MiB in float32)
GPU_SLICE_EXAMPLES = 256  # the least examples per slice of the GPU's full batch


def batch_key(config: FeatureMarginRunConfig) -> str | None:
    """Configs with equal keys can train in one computation; None: this config must train alone.

    The key hashes the config with the fields a batch lets vary blanked: seed, data seed, optimizer
    and λ. A gradient penalty needs autograd's double backward, which this engine does not batch.
    """
    if config.train.gradient_penalty > 0:
        return None
    shared = config.model_dump(mode="json")
    shared["seed"] = shared["data"]["seed"] = shared["optimizer"] = shared["train"]["l2"] = None
    return content_hash(shared)


def rule_coefficients(config: OptimizerConfig) -> tuple[float, float, float, float]:
    """(μ, τ, c_g, c_b) for which b ← μb + τ∇; W ← W − c_g∇ − c_b·b is the update rule of `config`."""
    lr, momentum = config.lr, config.momentum
    return {
        "gd": (0.0, 0.0, lr, 0.0),  # W ← W − η∇
        "ema_momentum": (momentum, 1 - momentum, 0.0, lr),  # g ← γg + (1−γ)∇; W ← W − ηg
        "heavy_ball": (momentum, 1.0, 0.0, lr),  # b ← μb + ∇; W ← W − hb
        "nesterov": (momentum, 1.0, lr, lr * momentum),  # b ← μb + ∇; W ← W − h∇ − hμb
    }[config.name]


def _logistic_terms(
    outputs: torch.Tensor, neg_labels: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples' share of a mean logistic loss over n examples (summed over the last axis), and
    each example's gradient weight −3 y_i ℓ_i / n."""
    margins = outputs * neg_labels  # −y_i f_i
    share = F.softplus(margins).sum(dim=-1).div_(n)
    return share, torch.sigmoid_(margins).mul_(neg_labels).mul_(3.0 / n)  # ℓ_i = σ(−y_i f_i)


@dataclass
class _Bucket:
    """Datasets with equally many runs, stacked: their runs are the contiguous slice `runs`."""

    runs: slice
    runs_per_set: int
    inputs_t: torch.Tensor  # (K, d, N·P)
    neg_labels: torch.Tensor  # (K, 1, N)
    chunk: int  # examples per pass
    slices: int  # S: the whole batch in one pass, its examples cut into S slices batched in each product
    inputs_sliced: torch.Tensor | None  # (K·S, d, N·P/S): slice s of dataset k is entry k·S + s
    projections: torch.Tensor  # flat buffer for (K, s·m, chunk·P)
    squares: torch.Tensor  # flat buffer for (K, s·m, chunk·P)
    loss: torch.Tensor  # (K, s) buffer
    gradient_t: torch.Tensor  # (K, d, s·m) buffer: this product order is the faster one


def full_batch_slices(n: int, device: torch.device) -> int:
    """S, the slices of n examples in the full batch's products: 1 on the CPU; on a GPU the most that
    divide n with at least GPU_SLICE_EXAMPLES examples each. The gradient's product sums over all N·P
    columns into a small (d × R_k·m) result, which one product computes on a few of the GPU's
    multiprocessors; S slices make S times as many products, whose results are summed (a split-K product)."""
    if device.type != "cuda":
        return 1
    return max(s for s in range(1, max(1, n // GPU_SLICE_EXAMPLES) + 1) if n % s == 0)


class _StackedFullBatch:
    """Full-batch (L without λ, ∇L without λW) of all runs: per bucket, one pair of `bmm` per chunk of
    examples. On the CPU a chunk's buffers stay in cache between the products (1.6× faster than
    whole-data passes for 32 default runs, measured on one thread); on a GPU the data is one chunk, cut
    into slices (:func:`full_batch_slices`)."""

    def __init__(self, buckets: list[tuple[list[FeatureMarginSet], int]], width: int):
        self.width, self.buckets = width, []
        start = 0
        for sets, runs_per_set in buckets:
            n, patches, dim = sets[0].inputs.shape
            count, rows = len(sets), runs_per_set * width
            inputs_t = torch.stack([s.inputs.reshape(n * patches, dim).T for s in sets])
            like = {"dtype": inputs_t.dtype, "device": inputs_t.device}
            slices = full_batch_slices(n, inputs_t.device)
            if inputs_t.device.type == "cuda" or slices > 1:
                chunk = n
            else:
                chunk = max(1, min(n, CPU_CHUNK_ELEMENTS // (count * rows * patches)))
            sliced = None
            if slices > 1:  # (K, d, S, N·P/S) → (K·S, d, N·P/S), made once
                sliced = (
                    inputs_t.view(count, dim, slices, -1).transpose(1, 2).reshape(count * slices, dim, -1)
                )
            self.buckets.append(
                _Bucket(
                    runs=slice(start, start + count * runs_per_set),
                    runs_per_set=runs_per_set,
                    inputs_t=inputs_t,
                    neg_labels=-torch.stack([s.labels for s in sets])[:, None, :],
                    chunk=chunk,
                    slices=slices,
                    inputs_sliced=sliced,
                    projections=torch.empty(count * rows * chunk * patches, **like),
                    squares=torch.empty(count * rows * chunk * patches, **like),
                    loss=torch.empty(count, runs_per_set, **like),
                    gradient_t=torch.empty(count, dim, rows, **like),
                )
            )
            start += count * runs_per_set

    def __call__(
        self, weight: torch.Tensor, losses: torch.Tensor, gradients: torch.Tensor, exact: bool = True
    ) -> None:
        """Write each run's loss into `losses` (R,) and gradient into `gradients` (R, m, d). The losses come
        out of the chunks' products anyway, so they are written whatever `exact` says."""
        for bucket in self.buckets:
            count, dim, rows = bucket.gradient_t.shape
            stacked = weight[bucket.runs].view(count, rows, dim)
            if bucket.slices > 1:
                self._sliced_pass(bucket, stacked)
            else:
                self._chunked_pass(bucket, stacked)
            gradients[bucket.runs].view(count, rows, dim).copy_(bucket.gradient_t.transpose(1, 2))
        self.exact_losses(losses)

    def _chunked_pass(self, bucket: _Bucket, stacked: torch.Tensor) -> None:
        """`bucket.loss` and `bucket.gradient_t` summed over chunks of examples, one pair of `bmm` each."""
        count, _, columns = bucket.inputs_t.shape
        per_set, m, n = bucket.runs_per_set, self.width, bucket.neg_labels.shape[-1]
        patches = columns // n
        bucket.loss.zero_()
        for first in range(0, n, bucket.chunk):
            size = min(bucket.chunk, n - first)
            inputs_t = bucket.inputs_t[:, :, first * patches : (first + size) * patches]
            shape = (count, per_set * m, size * patches)
            projections = bucket.projections[: math.prod(shape)].view(shape)
            squares = bucket.squares[: math.prod(shape)].view(shape)
            torch.bmm(stacked, inputs_t, out=projections)  # ⟨w_r, X_i[j]⟩
            torch.mul(projections, projections, out=squares)
            cubes = projections.mul_(squares).view(count, per_set, m, size, patches)
            outputs = cubes.sum(dim=2).sum(dim=3)  # f_i, (K, s, chunk)
            share, coefficient = _logistic_terms(outputs, bucket.neg_labels[:, :, first : first + size], n)
            bucket.loss.add_(share)
            squares.view(count, per_set, m, -1).mul_(
                coefficient.repeat_interleave(patches, dim=-1)[:, :, None]
            )
            bucket.gradient_t.baddbmm_(inputs_t, squares.transpose(1, 2), beta=0 if first == 0 else 1)

    def _sliced_pass(self, bucket: _Bucket, stacked: torch.Tensor) -> None:
        """`bucket.loss` and `bucket.gradient_t` from all examples at once, their S slices batched in each
        `bmm` (K·S products) and the gradient's S partial sums added after."""
        count, dim, rows = bucket.gradient_t.shape
        per_set, m, n, slices = bucket.runs_per_set, self.width, bucket.neg_labels.shape[-1], bucket.slices
        size = n // slices  # examples per slice
        shape = (count * slices, rows, bucket.inputs_sliced.shape[-1])
        projections, squares = bucket.projections.view(shape), bucket.squares.view(shape)
        repeated = stacked.repeat_interleave(slices, dim=0)  # a dataset's runs once per slice
        torch.bmm(repeated, bucket.inputs_sliced, out=projections)  # ⟨w_r, X_i[j]⟩
        torch.mul(projections, projections, out=squares)
        cubes = projections.mul_(squares).view(count, slices, per_set, m, size, -1)
        outputs = cubes.sum(dim=3).sum(dim=4).transpose(1, 2).reshape(count, per_set, n)  # f_i, (K, s, N)
        share, coefficient = _logistic_terms(outputs, bucket.neg_labels, n)
        bucket.loss.copy_(share)
        coefficient = coefficient.view(count, per_set, slices, size).transpose(1, 2)  # (K, S, s, N/S)
        squares.view(count, slices, per_set, m, size, -1).mul_(coefficient[:, :, :, None, :, None])
        partial = torch.bmm(bucket.inputs_sliced, squares.transpose(1, 2))  # each slice's, (K·S, d, R_k·m)
        torch.sum(partial.view(count, slices, dim, rows), dim=1, out=bucket.gradient_t)

    def exact_losses(self, losses: torch.Tensor) -> None:
        """Write each run's loss at the last call's weights into `losses` (R,)."""
        for bucket in self.buckets:
            losses[bucket.runs] = bucket.loss.view(-1)


class _KernelFullBatch:
    """Full-batch (L without λ, ∇L without λW): the outputs and gradients of each dataset's runs (contiguous
    in the stack) by one pass of the C kernel over that dataset, then the losses of all runs at once. For
    32 default runs on 2 threads the step is ~2× faster than the stacked `bmm` path, and one pass per
    dataset 1.1-1.5× faster than one per run (benchmarks/sweep_throughput.py)."""

    def __init__(self, objectives: list[tuple[FullBatchCubicObjective, slice]]):
        self.objectives = objectives  # each dataset's objective and its runs
        self.neg_labels = torch.cat(
            [objective.neg_labels.expand(runs.stop - runs.start, -1) for objective, runs in objectives]
        )  # (R, N)
        self.outputs = torch.empty_like(self.neg_labels)  # f_i of each run
        self.margins = torch.empty_like(self.neg_labels)  # −y_i f_i of each run

    def __call__(
        self, weight: torch.Tensor, losses: torch.Tensor, gradients: torch.Tensor, exact: bool = True
    ) -> None:
        """Write each run's loss into `losses` (R,) and gradient into `gradients` (R, m, d); without
        `exact`, for a step that logs nothing, :func:`logistic_loss_bound` instead of the loss."""
        for objective, runs in self.objectives:
            objective.kernel_pass(weight[runs], self.outputs[runs], gradients[runs])
        torch.mul(self.outputs, self.neg_labels, out=self.margins)  # −y_i f_i
        if exact:
            self.exact_losses(losses)
        else:
            losses.copy_(logistic_loss_bound(self.margins))

    def exact_losses(self, losses: torch.Tensor) -> None:
        """Write each run's loss at the last call's weights into `losses` (R,)."""
        torch.mean(F.softplus(self.margins), dim=1, out=losses)  # L = mean of log(1 + e^(−y_i f_i))


def _full_batch(
    data: dict[int, FeatureMarginData],
    run_seeds: list[int],
    bucket_seeds: list[tuple[list[int], int]],
    width: int,
) -> _KernelFullBatch | _StackedFullBatch:
    """The full-batch objective of the runs (run r on dataset `run_seeds[r]`, each dataset's runs
    contiguous): the kernel's where it runs."""
    inputs = next(iter(data.values())).train.inputs
    if inputs.device.type == "cpu" and inputs.dtype == torch.float32:
        objectives = []
        for seed, group in itertools.groupby(range(len(run_seeds)), key=run_seeds.__getitem__):
            runs = list(group)
            dataset = data[seed].train
            objective = FullBatchCubicObjective(dataset.inputs, dataset.labels, width, l2=0.0)
            if objective.engine != "compiled":  # the datasets share one shape: none would be
                break
            objectives.append((objective, slice(runs[0], runs[-1] + 1)))
        else:
            return _KernelFullBatch(objectives)
    return _StackedFullBatch(
        [([data[seed].train for seed in seeds], size) for seeds, size in bucket_seeds], width
    )


class _StackedMinibatch:
    """Each run's minibatch (L without λ, ∇L without λW): its batch gathered, one pair of `bmm` over runs."""

    def __init__(
        self, sets: list[FeatureMarginSet], set_of_run: list[int], seeds: list[int], batch_size: int
    ):
        device = sets[0].inputs.device
        self.n, self.batch_size = len(sets[0]), batch_size
        self.inputs = torch.cat([s.inputs for s in sets])  # (D·N, P, d)
        self.labels = torch.cat([s.labels for s in sets])
        self.offsets = torch.tensor(set_of_run, device=device)[:, None] * self.n
        self.seeds = list(dict.fromkeys(seeds))
        self.seed_slot = torch.tensor([self.seeds.index(seed) for seed in seeds], device=device)
        self.epoch, self.permutations = -1, torch.empty(0)

    def __call__(
        self, weight: torch.Tensor, step: int, losses: torch.Tensor, gradients: torch.Tensor
    ) -> None:
        """Write each run's minibatch loss into `losses` (R,) and gradient into `gradients` (R, m, d)."""
        runs, _, dim = weight.shape
        epoch, position = divmod(step, self.n // self.batch_size)
        if epoch != self.epoch:  # minibatch_indices(seed, e, n, n) is the whole permutation of epoch e
            permutations = [minibatch_indices(seed, epoch, self.n, self.n) for seed in self.seeds]
            stacked = torch.stack(permutations)
            self.epoch, self.permutations = epoch, order_on_device(stacked, self.offsets.device)
        columns = slice(position * self.batch_size, (position + 1) * self.batch_size)
        batch = self.permutations[self.seed_slot, columns] + self.offsets  # (R, B) rows of self.inputs
        inputs = self.inputs[batch.view(-1)].view(runs, -1, dim)  # (R, B·P, d)
        projections = torch.bmm(inputs, weight.transpose(1, 2))  # ⟨w_r, X_i[j]⟩, (R, B·P, m)
        squares = projections.square()
        outputs = projections.mul_(squares).view(runs, self.batch_size, -1).sum(dim=2)  # f_i, (R, B)
        loss, coefficient = _logistic_terms(outputs, -self.labels[batch], self.batch_size)
        losses.copy_(loss)
        squares.view(runs, self.batch_size, -1).mul_(coefficient[:, :, None])
        torch.bmm(squares.transpose(1, 2), inputs, out=gradients)


def _check_batch(configs: Sequence[FeatureMarginRunConfig], checkpoints: Sequence[Path | None]) -> int:
    """Raise ValueError unless the runs can train together; return the step they all resume from."""
    if not configs or len(configs) != len(checkpoints):
        raise ValueError(
            f"configs ({len(configs)}) and checkpoints ({len(checkpoints)}) must be equally many, at least one"
        )
    keys = [batch_key(config) for config in configs]
    if None in keys or len(set(keys)) > 1:
        raise ValueError(
            f"batch keys {keys} must be equal and not None: these runs cannot train in one computation"
        )
    positions = [checkpoint_position(path) for path in checkpoints]
    if len(set(positions)) > 1:
        raise ValueError(
            f"checkpoint positions {positions} differ: the runs of a batch must resume from one step"
        )
    return positions[0]


def _internal_order(data_seeds: list[int]) -> tuple[list[int], list[tuple[list[int], int]]]:
    """Runs ordered so that each dataset's runs are contiguous and datasets with equally many runs
    adjacent; returns (order, buckets as (data seeds, runs per dataset))."""
    runs_of: dict[int, list[int]] = {}
    for index, seed in enumerate(data_seeds):
        runs_of.setdefault(seed, []).append(index)
    sizes = sorted({len(runs) for runs in runs_of.values()})
    buckets = [([seed for seed, runs in runs_of.items() if len(runs) == size], size) for size in sizes]
    order = [index for seeds, _ in buckets for seed in seeds for index in runs_of[seed]]
    return order, buckets


def train_batched(
    configs: Sequence[FeatureMarginRunConfig],
    checkpoints: Sequence[Path | None],
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> list[RunRecord]:
    """Train the runs of `configs` together; return one record per config, in order, each equal (to
    float tolerance) to what :func:`momentumlab.train.feature_margin.train_feature_margin` returns for that config alone.

    `checkpoints[i]` is run i's checkpoint (resumed from when it holds one; all must be at one step).
    `on_step(t)` is called once before step t.
    """
    reuse_freed_memory()
    started = time.perf_counter()
    start = _check_batch(configs, checkpoints)
    first = configs[0]
    dtype, device = DTYPES[first.train.dtype], torch.device(first.train.device)
    data_seeds = [config.data.seed if config.data.seed is not None else config.seed for config in configs]
    order, bucket_seeds = _internal_order(data_seeds)
    configs = [configs[i] for i in order]
    data: dict[int, FeatureMarginData] = {}
    for config, seed in zip(configs, [data_seeds[i] for i in order]):
        if seed not in data:
            data[seed] = build_data(config).to(device, dtype)
    run_data = [data[data_seeds[i]] for i in order]

    models = [build_model(config).to(device=device, dtype=dtype) for config in configs]
    optimizers = [
        build_optimizer(config.optimizer, model.parameters()) for config, model in zip(configs, models)
    ]
    rows = [
        load_checkpoint(checkpoints[i], model, optimizer, device)[0]
        for i, model, optimizer in zip(order, models, optimizers)
    ]
    weight = torch.stack([model.weight.detach() for model in models])  # (R, m, d)
    buffer = torch.stack(
        [
            optimizer.state[model.weight].get("momentum_buffer", torch.zeros_like(model.weight)).detach()
            for model, optimizer in zip(models, optimizers)
        ]
    )
    gradients, losses = torch.empty_like(weight), torch.empty(len(configs), dtype=dtype, device=device)

    per_run = torch.tensor(
        [(*rule_coefficients(config.optimizer), config.train.l2) for config in configs],
        dtype=dtype,
        device=device,
    )
    mu, tau, c_g, c_b, l2 = per_run.T[..., None, None]  # each (R, 1, 1); l2 is λ
    has_buffer = [config.optimizer.momentum != 0 for config in configs]  # as loop._momentum_buffer

    full_batch = _full_batch(data, [data_seeds[i] for i in order], bucket_seeds, first.model.width)
    batch_size = first.train.batch_size
    if batch_size is not None:
        set_index = {seed: index for index, seed in enumerate(data)}
        minibatch = _StackedMinibatch(
            [dataset.train for dataset in data.values()],
            [set_index[data_seeds[i]] for i in order],
            [config.seed for config in configs],
            batch_size,
        )

    def add_l2() -> None:
        losses.add_(penalties())
        gradients.addcmul_(l2, weight)  # + λW

    def penalties() -> torch.Tensor:
        return (0.5 * l2 * weight.square()).sum(dim=(1, 2))  # (λ/2)‖W‖²

    steps, sharpness_every = first.train.steps, first.train.sharpness_every
    active = [True] * len(configs)
    status, diverged_at = ["complete"] * len(configs), [None] * len(configs)
    final_weights: list[torch.Tensor | None] = [None] * len(configs)

    def measure(step: int) -> None:
        """Append a row to each live run whose full-batch loss (in `losses`) is finite."""
        for run, loss in enumerate(losses.tolist()):
            if not (active[run] and math.isfinite(loss)):
                continue
            momentum_buffer = buffer[run] if has_buffer[run] else None
            row = feature_margin_measurements(weight[run], run_data[run], gradients[run], momentum_buffer)
            if sharpness_every is not None and (step % sharpness_every == 0 or step == steps):
                row.update(sharpness(configs[run], weight[run], run_data[run], step))
            rows[run].append({"step": step, "train_loss": loss, **row})

    def mark_diverged(run: int, step: int) -> None:
        status[run], diverged_at[run], active[run] = "diverged", step, False
        final_weights[run] = weight[run].clone()
        weight[run], buffer[run], gradients[run] = 0, 0, 0  # W = 0 has ∇L = 0: the run stays put

    to_log = logged_steps(first.train)
    bar = tqdm(
        total=steps,
        initial=start,
        disable=None if progress else True,
        desc=f"{len(configs)} runs",
        leave=False,
    )
    with torch.no_grad():
        for step in range(start, steps):
            if on_step is not None:
                on_step(step)
            logging = step in to_log
            if batch_size is None or logging:
                full_batch(weight, losses, gradients, exact=logging)
                add_l2()
                if logging:
                    measure(step)
            if batch_size is not None:
                minibatch(weight, step, losses, gradients)
                add_l2()
            finite = torch.isfinite(losses)
            if not bool(finite.all()):
                if batch_size is None and not logging:  # `losses` held bounds: the losses decide
                    full_batch.exact_losses(losses)
                    finite = torch.isfinite(losses.add_(penalties()))
                for run in (~finite).nonzero().view(-1).tolist():
                    mark_diverged(run, step)
            buffer.mul_(mu).addcmul_(tau, gradients)  # b ← μb + τ∇
            weight.addcmul_(c_g, gradients, value=-1).addcmul_(c_b, buffer, value=-1)  # W ← W − c_g∇ − c_b·b
            bar.update()
            if (step + 1) % first.train.checkpoint_every == 0 and step + 1 < steps:
                for run in [run for run, live in enumerate(active) if live]:
                    models[run].weight.copy_(weight[run])
                    if configs[run].optimizer.name != "gd":  # GD keeps no state, as in train()
                        optimizers[run].state[models[run].weight]["momentum_buffer"] = buffer[run].clone()
                    save_checkpoint(
                        checkpoints[order[run]], models[run], optimizers[run], rows[run], step + 1
                    )
        full_batch(weight, losses, gradients)
        add_l2()
        finite_weights = torch.isfinite(weight).flatten(1).all(dim=1).tolist()
        for run, loss in enumerate(losses.tolist()):
            if active[run] and not (math.isfinite(loss) and finite_weights[run]):
                mark_diverged(run, steps)
        measure(steps)
    bar.close()

    seconds = time.perf_counter() - started
    records: list[RunRecord | None] = [None] * len(configs)
    for run, original in enumerate(order):
        final = final_weights[run] if final_weights[run] is not None else weight[run].clone()
        records[original] = RunRecord(
            config=configs[run],
            status=status[run],
            rows=rows[run],
            weights={"weight": final.cpu()},
            diverged_at_step=diverged_at[run],
            seconds=seconds,
            resumed_from_step=start,
            message=f"non-finite loss at step {diverged_at[run]}" if diverged_at[run] is not None else "",
        )
    return records
