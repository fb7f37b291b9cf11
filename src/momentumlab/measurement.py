"""What one measurement of the :class:`~momentumlab.monitor.Monitor` computes, wherever it runs: in the
training loop, in a worker thread, or in a worker process.

A :class:`Measurement` holds the fixed example subsets, the probe settings and the state carried from one
measurement to the next (the Lanczos warm start, the running maximum K of ‖∇f‖, the random generator), so
the rows are the same in each of the three places. The worker process is a one-process pool: its
initializer unpickles the measurement and a copy of the model once, and each task sends the model's state
at the measured step.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import pickle
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch
from torch import nn
from torch.func import functional_call

from momentumlab.probes.curvature import hutchinson_trace, model_hvp, top_eigenvalues
from momentumlab.probes.model_state import Mode, probe_buffers, probe_mode
from momentumlab.probes.noise import flat_model_loss, gradient_statistics, smoothing_degree
from momentumlab.probes.spectral_density import SpectralDensity, spectral_density
from momentumlab.probes.update_rules import UpdateRule

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> mean over the batch
# Examples per forward pass of the loss and metrics over `data` (without `chunk_size`): on the digits CNN
# 8 ms over 1 437 images in chunks of 512 against 26 ms in one pass (the feature maps stay in cache), and
# the pass's memory is bounded on any device.
EVALUATION_CHUNK = 512


@dataclasses.dataclass
class StepStart:
    """What the Monitor copies before a measured step: x_t, g_t, m_{t−1} and each parameter's rule."""

    point: list[torch.Tensor]
    gradients: list[torch.Tensor | None]
    buffers: list[torch.Tensor | None]
    rules: list[UpdateRule | None]
    uniform_rule: UpdateRule | None  # the one rule of every group (hyperparameters at this step), if one

    @property
    def smoothing_method(self):
        return self.uniform_rule.smoothing_method if self.uniform_rule is not None else None


@dataclasses.dataclass
class Measurement:
    """The probes of one measured step (noise at x_t; loss, metrics and curvature at x_{t+1}); the
    Monitor's docstring lists what each row holds."""

    loss_fn: LossFn
    metrics: Mapping[str, Metric]
    evaluate: bool
    mode: Mode
    top_k: int
    eigen_tol: float
    eigen_max_iter: int
    trace_probes: int
    density: bool
    density_probes: int
    density_steps: int
    noise: bool
    batch_size: int | None
    chunk_size: int | None
    inputs: torch.Tensor  # all of `data`: the loss and metrics, and N in C²
    targets: torch.Tensor
    hessian_inputs: torch.Tensor
    hessian_targets: torch.Tensor
    noise_inputs: torch.Tensor
    noise_targets: torch.Tensor
    generator: torch.Generator
    dim: int  # the number of parameters
    top_vector: torch.Tensor | None = None  # the previous top eigenvector, Lanczos's start
    gradient_bound: float = 0.0  # K: max of ‖∇f‖ so far

    def __call__(self, start: StepStart, model: nn.Module) -> tuple[dict[str, float], SpectralDensity | None]:
        """The probes of the step that began at `start`, on `model` (the monitored model or a copy at
        x_{t+1}), and the SLQ density when asked for."""
        row = self.noise_quantities(start, model) if self.noise else {}
        return self.at_current_point(model, row)

    def noise_quantities(self, start: StepStart, model: nn.Module) -> dict[str, float]:
        """ω_t = d_t − ∇f(x_t) of the rule in use, with C²(x_t), K and δ."""
        loss, _ = flat_model_loss(model, self.loss_fn, self.mode)
        point = flat(start.point)
        statistics = gradient_statistics(  # over the fixed subset S (all of data when noise_examples=None)
            loss, point, self.noise_inputs, self.noise_targets, self.chunk_size or 256, len(self.inputs)
        )
        full_gradients = statistics.full_gradient.split([p.numel() for p in start.point])
        directions, rule_gradients, learning_rates = [], [], []
        for rule, x, g, m, full in zip(
            start.rules, start.point, start.gradients, start.buffers, full_gradients
        ):
            full = full.view_as(x)
            if rule is None or g is None:  # a parameter the optimizer does not move: d = 0
                directions.append(torch.zeros_like(x))
                rule_gradients.append(full)
                learning_rates.append(torch.zeros_like(x))
                continue
            directions.append(rule.direction(g, m, x)[0])  # d_t
            rule_gradients.append(rule.gradient(full, x))  # ∇f(x_t) as the rule sees it: ±(∇f + λx)
            learning_rates.append(torch.full_like(x, rule.lr))
        full_gradient = flat(rule_gradients)
        noise = flat(directions) - full_gradient  # ω_t = d_t − ∇f(x_t)
        full_norm = full_gradient.norm().item()
        self.gradient_bound = max(self.gradient_bound, full_norm)  # K: max of ‖∇f‖ so far
        row = {
            "full_grad_norm": full_norm,
            "noise_norm": noise.norm().item(),
            "step_noise": (flat(learning_rates) * noise).norm().item(),  # ‖η ω_t‖
            "gradient_variance": statistics.variance,  # C²(x_t)
            "gradient_bound": self.gradient_bound,
        }
        if start.smoothing_method is not None:
            rule = start.uniform_rule
            row["smoothing_delta"] = smoothing_degree(
                start.smoothing_method,
                rule.lr,
                self.batch_size,
                rule.momentum,
                statistics.variance,
                self.gradient_bound,
            )
        return row

    def at_current_point(
        self, model: nn.Module, row: dict[str, float]
    ) -> tuple[dict[str, float], SpectralDensity | None]:
        """`row` with the loss, metrics, ‖x‖ and curvature at the model's parameters; the SLQ density."""
        row = {**row, **(self.loss_and_metrics(model) if self.evaluate else {})}
        row["param_norm"] = flat(p.detach() for p in model.parameters()).norm().item()
        if not (self.top_k or self.trace_probes or self.density):
            return row, None
        hvp = model_hvp(
            model, self.loss_fn, self.hessian_inputs, self.hessian_targets, self.chunk_size, self.mode
        )
        if self.top_k:
            result = top_eigenvalues(
                hvp,
                self.dim,
                k=self.top_k,
                tol=self.eigen_tol,
                max_iter=self.eigen_max_iter,
                generator=self.generator,
                start=self.top_vector,
            )
            self.top_vector = result.eigenvectors[0]
            row.update(
                {f"top_eigenvalue_{i + 1}": value.item() for i, value in enumerate(result.eigenvalues)}
            )
            row["eigen_hvps"], row["eigen_converged"] = result.hvp_count, float(result.converged)
        if self.trace_probes:
            trace = hutchinson_trace(hvp, self.dim, self.trace_probes, self.generator)
            row["hessian_trace"], row["hessian_trace_error"] = trace.trace, trace.standard_error
        density = None
        if self.density:
            density = spectral_density(hvp, self.dim, self.density_probes, self.density_steps, self.generator)
            row["density_moment_1"], row["density_moment_2"] = density.moment(1), density.moment(2)
        return row, density

    @torch.no_grad()
    def loss_and_metrics(self, model: nn.Module) -> dict[str, float]:
        """The mean loss and metrics over `data` at the current parameters, in `mode`, chunk by chunk."""
        totals = dict.fromkeys(["probe_loss", *self.metrics], 0.0)
        count = len(self.inputs)
        size = self.chunk_size or EVALUATION_CHUNK
        for begin in range(0, count, size):
            inputs, targets = self.inputs[begin : begin + size], self.targets[begin : begin + size]
            with probe_mode(model, self.mode):
                outputs = functional_call(model, probe_buffers(model, self.mode), (inputs,))
            weight = len(inputs) / count  # the chunk's share of the mean
            totals["probe_loss"] += float(self.loss_fn(outputs, targets)) * weight
            for name, metric in self.metrics.items():
                totals[name] += float(metric(outputs, targets)) * weight
        return totals


