"""Training-step time on the default feature–margin data against the machine's limits, and a naive loop.

One full-batch step (N = 20000 examples, P = 5 patches, d = 30, m = 5 filters; float32) must at least
- read the data once:      bytes = 4·N·P·d (12 MB) + 4·7·N for the per-example vectors (outputs,
                           margins, labels; the chunk buffers of (m, chunk·P) stay in cache), and
- run its two products:    FLOPs = 2·m·d·(N·P) for the projections ⟨w_r, X_i[j]⟩ and as many for the
                           gradient Σ_i Σ_j c_ij X_i[j] (60 MFLOP; the cubes and sums are O(m·N·P)).
Both limits are measured in this run (machine_limits.py): memory bandwidth STREAM-like on arrays the
size of the data (the cache's rate where the data fits in the last-level cache, as the default's 12 MB
does in 32 MB: the tightest bound, and the one this step's data sees between steps unless other jobs evict
it) and on arrays of 4× the last-level cache (STREAM's rule: main memory's rate, the bound of a step whose
data was evicted), and the FLOP rate of a large square `mm` (1024³, the CPU's practical peak), which
bounds 60 MFLOP from below however the products are written; also the torch path's own products, recorded
with their exact shapes and layouts and replayed alone. The objective runs on its default engine (the C
kernel of `cubic_objective.c` on the CPU in float32) and on the torch path (`compiled=False`, at several
chunkings). Each step time is printed with its bounds and the fraction of each limit it reaches; beside
it, the old yardstick: the naive loop one would write by hand (the cubic CNN as an `nn.Module` in
float64, autograd, `torch.optim.SGD` for GD+M in heavy-ball form with lr = η(1−γ), which has GD+M's
iterates). The kernel runs on torch's thread count, as the torch path does.

The trainer's number is the per-step cost of `train_feature_margin` itself, each step timed alone between
its calls before each step (machine_limits.timed_steps), so that data generation and setup do not
count: the least, as every bound here, and the median; "objective" is one call of the full-batch (L, ∇L)
it steps on.

    python benchmarks/feature_margin_step.py [--steps 1000] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from machine_limits import (
    FLOAT_BYTES,
    Product,
    best_seconds_each,
    clock_name,
    fraction_line,
    measure_bandwidth,
    measure_matmul,
    measure_memory_bandwidth,
    record_products,
    replay,
    timed_steps,
)

from momentumlab.memory import reuse_freed_memory
from momentumlab.models.cubic_cnn import CubicCNN, FullBatchCubicObjective, logistic_objective
from momentumlab.optim import ema_to_heavy_ball
from momentumlab.runs.feature_margin import FeatureMarginRunConfig
from momentumlab.train.feature_margin import build_data, build_model, train_feature_margin

LR, MOMENTUM = 0.5, 0.99
PER_EXAMPLE_VECTORS = 7  # f written and read, −y read twice, −3y/N read, margins written and read


def config(steps: int) -> FeatureMarginRunConfig:
    return FeatureMarginRunConfig.model_validate(
        {
            "optimizer": {"name": "ema_momentum", "lr": LR, "momentum": MOMENTUM},
            "train": {"steps": steps, "log_every": 10**9, "checkpoint_every": 10**9},
        }
    )


def trainer_step_seconds(steps: int, repeats: int) -> tuple[float, float]:
    """(least, median) seconds of one step of `train_feature_margin`, each step timed alone."""
    _, least, median = timed_steps(
        lambda on_step: train_feature_margin(config(steps), on_step=on_step), 1, repeats
    )
    return least, median


def naive_run(run: FeatureMarginRunConfig, on_step: Callable[[int], None] | None = None) -> None:
    """One run of the naive loop one would write by hand: the cubic CNN as an `nn.Module` in float64,
    autograd, `torch.optim.SGD` in heavy-ball form with GD+M's iterates; `on_step(t)` before step t."""
    data = build_data(run)
    inputs, labels = data.train.inputs, data.train.labels  # float64
    model = CubicCNN(run.model.width, run.data.dim, run.model.init_std).double()
    model.load_state_dict({"weight": build_model(run).weight.detach().double()})
    lr, momentum = ema_to_heavy_ball(run.optimizer.lr, run.optimizer.momentum)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for step in range(run.train.steps):
        if on_step is not None:
            on_step(step)
        optimizer.zero_grad()
        loss = logistic_objective(model(inputs), labels, model.weight, 0.0)
        loss.backward()
        optimizer.step()


