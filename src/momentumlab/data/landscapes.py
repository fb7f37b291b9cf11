"""Toy losses as functions of a flat parameter tensor (SPEC §2, Ghosh et al.).

- :func:`scalar_product_loss`: E(w) = ½(y − w1 w2 x)², whose minima form the hyperbola w1 w2 = y/x
  and differ in sharpness, λ_max = x²(w1² + w2²) (:func:`scalar_product_sharpness`); gradient flow
  reaches the one of :func:`scalar_product_flow_sharpness`.
- :class:`NoisyQuadratic`: E(x) = ½ xᵀAx observed through stochastic gradients Ax + ξ with ξ i.i.d.
  N(0, Σ), the noise model under which the momentum average has covariance (1−β)/(1+β)·Σ.

Every function accepts a batch of parameters in its leading dimensions, so many independent runs
(one per β, per chain) are one computation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def scalar_product_loss(x: float = 1.0, y: float = 0.6) -> Callable[[Tensor], Tensor]:
    """E(w) = ½(y − w1 w2 x)² for w of shape (..., 2); returns one loss per leading index."""

    def loss(w: Tensor) -> Tensor:
        return 0.5 * (y - w[..., 0] * w[..., 1] * x) ** 2

    return loss


def scalar_product_gradient(w: Tensor, x: float = 1.0, y: float = 0.6) -> Tensor:
    """∇E(w) = r x (w2, w1) with the residual r = w1 w2 x − y; shape (..., 2)."""
    residual = w[..., 0] * w[..., 1] * x - y  # r
    return (residual * x).unsqueeze(-1) * w.flip(-1)


def scalar_product_hessian(w: Tensor, x: float = 1.0, y: float = 0.6) -> Tensor:
    """∇²E(w) = x² (w2, w1)(w2, w1)ᵀ + r x [[0, 1], [1, 0]]; shape (..., 2, 2)."""
    residual = w[..., 0] * w[..., 1] * x - y  # r
    direction = w.flip(-1)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=w.dtype, device=w.device)
    outer = direction.unsqueeze(-1) * direction.unsqueeze(-2)
    return x**2 * outer + (residual * x)[..., None, None] * swap


def scalar_product_sharpness(w: Tensor, x: float = 1.0) -> Tensor:
    """λ_max = x²(w1² + w2²), the top Hessian eigenvalue at a minimum (r = 0); shape (...)."""
    return x**2 * (w**2).sum(-1)


def scalar_product_flow_sharpness(start: Tensor, x: float = 1.0, y: float = 0.6) -> Tensor:
    """λ_max at the minimum that the flow w' = −c∇E (any c > 0) reaches from `start` (shape (..., 2)).

    The flow conserves the imbalance D = w1² − w2² (⟨∇D, ∇E⟩ = 0), so it ends on the point of the
    hyperbola w1 w2 = y/x with that imbalance, where w1² + w2² = √(D² + 4(y/x)²); shape (...).
    """
    imbalance = start[..., 0] ** 2 - start[..., 1] ** 2  # D
    return x**2 * torch.sqrt(imbalance**2 + 4 * (y / x) ** 2)


class NoisyQuadratic:
    """E(x) = ½ xᵀAx with stochastic gradient Ax + ξ, ξ ~ N(0, Σ) drawn afresh on every call.

    `hessian` is A (symmetric) and `noise_covariance` is Σ (symmetric positive definite), both (d, d).
    """

    def __init__(self, hessian: Tensor, noise_covariance: Tensor):
        dim = hessian.shape[-1]
        for field, matrix in (("hessian", hessian), ("noise_covariance", noise_covariance)):
            if matrix.shape != (dim, dim):
                raise ValueError(f"{field} has shape {tuple(matrix.shape)}; expected ({dim}, {dim})")
            if not torch.allclose(matrix, matrix.T):
                raise ValueError(f"{field} must be symmetric")
        factor, info = torch.linalg.cholesky_ex(noise_covariance)
        if info != 0:
            raise ValueError("noise_covariance must be positive definite")
        self.hessian = hessian
        self.noise_covariance = noise_covariance
        self.noise_factor = factor  # L with LLᵀ = Σ

    @classmethod
    def from_spectra(
        cls, curvatures: Tensor, noise_variances: Tensor, noise_basis: Tensor | None = None
    ) -> NoisyQuadratic:
        """A = diag(curvatures); Σ = Q diag(noise_variances) Qᵀ with the orthogonal Q = `noise_basis`."""
        dim = len(noise_variances)
        basis = torch.eye(dim, dtype=noise_variances.dtype) if noise_basis is None else noise_basis
        covariance = basis @ torch.diag(noise_variances) @ basis.T
        return cls(torch.diag(curvatures), (covariance + covariance.T) / 2)

    @property
    def dim(self) -> int:
        return self.hessian.shape[-1]

    def loss(self, x: Tensor) -> Tensor:
        """E(x) = ½ xᵀAx for x of shape (..., d)."""
        return 0.5 * ((x @ self.hessian) * x).sum(-1)

    def gradient(self, x: Tensor) -> Tensor:
        """∇E(x) = Ax for x of shape (..., d)."""
        return x @ self.hessian  # A is symmetric

    def noise(self, batch_shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Independent ξ ~ N(0, Σ) of shape (*batch_shape, d)."""
        standard = torch.randn(*batch_shape, self.dim, generator=generator, dtype=self.noise_factor.dtype)
        return standard @ self.noise_factor.T  # ξ = Lz

    def stochastic_gradient(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Ax + ξ with a fresh ξ for every leading index of x."""
        return self.gradient(x) + self.noise(tuple(x.shape[:-1]), generator)
