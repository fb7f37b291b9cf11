"""Sweep throughput: many runs trained in one computation by the batched engines, against the machine's
limits and against the same runs one after another.

feature-margin: R runs of the feature–margin default (GD+M, γ = 0.99; learning rates × 4 seeds, so
4 datasets) through `train_batched`. On the CPU in float32 its full batch is the C kernel, one pass over
each dataset for all its runs; whatever computes it, a step must at least read each dataset once and do
each run's two products, so its bound is the larger of
    memory:  bytes = 4·N·P·d per dataset (12 MB each), ÷ STREAM-like bandwidth on arrays that size
    FLOPs:   2 · 2·(runs·m)·d·(N·P) (both products of every run), ÷ the rate of a 1024³ `mm` (the
             CPU's practical peak)
and run-steps/s is printed as a fraction of R ÷ bound. The engine's other full-batch path (one `bmm` per
bucket of datasets, as on a GPU or without a compiler) is timed beside it, with its products replayed
alone (recorded with their exact shapes and layouts). End to end (setup included): the same
runs one after another with (a) the naive reference loop of `feature_margin_step.py` (the cubic CNN as
an `nn.Module` in float64, autograd, `torch.optim.SGD` in heavy-ball form) and (b) the project's
single-run trainer `train_feature_margin` (the stricter baseline).

students: for each of Table 1's students as the teacher–student reproduction calibrates them (full
batch and its SGD minibatch), R runs (GD+M; learning rates × 4 seeds) through `train_students_batched`.
Its step is batched products (`bmm`) and elementwise work on their outputs; the bound is the step's
products replayed alone (FLOPs = 2·batch·M·K·N each, recorded from one epoch of the engine), and the
step's achieved GFLOP/s is printed as a fraction of the `bmm` throughput at those shapes (target ≥ 60%).
Beside it, per step and end to end: `train_student` one after another (target ≥ 10×), and the ceiling on
that speed-up, R × one run's `train_student` step ÷ the batched step's products alone: a batched step
cannot be faster than its products, so where one run already computes near the `bmm` throughput (the full
batch students), batching cannot give 10×. Each student's logged row (`measure`, run by both trainers at
the first and last epoch and every `log_every_epochs`) is timed against one forward over each whole set.

Every training run is timed REPEATS times and the least counts (the naive loop's, minutes long, once).
A step is timed alone (machine_limits.timed_steps): a feature–margin step between the engine's calls
before each step, a student's epoch by epoch between its calls before each epoch, leaving out the first
and the last of every repeat; the least and the median are printed, since on a shared VM single
differences of whole runs moved a group's fraction by 2x (and a feature–margin step taken as the
difference of two run lengths counted every other job's time slices in it). The speed-ups are end to
end (drawing data, building models, the first and last logged rows), since that is what a sweep costs;
logging and checkpoints are otherwise off. Every limit is measured in this run, at the same thread count.

    python benchmarks/sweep_throughput.py [--suite {feature-margin,students,all}] [--steps 200] [--epochs 30]
                                          [--runs 32] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections.abc import Callable, Iterator

import torch
import torch._dynamo  # torch.optim imports it on first use: here, that second stays out of the timings
from feature_margin_step import naive_run
from machine_limits import (
    FLOAT_BYTES,
    Product,
    best_seconds_each,
    clock_name,
    fraction_line,
    measure_bandwidth,
    measure_matmul,
    record_products,
    replay,
    seconds,
    timed_steps,
)

from momentumlab.experiments.teacher_student import Settings as TableOneSettings
from momentumlab.memory import reuse_freed_memory
from momentumlab.native import load_kernel
from momentumlab.runs.feature_margin import FeatureMarginRunConfig
from momentumlab.runs.teacher_student import TeacherStudentRunConfig
from momentumlab.train.common import DTYPES
from momentumlab.train.feature_margin import build_data, train_feature_margin
from momentumlab.train.feature_margin_batched import train_batched
from momentumlab.train.teacher_student import (
    build_student,
    build_student_data,
    measure,
    set_measurements,
    steps_per_epoch,
    train_student,
)
from momentumlab.train.teacher_student_batched import train_students_batched

MOMENTUM = 0.99
REPEATS = 3  # timings of each run length: the least counts
ROW_REPEATS = 20
STUDENT_WIDTHS = TableOneSettings().students  # Table 1's calibrated students
MINIBATCH = TableOneSettings().minibatch.batch_size
SEEDS = 4
NEVER = 10**9  # log_every / checkpoint_every beyond any run: only the first and last rows are measured


def grid(runs: int) -> list[tuple[int, float]]:
    """(seed, learning rate) of each run: SEEDS seeds × as many learning rates (0.1 to 1) as needed."""
    rates = -(-runs // SEEDS)
    lrs = [0.1 * 10 ** (k / max(rates - 1, 1)) for k in range(rates)]
    return [(seed, lr) for lr in lrs for seed in range(SEEDS)][:runs]


def feature_margin_config(seed: int, lr: float, steps: int) -> FeatureMarginRunConfig:
    return FeatureMarginRunConfig.model_validate(
        {
            "seed": seed,
            "optimizer": {"name": "ema_momentum", "lr": lr, "momentum": MOMENTUM},
            "train": {"steps": steps, "log_every": NEVER, "checkpoint_every": NEVER},
        }
    )


def report(label: str, run_steps: int, elapsed: float) -> float:
    print(f"  {label:<58} {elapsed:8.2f} s  {run_steps / elapsed:10.1f} run-steps/s")
    return run_steps / elapsed


def batched_products(
    work: Callable[[], object], evaluations: int, samples: int = 20
) -> tuple[float, float, float]:
    """(FLOPs, least and median seconds alone over `samples` replays) per evaluation of the batched (3-D)
    products that `work` calls `evaluations` times (2-D products: the single-run measurements at logged
    rows, not part of a step)."""
    products = [p for p in record_products(work) if len(p.args[-1].size) == 3]
    alone = replay(products)
    alone()  # warm
    times = [seconds(alone) / evaluations for _ in range(samples)]
    return sum(p.flops for p in products) / evaluations, min(times), statistics.median(times)


def least_seconds(work: Callable[[], object]) -> float:
    """Least time of REPEATS calls of `work` (a whole training run)."""
    return min(seconds(work) for _ in range(REPEATS))


def batched_steps(configs: list[FeatureMarginRunConfig]) -> tuple[float, float, float]:
    """(least seconds of the whole run, least and median seconds of a step) of `train_batched` on `configs`,
    each step timed alone (:func:`timed_steps`)."""
    return timed_steps(
        lambda on_step: train_batched(configs, [None] * len(configs), on_step=on_step), 1, REPEATS
    )


@contextlib.contextmanager
def native_kernels_off() -> Iterator[None]:
    """The torch paths instead of the C kernels, inside the block."""
    os.environ["MOMENTUMLAB_NATIVE"] = "0"
    load_kernel.cache_clear()
    try:
        yield
    finally:
        del os.environ["MOMENTUMLAB_NATIVE"]
        load_kernel.cache_clear()


def feature_margin_suite(runs: int, steps: int) -> None:
    configs = [feature_margin_config(seed, lr, steps) for seed, lr in grid(runs)]
    print(
        f"feature-margin default (N=20000, d=30, P=5, m=5), GD+M γ={MOMENTUM}, {runs} runs "
        f"({SEEDS} seeds) × {steps} steps, torch threads = {torch.get_num_threads()}, timed by {clock_name()}"
    )
    data = build_data(configs[0]).train.inputs
    datasets = len({seed for seed, _ in grid(runs)})
    bandwidth = measure_bandwidth(data.numel())
    memory_bound = datasets * FLOAT_BYTES * data.numel() / bandwidth.best
    flops = 2 * 2 * runs * configs[0].model.width * data.numel()  # both products of every run
    peak = measure_matmul([Product(1024, 1024, 1024)])
    flop_bound = flops / peak
    print(f"  {bandwidth.describe()}")
    print(
        f"  one step of {runs} runs: memory bound {datasets} × {FLOAT_BYTES * data.numel() / 1e6:.1f} MB ÷ "
        f"{bandwidth.best / 1e9:.1f} GB/s = {1e3 * memory_bound:.2f} ms; FLOP bound {flops / 1e9:.2f} GFLOP ÷ "
        f"{peak / 1e9:.1f} GFLOP/s (a 1024³ mm) = {1e3 * flop_bound:.2f} ms"
    )
    bound = max(memory_bound, flop_bound)
    long_seconds, step, typical = batched_steps(configs)
    print(fraction_line(f"batched step of {runs} runs (least)", step, bound, "max(memory, FLOPs)"))
    print(fraction_line(f"batched step of {runs} runs (median)", typical, bound, "max(memory, FLOPs)"))
    print(
        f"  batched: {runs / step:.0f} run-steps/s per step (median {runs / typical:.0f}); bound "
        f"{runs / bound:.0f} run-steps/s (memory {runs / memory_bound:.0f}, FLOPs {runs / flop_bound:.0f})"
    )
    with native_kernels_off():
        one_step = [feature_margin_config(seed, lr, 1) for seed, lr in grid(runs)]
        # a 1-step run evaluates the full batch twice: at step 0 and after the last step
        _, products, _ = batched_products(lambda: train_batched(one_step, [None] * runs), evaluations=2)
        _, stacked_step, stacked_typical = batched_steps(configs)
    print(
        f"  the stacked `bmm` path (MOMENTUMLAB_NATIVE=0): step {1e3 * stacked_step:.2f} ms (median "
        f"{1e3 * stacked_typical:.2f}), its products alone {1e3 * products:.2f} ms "
        f"({flops / products / 1e9:.1f} GFLOP/s); the kernel's step is {stacked_step / step:.2f}x faster "
        f"(medians: {stacked_typical / typical:.2f}x)"
    )
    total = runs * steps
    batched = report("batched engine end to end (train_batched, float32)", total, long_seconds)
    single = report(
        "one after another: train_feature_margin() (C kernel on the CPU, float32)",
        total,
        least_seconds(lambda: [train_feature_margin(config) for config in configs]),
    )
    naive = report(
        "one after another: naive loop (autograd + SGD, float64)",
        total,
        seconds(lambda: [naive_run(config) for config in configs]),
    )
    print(f"  speed-up over the naive loop: {batched / naive:.2f}x (target >= 5x)")
    print(f"  speed-up over train_feature_margin():        {batched / single:.2f}x")


def student_config(architecture: str, batch_size: int | None, seed: int, lr: float, epochs: int):
    """A Table 1 student as the teacher-student reproduction calibrates it (width, kernel), GD+M."""
    return TeacherStudentRunConfig.model_validate(
        {
            "seed": seed,
            "model": {"architecture": architecture, "width": STUDENT_WIDTHS[architecture]},
            "optimizer": {"name": "ema_momentum", "lr": lr, "momentum": 0.9},
            "train": {
                "epochs": epochs,
                "batch_size": batch_size,
                "log_every_epochs": NEVER,
                "checkpoint_every_epochs": NEVER,
            },
        }
    )


def row_line(config: TeacherStudentRunConfig) -> str:
    """One run's logged row (`measure`: its forward in chunks) against the same row with one forward over
    each whole set, as the rows were measured before; least of ROW_REPEATS interleaved warm calls."""
    dtype = DTYPES[config.train.dtype]
    model, data = build_student(config).to(dtype), build_student_data(config).to(torch.device("cpu"), dtype)
    sets = {"train": data.train, "val": data.validation, "test": data.test}

    @torch.no_grad()
    def one_forward_per_set() -> dict[str, float]:
        return {
            key: value
            for prefix, sample in sets.items()
            for key, value in set_measurements(prefix, model(sample.inputs), sample.labels).items()
        }

    best = best_seconds_each(
        {"chunks": lambda: measure(model, data, 0, 0), "one forward": one_forward_per_set}, ROW_REPEATS
    )
    examples = sum(len(sample.labels) for sample in sets.values())
    return (
        f"a logged row of one run ({examples} examples): measure() {1e3 * best['chunks']:.2f} ms, one forward "
        f"per set {1e3 * best['one forward']:.2f} ms: {best['one forward'] / best['chunks']:.2f}x"
    )


def students_suite(runs: int, epochs: int) -> None:
    print(
        f"teacher–student: Table 1's students as the reproduction calibrates them, GD+M γ=0.9, {runs} runs "
        f"({SEEDS} seeds) × {epochs} epochs each, torch threads = {torch.get_num_threads()}, "
        f"timed by {clock_name()}"
    )
    totals = {"batched": 0.0, "sequential": 0.0}
    for architecture in STUDENT_WIDTHS:
        print(f"  {architecture}: {row_line(student_config(architecture, None, 0, 1.0, epochs))}")
        for batch_size in (None, MINIBATCH):

            def batch(epochs: int, architecture=architecture, batch_size=batch_size) -> list:
                return [student_config(architecture, batch_size, s, lr, epochs) for s, lr in grid(runs)]

            configs, per_epoch = batch(epochs), steps_per_epoch(batch(epochs)[0])
            flops, alone, alone_typical = batched_products(  # as many replays as epochs are timed
                lambda: train_students_batched(batch(1), [None] * runs), per_epoch, REPEATS * (epochs - 2)
            )
            batched, step, typical = timed_steps(
                lambda on_step, configs=configs: train_students_batched(
                    configs, [None] * runs, on_step=on_step
                ),
                per_epoch,
                REPEATS,
            )
            sequential = least_seconds(lambda configs=configs: [train_student(c) for c in configs])
            _, one_step, one_typical = timed_steps(  # one run's step in train_student()
                lambda on_step, configs=configs: train_student(configs[0], on_step=on_step),
                per_epoch,
                REPEATS,
            )
            totals["batched"] += batched
            totals["sequential"] += sequential
            label = f"{architecture} (width {STUDENT_WIDTHS[architecture]}), " + (
                "full batch" if batch_size is None else f"minibatch {batch_size}"
            )
            print(
                f"  {label:36s} step of {runs} runs {1e3 * step:7.3f} ms = {flops / step / 1e9:5.1f} GFLOP/s; "
                f"its bmm alone {1e3 * alone:7.3f} ms = {flops / alone / 1e9:5.1f} GFLOP/s: "
                f"at {alone / step:5.1%} of bmm throughput (medians: step {1e3 * typical:.3f} ms, bmm "
                f"{1e3 * alone_typical:.3f} ms, {alone_typical / typical:.1%})"
            )
            print(
                f"  {'':36s} per step: train_student() {1e3 * one_step:6.3f} ms per run "
                f"({flops / runs / one_step / 1e9:4.1f} GFLOP/s), × {runs} runs: {runs * one_step / step:.2f}x "
                f"the batched step (medians: {runs * one_typical / typical:.2f}x); the most batching allows "
                f"(the step at its bmm alone): {runs * one_step / alone:.2f}x"
            )
            print(
                f"  {'':36s} end to end: batched {batched:6.2f} s, train_student() one after another "
                f"{sequential:6.2f} s: {sequential / batched:.2f}x"
            )
    ratio = totals["sequential"] / totals["batched"]
    print(f"  all students: speed-up over train_student(): {ratio:.2f}x (target >= 10x)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=["feature-margin", "students", "all"], default="all")
    parser.add_argument("--steps", type=int, default=200, help="feature-margin steps per run")
    parser.add_argument("--epochs", type=int, default=30, help="teacher-student epochs per run")
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error(
            f"--epochs {args.epochs}: a step is timed over the epochs between the first and the last (>= 3)"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as the trainers do on their first call: every timing under the same allocator
    if args.suite in ("feature-margin", "all"):
        feature_margin_suite(args.runs, args.steps)
    if args.suite in ("students", "all"):
        students_suite(args.runs, args.epochs)


if __name__ == "__main__":
    main()
