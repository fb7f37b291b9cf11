"""The two-layer cubic CNN of Jelassi & Li and its regularized logistic objective (SPEC §1).

f_W(X) = Σ_r Σ_j ⟨w_r, X[j]⟩³,   L(W) = (1/N) Σ_i log(1 + exp(−y_i f_W(X_i))) + (λ/2)‖W‖²_F.

:class:`CubicCNN` is the plain module (autograd works through it). :class:`FullBatchCubicObjective`
is the training fast path: the closed-form gradient
∇_{w_r} L = (1/N) Σ_i −y_i σ(−y_i f_i) Σ_j 3⟨w_r, X_i[j]⟩² X_i[j] + λ w_r
computed with two matrix products over a transposed copy of the data and preallocated buffers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CubicCNN(nn.Module):
    """W ∈ R^{m×d}; the second layer is fixed to ones."""

    def __init__(self, width: int, dim: int, init_std: float, generator: torch.Generator | None = None):
        super().__init__()
        init = (
            torch.randn(width, dim, generator=generator, dtype=torch.float64) * init_std
        )  # w_r ~ N(0, σ0² I)
        self.weight = nn.Parameter(init.to(torch.get_default_dtype()))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """f_W(X) for inputs of shape (N, P, d); returns shape (N,)."""
        return cubic_outputs(self.weight, inputs)


def cubic_outputs(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """f_W(X_i) = Σ_r Σ_j ⟨w_r, X_i[j]⟩³ for inputs of shape (N, P, d)."""
    return (inputs @ weight.T).pow(3).sum(dim=(1, 2))


def logistic_objective(
    outputs: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, l2: float
) -> torch.Tensor:
    """L = mean softplus(−y f) + (λ/2)‖W‖²_F."""
    return F.softplus(-labels * outputs).mean() + 0.5 * l2 * weight.pow(2).sum()


def cubic_loss_and_gradient(
    weight: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form (L, ∇L) on any batch; allocates its temporaries (used for minibatches)."""
    n = labels.shape[0]
    projections = inputs @ weight.T  # ⟨w_r, X_i[j]⟩, shape (n, P, m)
    outputs = projections.pow(3).sum(dim=(1, 2))
    sigma = torch.sigmoid(-labels * outputs)  # ℓ_i = sigmoid(−y_i f_i)
    coefficient = (-3.0 / n) * labels * sigma
    gradient = torch.einsum("npm,npd->md", projections.square() * coefficient[:, None, None], inputs)
    return logistic_objective(outputs, labels, weight, l2), gradient + l2 * weight


class FullBatchCubicObjective:
    """Full-batch (L, ∇L) of the cubic CNN on fixed data, without autograd or per-step allocation."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, width: int, l2: float):
        n, patches, dim = inputs.shape
        self.n, self.patches, self.l2 = n, patches, l2
        self.inputs_t = inputs.reshape(n * patches, dim).T.contiguous()  # (d, N·P)
        self.neg_labels = -labels
        like = {"dtype": inputs.dtype, "device": inputs.device}
        self._projections = torch.empty(width, n * patches, **like)
        self._squares = torch.empty(width, n * patches, **like)
        self._cubes = torch.empty(width, n * patches, **like)
        self._patch_outputs = torch.empty(n * patches, **like)
        self.outputs = torch.empty(n, **like)  # f_W(X_i) at the last evaluated W
        self._coefficient = torch.empty(n, **like)
        self._gradient_t = torch.empty(dim, width, **like)  # ∇L transposed: this product order is faster

    def loss_and_gradient(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (L(W), ∇L(W)); the gradient tensor is a buffer reused by the next call."""
        torch.mm(weight, self.inputs_t, out=self._projections)  # ⟨w_r, X_i[j]⟩ as (m, N·P)
        torch.mul(self._projections, self._projections, out=self._squares)
        torch.mul(self._squares, self._projections, out=self._cubes)
        torch.sum(self._cubes, dim=0, out=self._patch_outputs)
        torch.sum(self._patch_outputs.view(self.n, self.patches), dim=1, out=self.outputs)  # f_i
        margins = torch.mul(self.outputs, self.neg_labels, out=self._coefficient)  # −y_i f_i
        loss = F.softplus(margins).mean()
        coefficient = torch.sigmoid_(margins).mul_(self.neg_labels).mul_(3.0 / self.n)  # −3 y_i ℓ_i / N
        self._squares.view(-1, self.n, self.patches).mul_(coefficient.view(1, self.n, 1))
        torch.mm(self.inputs_t, self._squares.T, out=self._gradient_t)
        gradient = self._gradient_t.T
        if self.l2:
            loss = loss + 0.5 * self.l2 * weight.square().sum()
            gradient.add_(weight, alpha=self.l2)
        return loss, gradient