def flat(tensors) -> torch.Tensor:
    return torch.cat([tensor.reshape(-1) for tensor in tensors])


# the worker process

_in_worker: tuple[Measurement, nn.Module] | None = None  # set once in the worker by its initializer


def _start_worker(payload: bytes, threads: int) -> None:
    global _in_worker
    torch.set_num_threads(threads)
    _in_worker = pickle.loads(payload)


def _warm_up(start: StepStart) -> None:
    """A measurement on copies, its result dropped: the first one in a fresh process takes ten times
    longer (lazy imports and first calls of torch.func and LAPACK), and it should not hold up training."""
    measurement, model = _in_worker
    dataclasses.replace(copy.deepcopy(measurement), metrics={})(start, copy.deepcopy(model))


def measure_in_worker(
    start: StepStart, state: dict[str, torch.Tensor]
) -> tuple[dict[str, float], SpectralDensity | None]:
    """A task of the worker process: the measurement from `start` on its model copy loaded with `state`."""
    measurement, model = _in_worker
    model.load_state_dict(state)
    return measurement(start, model)


def start_worker_process(measurement: Measurement, model: nn.Module, start: StepStart) -> ProcessPoolExecutor:
    """A one-process pool holding copies of `measurement` and `model`, started, loaded and warmed up by a
    measurement from `start` before it returns (a spawned interpreter importing torch, and the first
    measurement: a few seconds, once)."""
    try:
        payload = pickle.dumps((measurement, model))
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise ValueError(
            f"background='process' sends the model, loss_fn and metrics to a worker process, and they cannot "
            f"be pickled ({error}): define them at module level, or use background='thread'"
        ) from error
    worker = ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(payload, torch.get_num_threads()),
    )
    try:
        worker.submit(_warm_up, start).result()
    except BrokenProcessPool as error:
        worker.shutdown()
        raise ValueError(
            "background='process': the worker process could not load the model, loss_fn and metrics (classes "
            "and functions defined in a notebook, or in a script without `if __name__ == '__main__':`, are "
            "not importable there); use background='thread'"
        ) from error
    except BaseException:  # the measurement itself failed: the same error the first one would raise
        worker.shutdown(wait=False, cancel_futures=True)
        raise
    return worker
