"""The machine's limits that bound a training step, measured in the benchmark's own run.

Every step benchmark compares its step time with a bound computed from limits measured here, at the
same torch thread count and under the same load, so that the printed fraction stays meaningful on a
shared machine (a ratio against a naive loop moves with the loop's speed):

- memory bandwidth, STREAM-like, on float32 tensors of a given size (the size of the data a step reads,
  so the cache level is the one the step sees):
    read   s = Σ a          bytes = 4n
    copy   b ← a            bytes = 8n  (4n read + 4n written; STREAM's convention: no write-allocate)
    triad  a ← b + q·c      bytes = 12n
  The bound of a step that must read B bytes is B ÷ (the best of the three rates): the least time any
  pass over that many bytes took here. Data smaller than the last-level cache can stay there between
  steps, so its rate is the cache's; the same passes on arrays of 4× the last-level cache (STREAM's rule)
  measure main memory (:func:`measure_memory_bandwidth`), the rate of a step whose data other jobs evict.
- matmul throughput: `torch.mm` / `torch.bmm` at the step's exact shapes (same layout, `out=` buffers),
  counting 2·M·K·N floating-point operations per (M×K)·(K×N) product. The bound of a step is its
  products' FLOPs ÷ that throughput: the time those products take alone, with nothing else in the step.

Each timing is the best of `repeats` warm calls, the least disturbed by other jobs: each timed call
follows an untimed call of the same work, as a training step follows the previous one (its data in the
cache, its threads awake), not the other works of the rotation.
With one torch thread every timing is the CPU time of the calling thread (`time.thread_time`): the work
itself, without the time other jobs held the cores (cache sharing with them still counts); with more
threads, wall time. A step and its bounds are timed interleaved (:func:`best_seconds_each`), so a
change of load between them cannot tilt the ratio.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

FLOAT_BYTES = 4  # float32


def clock() -> float:
    """Seconds: this thread's CPU time with one torch thread (all the work runs on it), else wall time."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


def clock_name() -> str:
    return "CPU time of the one thread" if torch.get_num_threads() == 1 else "wall time"


def seconds(work: Callable[[], object]) -> float:
    """Time of one call of `work` by :func:`clock`."""
    started = clock()
    work()
    return clock() - started


def best_seconds_each(works: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Least time of `repeats` warm calls of each of `works`, called in turn: each timed call right after
    an untimed one of the same work."""
    best = dict.fromkeys(works, math.inf)
    for _ in range(repeats):
        for name, work in works.items():
            work()
            best[name] = min(best[name], seconds(work))
    return best


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    """Least time of `repeats` warm calls of `work`."""
    return best_seconds_each({"work": work}, repeats)["work"]


def timed_steps(
    train: Callable[[Callable[[int], None]], object],
    per_call: int,
    repeats: int,
    timer: Callable[[], float] = clock,
) -> tuple[float, float, float]:
    """(least seconds of a whole run, least and median seconds of a step) over `repeats` calls of
    `train(on_step)`, a training run that calls `on_step` every `per_call` steps (once per step, or once
    per epoch). Each interval between successive calls is timed, leaving out the first (warm-up) and the
    last (no call follows it; the last logged row is measured there), so neither setup nor measurements
    count in a step. The least is the step least disturbed by other jobs, as every bound here is.
    `timer` reads the time (default :func:`clock`)."""
    runs, steps = [], []
    for _ in range(repeats):
        marks: list[float] = []
        started = timer()
        train(lambda _, marks=marks: marks.append(timer()))
        runs.append(timer() - started)
        steps += [(after - before) / per_call for before, after in itertools.pairwise(marks[1:])]
    return min(runs), min(steps), statistics.median(steps)


@dataclass(frozen=True)
class Bandwidth:
    """STREAM-like rates in bytes/s over float32 arrays of `elements` elements each."""

    elements: int
    read: float
    copy: float
    triad: float

    @property
    def best(self) -> float:
        return max(self.read, self.copy, self.triad)

    def describe(self) -> str:
        return (
            f"memory bandwidth on {self.elements * FLOAT_BYTES / 1e6:.1f} MB arrays: read {self.read / 1e9:.1f}, "
            f"copy {self.copy / 1e9:.1f}, triad {self.triad / 1e9:.1f} GB/s"
        )


def measure_bandwidth(elements: int, repeats: int = 20) -> Bandwidth:
    """STREAM-like read, copy and triad rates on float32 arrays of `elements` elements."""
    a, b, c = torch.rand(elements), torch.rand(elements), torch.rand(elements)
    times = best_seconds_each(
        {
            "read": lambda: a.sum(),  # 4n bytes
            "copy": lambda: b.copy_(a),  # 8n bytes
            "triad": lambda: torch.add(b, c, alpha=3.0, out=a),  # 12n bytes
        },
        repeats,
    )
    n = elements * FLOAT_BYTES
    return Bandwidth(
        elements, read=n / times["read"], copy=2 * n / times["copy"], triad=3 * n / times["triad"]
    )


def last_level_cache_bytes(default: int = 2**26) -> int:
    """Bytes of the CPU's largest cache, as Linux lists cpu0's caches; `default` where it lists none."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        with contextlib.suppress(OSError, ValueError):
            text = (index / "size").read_text().strip()
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=default)


