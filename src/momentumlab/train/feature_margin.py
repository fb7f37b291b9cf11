"""One training run, top to bottom: data, model, optimizer, steps, measurements, checkpoints.

Full batch uses the cubic CNN's closed-form gradient (:class:`FullBatchCubicObjective`); minibatches
use the same formula on the batch; with `train.gradient_penalty` the step uses autograd's double
backward on L + λ‖∇L‖². Every `log_every` steps (and at the end) one row of measurements is
taken at W(t) (:func:`feature_margin_measurements`); a full-batch step that logs nothing needs only
whether L is finite (a run whose loss is not is recorded as diverged), which a bound on L usually shows
without computing it (:meth:`FullBatchCubicObjective.gradient_and_finiteness`). Every
`checkpoint_every` steps the weights, optimizer state and rows so far are saved atomically, so a run
killed anywhere resumes from its last checkpoint and ends with exactly the rows an uninterrupted run has.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from momentumlab.data.feature_margin import FeatureMarginData, make_feature_margin_data
from momentumlab.memory import reuse_freed_memory
from momentumlab.models.cubic_cnn import (
    CubicCNN,
    FullBatchCubicObjective,
    cubic_loss_and_gradient,
    cubic_outputs,
    logistic_objective,
)
from momentumlab.optim.momentum import build_optimizer
from momentumlab.probes.curvature import flat_loss_hvp, top_eigenvalues
from momentumlab.probes.projections import feature_margin_measurements
from momentumlab.runs.record import RunRecord
from momentumlab.seeds import initialization_seed, sharpness_start_seed
from momentumlab.train.checkpoint import load_checkpoint, save_checkpoint
from momentumlab.train.common import DTYPES, minibatch_indices
from momentumlab.train.gradient_penalty import penalized_loss_and_gradient

if TYPE_CHECKING:
    from momentumlab.runs.feature_margin import FeatureMarginRunConfig, FeatureMarginTrainConfig

SHARPNESS_TOLERANCE = 1e-6  # relative change of the top Ritz value at which Lanczos stops


def build_data(config: FeatureMarginRunConfig) -> FeatureMarginData:
    seed = config.data.seed if config.data.seed is not None else config.seed
    return make_feature_margin_data(config.data, seed)


def build_model(config: FeatureMarginRunConfig) -> CubicCNN:
    generator = torch.Generator().manual_seed(initialization_seed(config.seed))
    return CubicCNN(config.model.width, config.data.dim, config.model.init_std, generator)


def logged_steps(train: FeatureMarginTrainConfig) -> set[int]:
    """Steps at which a row is logged: multiples of `log_every`, the last step, the sharpness steps, and
    (if `log_geometric`) the geometric grid ⌈1.5^k⌉ below `log_every`, which resolves the fast early phase."""
    logged = set(range(0, train.steps + 1, train.log_every)) | {train.steps}
    if train.sharpness_every is not None:
        logged |= set(range(0, train.steps + 1, train.sharpness_every))
    power = 1.0
    while train.log_geometric and power < train.log_every:
        logged.add(math.ceil(power))
        power *= 1.5
    return logged


def step_loss_and_gradient(
    config: FeatureMarginRunConfig, weight: torch.Tensor, data: FeatureMarginData, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (loss, gradient) the optimizer steps on at `step`: its minibatch (or all data), penalized
    by `train.gradient_penalty` when that is set."""
    inputs, labels = data.train.inputs, data.train.labels
    if config.train.batch_size is not None:
        batch = minibatch_indices(config.seed, step, config.train.batch_size, len(labels))
        inputs, labels = inputs[batch], labels[batch]
    l2, penalty = config.train.l2, config.train.gradient_penalty
    if penalty == 0:
        return cubic_loss_and_gradient(weight, inputs, labels, l2)

    def objective(candidate: torch.Tensor) -> torch.Tensor:
        return logistic_objective(cubic_outputs(candidate, inputs), labels, candidate, l2)

    return penalized_loss_and_gradient(objective, weight, penalty)


