"""What the trainers share: float dtypes by name, the stateless minibatch order and its copy to a GPU."""

from __future__ import annotations

import torch

from momentumlab.seeds import minibatch_order_seed

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def minibatch_indices(seed: int, step: int, batch_size: int, n: int) -> torch.Tensor:
    """Indices of the batch at `step`: epochs are fresh permutations, the last partial batch is dropped.

    Stateless (a function of seed and step), so a resumed run draws exactly the same batches.
    """
    batches_per_epoch = n // batch_size
    epoch, position = divmod(step, batches_per_epoch)
    permutation = torch.randperm(
        n, generator=torch.Generator().manual_seed(minibatch_order_seed(seed, epoch))
    )
    return permutation[position * batch_size : (position + 1) * batch_size]


def order_on_device(order: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A minibatch order drawn on the host, on `device`: to a GPU through pinned memory, queued on the
    stream without waiting for it (a training loop's one sync per step stays its only one)."""
    if device.type != "cuda":
        return order.to(device)
    return order.pin_memory().to(device, non_blocking=True)
