"""What the trainers share: float dtypes by name and the stateless minibatch order."""

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
