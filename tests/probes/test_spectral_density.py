"""Stochastic Lanczos quadrature against dense Hessians: Gauss-quadrature exactness per probe, moments
against tr(H^k)/n, nodes on the spectrum when the Krylov space is everything."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from momentumlab.probes.curvature import model_hvp, rademacher
from momentumlab.probes.spectral_density import spectral_density

DIM = 67


def _network_and_hessian() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tanh MLP of test_curvature (67 parameters) on 40 random points, with its dense Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(40, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (40,), generator=generator)
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(flat):
        views = {n: v.view(s) for n, v, s in zip(names, flat.split([s.numel() for s in shapes]), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, views, (inputs,)), labels)

    point = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    return model, inputs, labels, torch.autograd.functional.hessian(loss, point)


@pytest.mark.parametrize("steps", [2, 5, 12])
def test_each_probe_quadrature_is_exact_to_degree_2m_minus_1(steps):
    """With the same Rademacher probes v_s drawn by hand: Σ_j τ_j θ_j^k = v_sᵀ H^k v_s for k ≤ 2m − 1
    (averaged over probes), the weights of each probe sum to 1, and m products per probe were used."""
    model, inputs, labels, hessian = _network_and_hessian()
    hvp = model_hvp(model, F.cross_entropy, inputs, labels)
    result = spectral_density(hvp, DIM, probes=3, steps=steps, generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    vectors = [rademacher(DIM, replay, torch.float64) / math.sqrt(DIM) for _ in range(3)]
    for order in range(2 * steps):
        power = torch.linalg.matrix_power(hessian, order)
        expected = sum((v @ power @ v).item() for v in vectors) / 3
        assert result.moment(order) == pytest.approx(
            expected, rel=1e-8, abs=1e-12 * hessian.norm().item() ** order
        )
    for weights in result.weights:
        assert weights.sum().item() == pytest.approx(1.0, rel=1e-12)
    assert result.hvp_count == 3 * steps


def test_moments_estimate_normalized_traces():
    """∫λ^k dμ for k = 0..3 against tr(H^k)/n of the dense Hessian, within 4 standard errors of the
    Hutchinson estimate (Var vᵀAv = 2 Σ_{i≠j} A_ij² / n² for v = z/√n)."""
    model, inputs, labels, hessian = _network_and_hessian()
    hvp = model_hvp(model, F.cross_entropy, inputs, labels)
    probes = 40
    result = spectral_density(hvp, DIM, probes=probes, steps=4, generator=torch.Generator().manual_seed(1))
    assert result.moment(0) == pytest.approx(1.0, rel=1e-12)
    for order in (1, 2, 3):
        power = torch.linalg.matrix_power(hessian, order)
        off_diagonal = power - torch.diag(power.diagonal())
        standard_error = math.sqrt(2 * off_diagonal.square().sum().item() / probes) / DIM
        assert abs(result.moment(order) - power.trace().item() / DIM) <= 4 * standard_error
        assert standard_error < 0.2 * abs(power.trace().item() / DIM)  # the check is not vacuous


def test_full_krylov_space_puts_the_nodes_on_the_spectrum():
    """With m = n the nodes carrying weight are eigenvalues of H, and the smoothed density integrates to 1."""
    _, _, _, hessian = _network_and_hessian()
    spectrum = torch.linalg.eigvalsh(hessian)
    result = spectral_density(lambda v: hessian @ v, DIM, probes=2, steps=DIM, generator=torch.Generator())
    for nodes, weights in zip(result.nodes, result.weights):
        distance = (nodes[:, None] - spectrum[None]).abs().min(1).values
        assert distance[weights > 1e-8].max() < 1e-8 * spectrum.abs().max()
    low, high = result.support
    assert spectrum[0] - 1e-10 <= low and high <= spectrum[-1] + 1e-10
    grid = torch.linspace(low - 1, high + 1, 20001, dtype=torch.float64)
    integral = torch.trapezoid(result.density(grid, width=0.01), grid).item()
    assert integral == pytest.approx(1.0, rel=1e-6)


def test_invariant_subspace_stops_early_and_is_exact():
    """H = diag(1, 1, …, 1, 5, 5): two distinct eigenvalues, so the Krylov space closes after 2 steps."""
    diagonal = torch.ones(10, dtype=torch.float64)
    diagonal[-2:] = 5.0
    result = spectral_density(lambda v: diagonal * v, 10, probes=1, steps=8, generator=torch.Generator())
    assert result.hvp_count == 2
    torch.testing.assert_close(result.nodes[0], torch.tensor([1.0, 5.0], dtype=torch.float64))
    assert result.moment(2) == pytest.approx((8 + 2 * 25) / 10, rel=1e-12)


def test_invalid_arguments_name_the_field():
    with pytest.raises(ValueError, match="probes=0"):
        spectral_density(lambda v: v, 3, probes=0)
    with pytest.raises(ValueError, match="width=0"):
        spectral_density(lambda v: v, 3).density(torch.zeros(3), width=0)
