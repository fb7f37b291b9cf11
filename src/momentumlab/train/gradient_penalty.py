"""The explicit gradient regularizer: train on E(x) + λ‖∇E(x)‖² (Barrett & Dherin; Ghosh et al., SPEC §2).

λ is the config's `train.gradient_penalty`; its gradient ∇E + 2λ H∇E is computed by double backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from momentumlab.probes.flows import regularized_loss


def penalized_loss_and_gradient(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], parameter: torch.Tensor, penalty: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E(x) + λ‖∇E(x)‖², ∇[E + λ‖∇E‖²](x)) for a loss of one parameter tensor."""
    point = parameter.detach().requires_grad_(True)
    with torch.enable_grad():
        penalized = regularized_loss(loss_fn, penalty)(point)  # E + λ‖∇E‖²
        (penalized_gradient,) = torch.autograd.grad(penalized, point)
    return penalized.detach(), penalized_gradient