def measure_memory_bandwidth(repeats: int = 5) -> Bandwidth:
    """Main memory's STREAM-like rates: on arrays of 4× the last-level cache each, STREAM's rule, so that
    no pass finds its data in a cache."""
    return measure_bandwidth(4 * last_level_cache_bytes() // FLOAT_BYTES, repeats)


@dataclass(frozen=True)
class Product:
    """One matrix product of a step: (batch ×) (M×K)·(K×N), with operand layouts as the step has them."""

    m: int
    k: int
    n: int
    batch: int = 1
    transpose_left: bool = False  # the left operand is a transposed view of a (K×M) matrix
    transpose_right: bool = False  # the right operand is a transposed view of an (N×K) matrix

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n

    def describe(self) -> str:
        batch = f"{self.batch}×" if self.batch > 1 else ""
        left = f"({self.k}×{self.m})ᵀ" if self.transpose_left else f"({self.m}×{self.k})"
        right = f"({self.n}×{self.k})ᵀ" if self.transpose_right else f"({self.k}×{self.n})"
        return f"{batch}{left}·{right}"


def _operand(rows: int, columns: int, batch: int, transposed: bool) -> torch.Tensor:
    shape = (columns, rows) if transposed else (rows, columns)
    tensor = torch.rand(batch, *shape) if batch > 1 else torch.rand(*shape)
    return tensor.transpose(-1, -2) if transposed else tensor


def measure_matmul(products: Sequence[Product], repeats: int = 20) -> float:
    """FLOP/s of `products` run one after another (each with its own operands and `out=` buffer)."""
    calls = []
    for p in products:
        left = _operand(p.m, p.k, p.batch, p.transpose_left)
        right = _operand(p.k, p.n, p.batch, p.transpose_right)
        out = torch.empty(p.batch, p.m, p.n) if p.batch > 1 else torch.empty(p.m, p.n)
        product = torch.bmm if p.batch > 1 else torch.mm
        calls.append((product, left, right, out))

    def run() -> None:
        for product, left, right, out in calls:
            product(left, right, out=out)

    return sum(p.flops for p in products) / best_seconds(run, repeats)


def fraction_line(label: str, seconds: float, bound_seconds: float, what: str) -> str:
    """One printed line: a step's time, its bound, and the bound as a fraction of the time (1 = at the limit)."""
    return (
        f"  {label:<44} {1e3 * seconds:8.3f} ms; bound {1e3 * bound_seconds:7.3f} ms ({what}): "
        f"at {bound_seconds / seconds:5.1%} of the limit ({seconds / bound_seconds:.2f}x the bound)"
    )


@dataclass(frozen=True)
class RecordedProduct:
    """One matrix product a step called: the exact op overload and its arguments, tensors as (size, stride)."""

    op: Callable
    args: tuple
    kwargs: dict
    flops: int


@dataclass(frozen=True)
class _Layout:
    size: tuple[int, ...]
    stride: tuple[int, ...]


MATMUL_FACTORS = {
    "mm": (0, 1),
    "bmm": (0, 1),
    "addmm": (1, 2),
    "baddbmm": (1, 2),
    "addmm_": (1, 2),
    "baddbmm_": (1, 2),
}


def record_products(work: Callable[[], object]) -> list[RecordedProduct]:
    """Every mm/bmm/addmm/baddbmm (in place or `out=` too) that `work()` calls, with the sizes and
    strides of its tensors (views included).

    FLOPs per product: 2·(batch)·M·K·N for factors (M×K)·(K×N); the added term is not counted.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    recorded = []

    def layout(value: object) -> object:
        return (
            _Layout(tuple(value.shape), tuple(value.stride())) if isinstance(value, torch.Tensor) else value
        )

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func.overloadpacket.__name__
            if name in MATMUL_FACTORS:
                left, right = (args[i] for i in MATMUL_FACTORS[name])
                flops = 2 * left.shape[:-1].numel() * left.shape[-1] * right.shape[-1]
                recorded.append(
                    RecordedProduct(func, tree_map(layout, args), tree_map(layout, kwargs), flops)
                )
            return func(*args, **kwargs)

    with Recorder():
        work()
    return recorded


def replay(products: Sequence[RecordedProduct], device: str | torch.device = "cpu") -> Callable[[], None]:
    """A function that runs `products` alone, one after another, on fresh tensors of the recorded sizes
    and strides (made once, on `device`)."""
    from torch.utils._pytree import tree_map

    def materialize(value: object) -> object:
        if not isinstance(value, _Layout):
            return value
        storage = 1 + sum((size - 1) * stride for size, stride in zip(value.size, value.stride))
        return (
            torch.empty(storage, device=device).uniform_(-1, 1).as_strided(value.size, value.stride)
        )  # broadcast views too

    calls = [(p.op, tree_map(materialize, p.args), tree_map(materialize, p.kwargs)) for p in products]

    def run() -> None:
        for op, args, kwargs in calls:
            op(*args, **kwargs)

    return run