def naive_step_seconds(steps: int, repeats: int) -> tuple[float, float]:
    """(least, median) seconds of one step of the naive loop, each step timed alone as the trainer's."""
    _, least, median = timed_steps(lambda on_step: naive_run(config(steps), on_step), 1, repeats)
    return least, median


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as the trainers do on their first call: every timing under the same allocator
    run = config(args.steps)
    data = build_data(run).to(torch.device("cpu"), torch.float32)
    inputs, labels = data.train.inputs, data.train.labels
    n, patches, dim = inputs.shape
    weight = build_model(run).weight.detach()

    def objective(chunk: int | None = None, compiled: bool = True) -> Callable[[], object]:
        full_batch = FullBatchCubicObjective(
            inputs, labels, run.model.width, run.train.l2, chunk=chunk, compiled=compiled
        )
        return lambda: full_batch.loss_and_gradient(weight)

    default = FullBatchCubicObjective(inputs, labels, run.model.width, run.train.l2)
    torch_path = FullBatchCubicObjective(inputs, labels, run.model.width, run.train.l2, compiled=False)
    print(
        f"feature-margin default data (N={n}, P={patches}, d={dim}, m={run.model.width}), GD+M, float32, "
        f"torch threads = {torch.get_num_threads()}, timed by {clock_name()}; default engine: {default.engine}"
    )
    bandwidth = measure_bandwidth(inputs.numel())
    main_memory = measure_memory_bandwidth()
    data_bytes = FLOAT_BYTES * (inputs.numel() + PER_EXAMPLE_VECTORS * n)
    memory_bound = data_bytes / bandwidth.best
    main_memory_bound = data_bytes / main_memory.best
    products = record_products(lambda: torch_path.loss_and_gradient(weight))
    flops = sum(p.flops for p in products)
    peak = measure_matmul([Product(1024, 1024, 1024)], repeats=args.repeats)
    flop_bound = flops / peak
    chunks = (n // 40, n // 10, n // 3, n)
    times = best_seconds_each(
        {"objective": objective(), "torch": objective(compiled=False), "products": replay(products)}
        | {c: objective(c, compiled=False) for c in chunks},
        20 * args.repeats,
    )
    products_alone = times["products"]
    print(f"  {bandwidth.describe()}")
    print(f"  {main_memory.describe()} (4x the last-level cache: main memory)")
    for label, rate, bound in (
        ("memory bound", bandwidth.best, memory_bound),
        ("main-memory bound", main_memory.best, main_memory_bound),
    ):
        print(f"  {label}: {data_bytes / 1e6:.2f} MB ÷ {rate / 1e9:.1f} GB/s = {1e3 * bound:.3f} ms")
    print(
        f"  FLOP bound: {flops / 1e6:.1f} MFLOP ÷ {peak / 1e9:.1f} GFLOP/s (a 1024³ mm) = {1e3 * flop_bound:.3f} ms"
    )
    print(
        f"  the torch path's {len(products)} matrix products alone: {1e3 * products_alone:.3f} ms, "
        f"{flops / products_alone / 1e9:.1f} GFLOP/s"
    )
    for chunk in chunks:
        print(f"  torch path in chunks of {chunk:5d} examples: {1e3 * times[chunk]:7.3f} ms")
    print(f"  objective, {default.engine} vs torch path: {times['torch'] / times['objective']:.2f}x faster")
    trainer, trainer_median = trainer_step_seconds(args.steps, args.repeats)
    naive, naive_median = naive_step_seconds(args.steps // 4, args.repeats)
    for label, step in (
        (f"objective (L, ∇L), one call, {default.engine}", times["objective"]),
        ("objective, torch path", times["torch"]),
        ("trainer step (least)", trainer),
        ("trainer step (median)", trainer_median),
    ):
        print(fraction_line(label, step, memory_bound, "bytes ÷ bandwidth"))
        print(fraction_line(label, step, main_memory_bound, "bytes ÷ main-memory bandwidth"))
        print(fraction_line(label, step, flop_bound, "FLOPs ÷ peak mm rate"))
        print(fraction_line(label, step, max(memory_bound, flop_bound), "the larger of the two"))
    print(
        f"  naive reference (autograd + torch.optim.SGD, float64): {1e3 * naive:8.3f} ms/step "
        f"(median {1e3 * naive_median:.3f})"
    )
    print(f"  trainer vs naive loop: {naive / trainer:.2f}x (medians: {naive / trainer_median:.2f}x)")


if __name__ == "__main__":
    main()
