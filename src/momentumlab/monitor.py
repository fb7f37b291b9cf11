"""Momentum-aware instruments for any PyTorch training loop: :class:`Monitor`.

    monitor = Monitor(model, F.cross_entropy, optimizer, (train_inputs, train_labels), every=100)
    for inputs, labels in loader:                    # the user's loop, unchanged
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        monitor.step(loss)                           # measures at every `every`-th step
    monitor.table()                                  # tidy rows: step, name, value

The monitor reads the optimizer's own state and hyperparameters (:mod:`momentumlab.probes.update_rules`)
through a step pre-hook that copies, at measured steps only, the point x_t, the minibatch gradient g_t and
the buffer m_{t−1} before the step. It draws no random numbers from the global generators, writes no
gradient, buffer or training flag of the model (every probe runs in `mode` and restores what it touches,
:mod:`momentumlab.probes.model_state`), so training with and without it gives bit-identical parameters.

With ``background="thread"`` (or ``True``) the probes run in a worker thread on a copy of the model, and
with ``background="process"`` in a worker process on the model's state, taken at the measured step while
training goes on: the cost of a measurement moves to a core the training loop leaves idle (a small model
trains no faster on two threads than on one). A thread shares the interpreter's lock with the loop; a
process shares only the machine, but needs the model, the loss and the metrics picklable and importable
(module-level definitions, a script's training under ``if __name__ == "__main__":``; not lambdas or
classes of a notebook) and takes a few seconds to start and warm up, once, at construction. On the digits
CNN of ``benchmarks/monitor_overhead.py`` (a measurement every 100 steps, medians of paired runs on a
2-core VM, five runs) they cost 1.03–1.13× and 1.04–1.16× against 1.64–1.86× in the loop, where the plain
loop beside a process doing HVPs back to back ran 0.96–1.14× slower (on a VM where that was 1.11×: 1.19×
and 1.14×). Rows then reach :meth:`table` and the loggers when they are done, in step order; at most two
measurements are outstanding (the loop waits for the older one), and :meth:`table`, :meth:`save` and
:meth:`close` wait for all. Both need ``mode="eval"`` (eval-mode probes do not touch the global RNG the
loop draws from) and pay off only with a spare core: with torch's intra-op threads on every core the
worker and the loop compete (set ``torch.set_num_threads``).

At step t (t optimizer steps taken, measured when t is a multiple of `every`), one row holds:

- at the point x_t where the step started: ``grad_norm`` ‖g_t‖; with ``noise``, the full gradient ∇f(x_t)
  of the mean loss over `data` (``full_grad_norm``), the search direction d_t of the rule actually used
  and its noise ω_t = d_t − ∇f(x_t) (``noise_norm`` ‖ω_t‖, ``step_noise`` ‖η ω_t‖), C²(x_t) =
  E_i‖∇f_i − ∇f‖² (``gradient_variance``), K = the running maximum of ‖∇f‖ (``gradient_bound``) and the
  theory's δ (``smoothing_delta``, SGD, heavy ball and EMA momentum; SPEC §3). These are estimated from
  per-sample gradients on a fixed random subset S of `noise_examples` examples (default 256; None: all of
  `data`, exact): ∇f by the mean over S (unbiased), C² by (N−1)/N · s² with s² the sample variance over
  S (unbiased for the C² of all N examples); the norms ‖∇f‖, ‖ω‖, ‖ηω‖ and hence K and δ are those of
  the subset's estimate, whose square exceeds the full set's by (1 − |S|/N) s²/|S| on average;
- the step itself: ``buffer_norm`` ‖m_t‖ and ``buffer_grad_cosine`` cos(m_t, g_t) (Adam: m_t = exp_avg),
  ``effective_step`` η_eff (SGD-type rules only), ``update_grad_ratio`` ‖x_{t+1} − x_t‖ / ‖η g_t‖;
- at the new point x_{t+1}: ``loss`` (the minibatch loss passed to :meth:`Monitor.step`), ``probe_loss``
  and each metric over `data` (with ``evaluate``, the default), ``param_norm``, the top-k Hessian
  eigenvalues (``top_eigenvalue_1`` …, Lanczos warm-started from the previous top eigenvector, with
  ``eigen_hvps`` and ``eigen_converged``) of the Hessian of the mean loss over a fixed random subset of
  `hessian_batch` examples (default 256; None: all of `data`) — the subset's Hessian, not an estimate of
  the full set's — the Hutchinson trace (``hessian_trace``, ``hessian_trace_error``) and an SLQ spectral
  density (kept in :attr:`densities`; ``density_moment_1``, ``density_moment_2`` = ∫λ dμ, ∫λ² dμ in the
  table).
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from typing_extensions import Self

from momentumlab import atomic
from momentumlab.loggers import MetricLogger, TableLogger
from momentumlab.measurement import (
    LossFn,
    Measurement,
    Metric,
    StepStart,
    flat,
    measure_in_worker,
    start_worker_process,
)
from momentumlab.probes.model_state import Mode, check_mode
from momentumlab.probes.spectral_density import SpectralDensity
from momentumlab.probes.update_rules import UpdateRule, update_rules

Background = Literal["thread", "process"]
BACKGROUNDS: tuple[Background, ...] = ("thread", "process")


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose largest output is the target class."""
    return (outputs.argmax(1) == targets).double().mean()