def sharpness(
    config: FeatureMarginRunConfig, weight: torch.Tensor, data: FeatureMarginData, step: int
) -> dict[str, float]:
    """Top eigenvalue of the full-batch objective's Hessian at W (Lanczos; seeded by run and step)."""
    inputs, labels, l2 = data.train.inputs, data.train.labels, config.train.l2

    def objective(flat: torch.Tensor) -> torch.Tensor:
        candidate = flat.view_as(weight)
        return logistic_objective(cubic_outputs(candidate, inputs), labels, candidate, l2)

    generator = torch.Generator().manual_seed(sharpness_start_seed(config.seed, step))
    with torch.enable_grad():
        hvp = flat_loss_hvp(objective, weight.flatten())
        result = top_eigenvalues(hvp, weight.numel(), tol=SHARPNESS_TOLERANCE, generator=generator)
    return {"sharpness": result.eigenvalues[0].item(), "sharpness_hvps": float(result.hvp_count)}


def _momentum_buffer(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> torch.Tensor | None:
    if optimizer.defaults["momentum"] == 0:
        return None
    return optimizer.state[parameter].get("momentum_buffer", torch.zeros_like(parameter))


def train_feature_margin(
    config: FeatureMarginRunConfig,
    checkpoint_path: Path | None = None,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> RunRecord:
    """Train one run of `config`, resuming from `checkpoint_path` when it holds a checkpoint.

    `on_step(t)` is called before step t (tests use it to interrupt a run at a chosen step).
    """
    reuse_freed_memory()
    started = time.perf_counter()
    dtype, device = DTYPES[config.train.dtype], torch.device(config.train.device)
    data = build_data(config).to(device, dtype)
    model = build_model(config).to(device=device, dtype=dtype)
    weight = model.weight
    optimizer = build_optimizer(config.optimizer, model.parameters())
    full_batch = FullBatchCubicObjective(
        data.train.inputs, data.train.labels, config.model.width, config.train.l2
    )
    rows, start = load_checkpoint(checkpoint_path, model, optimizer, device)

    steps, sharpness_every = config.train.steps, config.train.sharpness_every

    def measure(step: int, loss: torch.Tensor, gradient: torch.Tensor) -> None:
        with torch.no_grad():
            row = feature_margin_measurements(weight, data, gradient, _momentum_buffer(optimizer, weight))
        if sharpness_every is not None and (step % sharpness_every == 0 or step == steps):
            row.update(sharpness(config, weight.detach(), data, step))
        rows.append({"step": step, "train_loss": loss.item(), **row})

    fast_path = config.train.batch_size is None and config.train.gradient_penalty == 0
    to_log = logged_steps(config.train)
    bar = tqdm(
        total=steps,
        initial=start,
        disable=None if progress else True,
        desc=config.optimizer.name,
        leave=False,
    )
    status, diverged_at = "complete", None
    with torch.no_grad():
        for step in range(start, steps):
            if on_step is not None:
                on_step(step)
            if step in to_log:
                loss, gradient = full_batch.loss_and_gradient(weight)
                finite = math.isfinite(loss.item())
                if finite:
                    measure(step, loss, gradient)
                    bar.set_postfix(loss=f"{loss.item():.3g}", refresh=False)
            elif fast_path:
                gradient, finite = full_batch.gradient_and_finiteness(weight)
            if not fast_path:
                loss, gradient = step_loss_and_gradient(config, weight, data, step)
                finite = math.isfinite(loss.item())
            if not finite:
                status, diverged_at = "diverged", step
                break
            weight.grad = gradient
            optimizer.step()
            bar.update()
            if (step + 1) % config.train.checkpoint_every == 0 and step + 1 < steps:
                save_checkpoint(checkpoint_path, model, optimizer, rows, step + 1)
        else:
            loss, gradient = full_batch.loss_and_gradient(weight)
            if math.isfinite(loss.item()) and bool(torch.isfinite(weight).all()):
                measure(steps, loss, gradient)
            else:
                status, diverged_at = "diverged", steps
    bar.close()
    weight.grad = None
    return RunRecord(
        config=config,
        status=status,
        rows=rows,
        weights={name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        diverged_at_step=diverged_at,
        seconds=time.perf_counter() - started,
        resumed_from_step=start,
        message=f"non-finite loss at step {diverged_at}" if diverged_at is not None else "",
    )
