"""The GPU paths on one CUDA device: each trainer's step against the GPU's limits, and its syncs per step.

Limits, measured in this run, each the best of REPEATS CUDA-event timings after a warm call:
    copy   b ← a            bytes = 8n   on 1 GiB float32 arrays (far beyond the L2)
    triad  a ← b + q·c      bytes = 12n
    mm     8192³ in float32 (TF32 off, as the trainers compute) and in bfloat16 (the image trainer's autocast)
and each step's own matrix products replayed alone at their recorded shapes and layouts.

- feature-margin: sweep_throughput's R runs (GD+M; learning rates × 4 seeds, so 4 datasets) through
  `train_batched` in float32, full batch (per bucket of datasets one `bmm` pair over S slices of the
  examples). Bound: the larger of reading each dataset once (12 MB ÷ bandwidth) and the step's FLOPs
  ÷ the float32 `mm` rate; the step's products alone are printed beside it.
- students: Table 1's students as the reproduction calibrates them, full batch and minibatch 100, R runs
  through `train_students_batched` in float32. Bound: the step's `bmm`s alone (and its FLOPs as a
  fraction of the float32 `mm` rate).
- images: `train_images` as the CIFAR reproduction runs it (ResNet-18 without normalization, bf16 autocast,
  channels_last; full batch of 50 000 in chunks of 1 000) and at minibatch 128, on random CIFAR-10-shaped
  files written here. Bound: the step's FLOPs (torch.utils.flop_counter, forward and backward) ÷ the bf16
  `mm` rate.

A step's time is the wall time between the trainer's successive `on_step` calls (per step, or per epoch
for the students), the first and the last left out (machine_limits.timed_steps): each step ends in its
one sync, so that is the GPU's time for the step plus any host time it did not hide. Least and median.
Syncs per step are counted in a separate run by torch's sync debug mode (momentumlab.train.syncs).
Without a CUDA device the script says so and exits.

    python benchmarks/gpu_steps.py [--runs 32] [--steps 200] [--epochs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine_limits import record_products, replay, timed_steps
from sweep_throughput import MINIBATCH, SEEDS, STUDENT_WIDTHS, feature_margin_config, grid, student_config
from torch.utils.flop_counter import FlopCounterMode

from momentumlab.data.cifar import write_cifar_files
from momentumlab.data.images import DATA_DIR_VARIABLE
from momentumlab.runs.image import ImageRunConfig
from momentumlab.train.feature_margin import build_data
from momentumlab.train.feature_margin_batched import train_batched
from momentumlab.train.images import accumulate_gradient, build_image_model, train_images
from momentumlab.train.syncs import syncs_per_mark
from momentumlab.train.teacher_student import steps_per_epoch
from momentumlab.train.teacher_student_batched import train_students_batched

REPEATS = 3
GIB_FLOATS = 2**28  # 1 GiB of float32
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000


def on_gpu(config):
    """`config` with train.device = cuda."""
    return config.model_copy(update={"train": config.train.model_copy(update={"device": "cuda"})})


def gpu_times(work: Callable[[], object], repeats: int = REPEATS) -> tuple[float, float]:
    """(least, median) seconds of `repeats` calls of `work`, each timed by CUDA events after a warm call."""
    work()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return min(times), statistics.median(times)


def wall_clock() -> float:
    """Wall time once the GPU has finished what was queued (a step boundary)."""
    torch.cuda.synchronize()
    return time.perf_counter()


def bandwidth() -> float:
    """Best of copy and triad rates in bytes/s on 1 GiB float32 arrays."""
    a, b, c = (torch.rand(GIB_FLOATS, device="cuda") for _ in range(3))
    copy, _ = gpu_times(lambda: b.copy_(a), 10)
    triad, _ = gpu_times(lambda: torch.add(b, c, alpha=3.0, out=a), 10)
    n = GIB_FLOATS * 4
    print(
        f"  memory bandwidth on 1 GiB arrays: copy {2 * n / copy / 1e12:.2f}, triad {3 * n / triad / 1e12:.2f} TB/s"
    )
    return max(2 * n / copy, 3 * n / triad)


def matmul_rate(dtype: torch.dtype) -> float:
    """FLOP/s of an 8192³ `mm` in `dtype`."""
    left, right = (torch.rand(8192, 8192, device="cuda", dtype=dtype) for _ in range(2))
    out = torch.empty_like(left)
    least, _ = gpu_times(lambda: torch.mm(left, right, out=out), 10)
    return 2 * 8192**3 / least


def products_alone(work: Callable[[], object], evaluations: int) -> tuple[float, float]:
    """(FLOPs, least seconds) per evaluation of the batched (3-D) products that `work` calls `evaluations`
    times, replayed alone on the GPU."""
    products = [p for p in record_products(work) if len(p.args[-1].size) == 3]
    least, _ = gpu_times(replay(products, "cuda"), 20)
    return sum(p.flops for p in products) / evaluations, least / evaluations


def syncs_line(train: Callable[[Callable[[int], None]], object], per_mark: int) -> str:
    """Syncs per step between `on_step` marks (each `per_mark` steps), the first and the last left out."""
    counts = [count / per_mark for count in syncs_per_mark(train)]
    return f"syncs per step {min(counts):g}–{max(counts):g} over {len(counts)} marks"


def fraction(seconds: float, bound: float) -> str:
    return f"{1e3 * seconds:8.3f} ms, bound {1e3 * bound:7.3f} ms: at {bound / seconds:5.1%} of the bound"


def feature_margin_suite(runs: int, steps: int, bytes_per_second: float, fp32_rate: float) -> None:
    configs = [on_gpu(feature_margin_config(seed, lr, steps)) for seed, lr in grid(runs)]
    data = build_data(configs[0]).train.inputs
    one_step = [on_gpu(feature_margin_config(seed, lr, 1)) for seed, lr in grid(runs)]
    # a 1-step run evaluates the full batch twice: at step 0 and after the last step
    flops, alone = products_alone(lambda: train_batched(one_step, [None] * runs), evaluations=2)
    memory = SEEDS * 4 * data.numel() / bytes_per_second  # each dataset read once
    bound = max(memory, flops / fp32_rate)
    train = lambda on_step: train_batched(configs, [None] * runs, on_step=on_step)
    whole, least, median = timed_steps(train, 1, REPEATS, wall_clock)
    print(
        f"feature-margin default, {runs} runs × {steps} steps, full batch, float32: bound = max(memory "
        f"{1e3 * memory:.3f} ms, {flops / 1e9:.2f} GFLOP ÷ float32 mm {1e3 * flops / fp32_rate:.3f} ms); "
        f"the step's products alone {1e3 * alone:.3f} ms ({flops / alone / 1e12:.2f} TFLOP/s)"
    )
    print(f"  step (least)  {fraction(least, bound)}; the products alone are {alone / least:.1%} of it")
    print(
        f"  step (median) {fraction(median, bound)}; {runs / least:.0f} run-steps/s; whole run {whole:.2f} s"
    )
    print(f"  {syncs_line(train, 1)}")


def students_suite(runs: int, epochs: int, fp32_rate: float) -> None:
    print(f"teacher–student students, {runs} runs × {epochs} epochs, GD+M γ=0.9, float32")
    for architecture in STUDENT_WIDTHS:
        for batch_size in (None, MINIBATCH):

            def batch(epochs: int, architecture=architecture, batch_size=batch_size) -> list:
                return [
                    on_gpu(student_config(architecture, batch_size, seed, lr, epochs))
                    for seed, lr in grid(runs)
                ]

            configs = batch(epochs)
            per_epoch = steps_per_epoch(configs[0])
            flops, alone = products_alone(
                lambda batch=batch: train_students_batched(batch(1), [None] * runs), per_epoch
            )
            train = lambda on_step, configs=configs: train_students_batched(
                configs, [None] * runs, on_step=on_step
            )
            whole, least, median = timed_steps(train, per_epoch, REPEATS, wall_clock)
            label = f"{architecture}, " + ("full batch" if batch_size is None else f"minibatch {batch_size}")
            print(
                f"  {label:22s} step {fraction(least, alone)} (its bmm alone, {flops / alone / 1e9:.0f} GFLOP/s; "
                f"{flops / least / fp32_rate:.2%} of float32 mm); median {1e3 * median:.3f} ms; whole run "
                f"{whole:.2f} s; {syncs_line(train, per_epoch)}"
            )


def cifar_files(directory: Path) -> None:
    """Random CIFAR-10-shaped files (uint8 pixels, labels 0–9) in the official format under `directory`."""
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, size=(CIFAR_TRAIN + CIFAR_TEST, 32, 32, 3), dtype=np.uint8)
    labels = generator.integers(0, 10, size=CIFAR_TRAIN + CIFAR_TEST)
    write_cifar_files(
        directory,
        "cifar10",
        images[:CIFAR_TRAIN],
        labels[:CIFAR_TRAIN],
        images[CIFAR_TRAIN:],
        labels[CIFAR_TRAIN:],
    )


def image_config(batch_size: int | None, epochs: int) -> ImageRunConfig:
    return ImageRunConfig.model_validate(
        {
            "model": {"name": "resnet18", "norm": "none"},
            "optimizer": {"name": "heavy_ball", "lr": 0.01, "momentum": 0.9},
            "train": {
                "epochs": epochs,
                "batch_size": batch_size,
                "chunk_size": 1000,
                "device": "cuda",
                "log_every_epochs": epochs,
                "checkpoint_every_epochs": epochs,
                "sharpness_at_end": False,
            },
        }
    )


def step_flops(config: ImageRunConfig) -> float:
    """FLOPs of one optimizer step's forward and backward passes over its batch (chunk by chunk)."""
    model = build_image_model(config, 3, 32, 10).to("cuda", memory_format=torch.channels_last)
    chunk = min(config.train.chunk_size, config.train.batch_size or CIFAR_TRAIN)
    images = torch.randn(chunk, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (chunk,), device="cuda")
    counter = FlopCounterMode(display=False)
    with counter:
        accumulate_gradient(
            model,
            images,
            labels,
            chunk,
            lambda: torch.autocast("cuda", dtype=torch.bfloat16),
            torch.channels_last,
        )
    return counter.get_total_flops() * (config.train.batch_size or CIFAR_TRAIN) / chunk