class Monitor:
    """Instruments `model` trained by `optimizer` on `loss_fn`; call :meth:`step` after each
    ``optimizer.step()`` (or use it as a context manager, which closes it at the end).

    `data` is what the measurements average over: a DataLoader (read once, at construction, without
    touching the global random state) or a tuple (inputs, targets). `batch_size` is the training batch
    size b in δ (default: the DataLoader's). `hessian_batch` and `noise_examples` bound the examples the
    curvature and the noise are measured on (fixed random subsets drawn at construction; None: all).
    `metrics` maps names to (outputs, targets) ↦ batch means, e.g.
    ``{"accuracy": accuracy}``; `evaluate=False` skips the pass over all of `data` that gives them and
    ``probe_loss`` (on the digits CNN 11–13 ms of a 150–160 ms measurement). `loggers` receive every row
    (:class:`~momentumlab.loggers.MetricLogger`); the monitor also keeps them in a table (:meth:`table`,
    :meth:`save`). `chunk_size` bounds the examples per forward pass of every probe (without it: the loss
    and metrics in chunks of :data:`~momentumlab.measurement.EVALUATION_CHUNK`, the Hessian subset in
    one, per-sample gradients in chunks of 256; in train mode BatchNorm normalizes each chunk by its own
    statistics). `background` ("thread" or True, or "process") runs the probes in a worker beside
    training (module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: Optimizer,
        data: DataLoader | tuple[torch.Tensor, torch.Tensor],
        *,
        every: int = 100,
        metrics: Mapping[str, Metric] | None = None,
        evaluate: bool = True,
        mode: Mode = "eval",
        top_k: int = 1,
        eigen_tol: float = 1e-3,
        eigen_max_iter: int = 100,
        hessian_batch: int | None = 256,
        trace_probes: int = 0,
        density: bool = False,
        density_probes: int = 4,
        density_steps: int = 30,
        noise: bool = True,
        noise_examples: int | None = 256,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        loggers: Sequence[MetricLogger] = (),
        seed: int = 0,
        background: bool | Background = False,
    ):
        check_mode(mode)
        if every < 1:
            raise ValueError(f"every={every}: must be a positive number of steps")
        if background not in (False, True, *BACKGROUNDS):
            raise ValueError(
                f"background={background!r}: allowed are False, True (= 'thread'), 'thread', 'process'"
            )
        if background and mode != "eval":
            raise ValueError(
                f"background={background!r} with mode={mode!r}: train-mode probes draw dropout masks from the "
                "global RNG the training loop draws from; use mode='eval'"
            )
        if metrics and not evaluate:
            raise ValueError(
                f"evaluate=False with metrics {sorted(metrics)}: metrics need the pass over data"
            )
        if top_k < 0 or trace_probes < 0 or trace_probes == 1:
            raise ValueError(f"top_k={top_k}, trace_probes={trace_probes}: top_k ≥ 0, trace_probes 0 or ≥ 2")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.every, self.loggers = every, list(loggers)
        self.rules = update_rules(optimizer)
        if noise and not all(rule.has_direction for rule in self.rules):
            raise ValueError(
                "noise=True: Adam/AdamW have no search direction on the gradient's scale; use noise=False"
            )
        if (
            noise
            and mode == "train"
            and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        ):
            raise ValueError(
                "mode='train' with noise=True: per-sample gradients of a BatchNorm model are defined in eval "
                "mode only (a batch of one has no batch statistics); use mode='eval' or noise=False"
            )
        self.batch_size = batch_size if batch_size is not None else getattr(data, "batch_size", None)
        uniform_rule = _uniform(self.rules)
        if noise and uniform_rule is not None and uniform_rule.smoothing_method and self.batch_size is None:
            raise ValueError("batch_size=None: δ needs the training batch size b; pass batch_size=...")
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        inputs, targets = _materialize(data, device)
        count = len(inputs)
        for name, size in (("hessian_batch", hessian_batch), ("noise_examples", noise_examples)):
            if size is not None and size < (2 if name == "noise_examples" else 1):
                raise ValueError(
                    f"{name}={size}: must be a number of examples (≥ 1, noise ≥ 2), or None for all {count}"
                )
        hessian_subset = torch.randperm(count, generator=generator, device=device)[: hessian_batch or count]
        noise_subset = slice(None)
        if noise_examples is not None and noise_examples < count:
            noise_subset = torch.randperm(count, generator=generator, device=device)[:noise_examples]
        dim = sum(parameter.numel() for parameter in model.parameters())
        self.measurement = Measurement(
            loss_fn, dict(metrics or {}), evaluate, mode, top_k, eigen_tol, eigen_max_iter, trace_probes,
            density, density_probes, density_steps, noise, self.batch_size, chunk_size, inputs, targets,
            inputs[hessian_subset], targets[hessian_subset], inputs[noise_subset], targets[noise_subset],
            generator, dim,
        )  # fmt: skip
        self._densities: dict[int, SpectralDensity] = {}
        self._table = TableLogger()
        self._steps = self._optimizer_steps = 0
        self._start: StepStart | None = None
        self.background: Background | None = "thread" if background is True else background or None
        self._worker: Executor | None = None
        if self.background == "thread":
            self._worker = ThreadPoolExecutor(1, "momentumlab-monitor")
        elif self.background == "process":
            self._worker = start_worker_process(self.measurement, model, self._step_start(optimizer))
        self._pending: deque[tuple[int, dict[str, float], Future]] = deque()  # (step, row so far, probes)
        self._hook = optimizer.register_step_pre_hook(self._before_step)

    # the training loop's side

    def step(self, loss: torch.Tensor | float | None = None) -> dict[str, float] | None:
        """Call once after each ``optimizer.step()``; returns the row measured at this step, if any (None in
        the background, where rows reach the table when done)."""
        self._steps += 1
        if self._steps != self._optimizer_steps:
            raise RuntimeError(
                f"monitor.step() call {self._steps} after {self._optimizer_steps} optimizer steps: "
                "call it once after each optimizer.step()"
            )
        self._collect(wait=False)
        if self._steps % self.every:
            return None
        start, self._start = self._start, None
        if self._worker is None:
            with torch.random.fork_rng(devices=_cuda_devices(self.model)):
                row = self._step_quantities(start, loss)
                return self._record(self._steps, row, *self.measurement(start, self.model))
        if len(self._pending) == 2:
            self._collect(wait=True, keep=1)
        row = self._step_quantities(start, loss)
        if self.background == "thread":
            job = self._worker.submit(self.measurement, start, copy.deepcopy(self.model))
        else:  # the state as it is now: the task is pickled later, in the pool's feeder thread
            state = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
            job = self._worker.submit(measure_in_worker, start, state)
        self._pending.append((self._steps, row, job))
        return None

    def table(self) -> pd.DataFrame:
        """Every measured value: columns step, name, value."""
        self._collect(wait=True)
        return self._table.frame()

    @property
    def hessian_inputs(self) -> torch.Tensor:
        """The fixed subset the Hessian is taken over (its targets: :attr:`hessian_targets`)."""
        return self.measurement.hessian_inputs

    @property
    def hessian_targets(self) -> torch.Tensor:
        return self.measurement.hessian_targets

    @property
    def noise_inputs(self) -> torch.Tensor:
        """The fixed subset the noise is estimated on (its targets: :attr:`noise_targets`)."""
        return self.measurement.noise_inputs

    @property
    def noise_targets(self) -> torch.Tensor:
        return self.measurement.noise_targets

    @property
    def dim(self) -> int:
        """The number of parameters."""
        return self.measurement.dim

    @property
    def densities(self) -> dict[int, SpectralDensity]:
        """The SLQ spectral density of each measured step (with ``density=True``)."""
        self._collect(wait=True)
        return self._densities

    def spectra(self) -> pd.DataFrame:
        """The SLQ quadratures behind :attr:`densities`: columns step, probe, node, weight."""
        rows = [
            (step, probe, float(node), float(weight))
            for step, density in self.densities.items()
            for probe, (nodes, weights) in enumerate(zip(density.nodes, density.weights))
            for node, weight in zip(nodes, weights)
        ]
        return pd.DataFrame(rows, columns=["step", "probe", "node", "weight"])

    def save(self, path: Path | str) -> None:
        """The table as Parquet at `path`, written atomically."""
        frame = self.table()
        atomic.atomic_write(Path(path), lambda stream: frame.to_parquet(stream, index=False))

    def close(self) -> None:
        """Wait for the background measurements, remove the optimizer hook and close the loggers."""
        try:
            self._collect(wait=True)
        finally:
            if self._worker is not None:  # every result is in: no need to wait for a process to exit
                self._worker.shutdown(wait=False, cancel_futures=True)
            self._hook.remove()
            for logger in self.loggers:
                logger.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _collect(self, wait: bool, keep: int = 0) -> None:
        """Record the background rows that are done, in step order; with `wait`, all but the last `keep`."""
        while self._pending and (self._pending[0][2].done() or (wait and len(self._pending) > keep)):
            step, row, job = self._pending.popleft()
            self._record(step, row, *job.result())

    def _record(
        self, step: int, row: dict[str, float], probes: dict[str, float], density: SpectralDensity | None
    ) -> dict[str, float]:
        """The step's quantities and its probes' as one row, recorded and returned; the density kept."""
        row = {**row, **probes}
        if density is not None:
            self._densities[step] = density
        self._table.log(step, row)
        for logger in self.loggers:
            logger.log(step, row)
        return row

    # measurements

    def _before_step(self, optimizer: Optimizer, args, kwargs) -> None:
        self._optimizer_steps += 1
        if self._optimizer_steps % self.every == 0:
            self._start = self._step_start(optimizer)

    def _step_start(self, optimizer: Optimizer) -> StepStart:
        """Copies of x_t, g_t and m_{t−1}, and the rules as the optimizer holds them now (a scheduler may
        have changed η)."""
        rules = update_rules(optimizer)
        rule_of = {id(p): rule for rule, group in zip(rules, optimizer.param_groups) for p in group["params"]}
        parameters = list(self.model.parameters())
        return StepStart(
            point=[parameter.detach().clone() for parameter in parameters],
            gradients=[None if p.grad is None else p.grad.detach().clone() for p in parameters],
            buffers=[_buffer(optimizer, p, rule_of.get(id(p))) for p in parameters],
            rules=[rule_of.get(id(p)) for p in parameters],
            uniform_rule=_uniform(rules),
        )

    def _step_quantities(self, start: StepStart, loss) -> dict[str, float]:
        """What the step itself shows (cheap, measured in the loop): the loss passed, ‖g_t‖, the buffer."""
        parameters = list(self.model.parameters())
        row: dict[str, float] = {}
        if loss is not None:
            row["loss"] = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        gradient = flat(
            g if g is not None else torch.zeros_like(p) for g, p in zip(start.gradients, parameters)
        )
        row["grad_norm"] = gradient.norm().item()
        row.update(self._momentum_quantities(start, parameters, gradient))
        return row

    def _momentum_quantities(self, start: StepStart, parameters, gradient) -> dict[str, float]:
        row = {}
        if any(rule is not None and rule.buffer_key for rule in start.rules):
            buffers = (_buffer(self.optimizer, p, rule) for p, rule in zip(parameters, start.rules))
            buffer = flat(b if b is not None else torch.zeros_like(p) for b, p in zip(buffers, parameters))
            row["buffer_norm"] = buffer.norm().item()
            row["buffer_grad_cosine"] = _cosine(buffer, gradient)
        if start.uniform_rule is not None and start.uniform_rule.effective_step is not None:
            row["effective_step"] = start.uniform_rule.effective_step  # η(1−τ)/(1−β)
        update = flat(before - after.detach() for before, after in zip(start.point, parameters))
        scaled_gradient = flat(
            (rule.lr if rule is not None else 0.0) * (g if g is not None else torch.zeros_like(p))
            for rule, g, p in zip(start.rules, start.gradients, parameters)
        )
        row["update_grad_ratio"] = update.norm().item() / scaled_gradient.norm().item()  # ‖Δx‖ / ‖ηg‖
        return row


def _materialize(data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, DataLoader):
        with torch.random.fork_rng(devices=[]):  # a shuffling loader draws its seed from the global RNG
            batches = list(data)
        return torch.cat([b[0] for b in batches]).to(device), torch.cat([b[1] for b in batches]).to(device)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        if len(data[0]) != len(data[1]):
            raise ValueError(f"data: {len(data[0])} inputs but {len(data[1])} targets")
        return data[0].to(device), data[1].to(device)
    raise TypeError(
        f"data of type {type(data).__name__}: allowed are a DataLoader or a tuple (inputs, targets)"
    )


def _uniform(rules: list[UpdateRule]) -> UpdateRule | None:
    """The rule every group shares, or None when groups differ (δ and η_eff need one η and one β)."""
    return rules[0] if all(rule == rules[0] for rule in rules) else None


def _buffer(optimizer: Optimizer, parameter: torch.Tensor, rule: UpdateRule | None) -> torch.Tensor | None:
    """A copy of the parameter's buffer under its rule's key; None before the optimizer creates it."""
    state = optimizer.state.get(parameter, {})
    value = state.get(rule.buffer_key) if rule is not None and rule.buffer_key else None
    return None if value is None else value.detach().clone()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    norms = a.norm() * b.norm()
    return (a @ b / norms).item() if norms > 0 else math.nan


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
