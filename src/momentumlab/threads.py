"""Thread control for computations on tiny tensors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Torch on one thread inside the block, the previous count restored after it.

    Products of a few thousand numbers gain nothing from a thread pool, and on a busy 2-core machine
    waiting for the second thread made the toy reproductions 10–50× slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