def images_suite(bf16_rate: float) -> None:
    print(
        f"image trainer: ResNet-18 on random CIFAR-10-shaped data ({CIFAR_TRAIN} images), bf16 autocast, channels_last"
    )
    with tempfile.TemporaryDirectory() as directory:
        cifar_files(Path(directory))
        os.environ[DATA_DIR_VARIABLE] = directory
        for batch_size, epochs in ((None, 5), (128, 2)):
            config = image_config(batch_size, epochs)
            bound = step_flops(config) / bf16_rate
            train = lambda on_step, config=config: train_images(config, on_step=on_step)
            whole, least, median = timed_steps(train, 1, 1, wall_clock)
            label = "full batch" if batch_size is None else f"minibatch {batch_size}"
            print(
                f"  {label:14s} step {fraction(least, bound)} (FLOPs ÷ bf16 mm); median {1e3 * median:.3f} ms; "
                f"whole run {whole:.1f} s; {syncs_line(train, 1)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200, help="feature-margin steps per run")
    parser.add_argument("--epochs", type=int, default=30, help="teacher-student epochs per run")
    parser.add_argument("--suite", choices=["feature-margin", "students", "images", "all"], default="all")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    bytes_per_second = bandwidth()
    fp32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    print(f"  8192³ mm: float32 {fp32 / 1e12:.1f} TFLOP/s, bfloat16 {bf16 / 1e12:.1f} TFLOP/s")
    if args.suite in ("feature-margin", "all"):
        feature_margin_suite(args.runs, args.steps, bytes_per_second, fp32)
    if args.suite in ("students", "all"):
        students_suite(args.runs, args.epochs, fp32)
    if args.suite in ("images", "all"):
        images_suite(bf16)


if __name__ == "__main__":
    main()
