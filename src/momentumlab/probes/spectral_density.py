"""Spectral density of a Hessian by stochastic Lanczos quadrature (SLQ; Ghorbani, Krishnan & Xiao 2019).

The density μ = (1/n) Σ_i δ(λ − λ_i) of an n×n symmetric H is seen through moments: for v uniform on the
scaled Rademacher vectors z/√n, E[vᵀ g(H) v] = tr g(H)/n = ∫ g dμ. m steps of Lanczos from v give a
tridiagonal T_m = U diag(θ) Uᵀ, and vᵀ g(H) v ≈ Σ_j τ_j g(θ_j) with τ_j = (e_1ᵀ u_j)², the m-point Gauss
quadrature of the spectral measure of v, exact for polynomials g of degree ≤ 2m − 1. Averaging the
quadratures of a few probes gives nodes and weights of a discrete density; :meth:`SpectralDensity.density`
smooths it with a Gaussian for plotting.

Each probe is one Lanczos run with full reorthogonalization on flat vectors (so its Ritz values stay
single); its cost is m Hessian-vector products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from momentumlab.probes.curvature import HVP, orthogonalize, rademacher


@dataclass(frozen=True)
class SpectralDensity:
    """Quadrature nodes and weights of each probe (weights of one probe sum to 1)."""

    nodes: tuple[torch.Tensor, ...]  # per probe: Ritz values θ_j of T_m, ascending
    weights: tuple[torch.Tensor, ...]  # per probe: τ_j = (first component of T_m's eigenvector j)²
    hvp_count: int

    def moment(self, order: int) -> float:
        """∫ λ^order dμ ≈ tr(H^order)/n: the mean over probes of Σ_j τ_j θ_j^order."""
        return sum((w * θ**order).sum().item() for θ, w in zip(self.nodes, self.weights)) / len(self.nodes)

    def density(self, grid: torch.Tensor, width: float) -> torch.Tensor:
        """The discrete density smoothed by a Gaussian of standard deviation `width`, on the points of `grid`
        (a density in λ: it integrates to 1 over a grid that covers the nodes by a few widths)."""
        if not width > 0:
            raise ValueError(f"width={width}: must be positive")
        values = torch.zeros_like(grid, dtype=torch.float64)
        for θ, w in zip(self.nodes, self.weights):
            kernel = torch.exp(-((grid.double()[:, None] - θ[None]) ** 2) / (2 * width**2))
            values += kernel @ w / (width * math.sqrt(2 * math.pi))
        return values / len(self.nodes)

    @property
    def support(self) -> tuple[float, float]:
        """The smallest and largest node over all probes (Ritz values: inside [λ_min, λ_max])."""
        return min(θ.min().item() for θ in self.nodes), max(θ.max().item() for θ in self.nodes)


def spectral_density(
    hvp: HVP,
    dim: int,
    probes: int = 4,
    steps: int = 30,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> SpectralDensity:
    """SLQ with `probes` Rademacher probes and `steps` Lanczos steps each (capped at `dim`; a probe whose
    Krylov space closes earlier stops there, its quadrature then exact for every polynomial)."""
    if probes < 1 or steps < 1:
        raise ValueError(f"probes={probes}, steps={steps}: both must be at least 1")
    nodes, weights, hvp_count = [], [], 0
    for _ in range(probes):
        basis = (rademacher(dim, generator, dtype) / math.sqrt(dim))[None]  # v = z/√n, ‖v‖ = 1
        diagonal, off_diagonal = [], []
        for step in range(min(steps, dim)):
            product = hvp(basis[-1]).to(dtype)
            hvp_count += 1
            basis = basis.to(product.device)
            diagonal.append((basis[-1] @ product).item())  # α_j
            residual = orthogonalize(product, basis)
            beta = residual.norm().item()  # β_j
            if step == min(steps, dim) - 1 or beta <= 1e-10 * max(abs(a) for a in diagonal):
                break  # the last step, or an invariant subspace: T holds v's whole spectral measure
            off_diagonal.append(beta)
            basis = torch.cat([basis, (residual / beta)[None]])
        tridiagonal = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
        if off_diagonal:
            betas = torch.tensor(off_diagonal, dtype=torch.float64)
            tridiagonal += torch.diag(betas, 1) + torch.diag(betas, -1)
        ritz_values, ritz_vectors = torch.linalg.eigh(tridiagonal)
        nodes.append(ritz_values)
        weights.append(ritz_vectors[0] ** 2)  # τ_j = (e_1ᵀ u_j)²
    return SpectralDensity(tuple(nodes), tuple(weights), hvp_count)
