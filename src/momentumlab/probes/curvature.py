"""Curvature probes: Hessian-vector products, top eigenvalues and the Hutchinson trace.

An HVP is a function v ↦ H v on flat vectors. :func:`model_hvp` gives the Hessian of a model's mean loss
over a whole dataset (full batch, or summed over memory-bounded chunks) with respect to all its parameters
flattened in ``model.parameters()`` order (the order of ``torch.nn.utils.parameters_to_vector``);
:func:`flat_loss_hvp` gives the Hessian of any loss of a flat vector. :func:`top_eigenvalues` (Lanczos or
power iteration) and :func:`hutchinson_trace` use nothing but the HVP and report how many products they took.
A model's forward passes run in eval mode by default, leaving its buffers and the RNG as they were
(:mod:`~momentumlab.probes.model_state`).

Products are double backward through the gradient's graph, built once per chunk: on SmallCNN and the digits
training set (one thread) one product took 52 ms with the graph kept between calls, 101 ms rebuilding it
each call, and 116 ms with torch.func's forward-over-reverse ``jvp(grad(f))``. So a one-chunk HVP keeps
the graph (the memory of one training step) and a chunked one rebuilds it chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from momentumlab.probes.model_state import Mode, check_mode, probe_buffers, probe_mode

HVP = Callable[[torch.Tensor], torch.Tensor]  # flat vector -> flat Hessian-vector product


def flat_loss_hvp(loss: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor) -> HVP:
    """v ↦ ∇²loss(point) v for a scalar `loss` of a 1-D tensor; products are in `point`'s dtype and device."""
    leaf = point.detach().clone().requires_grad_()
    (gradient,) = torch.autograd.grad(loss(leaf), leaf, create_graph=True)
    if not gradient.requires_grad:  # the gradient does not depend on the point: H = 0
        return lambda vector: torch.zeros_like(point)

    def hvp(vector: torch.Tensor) -> torch.Tensor:
        (product,) = torch.autograd.grad(gradient, leaf, grad_outputs=vector.to(leaf), retain_graph=True)
        return product

    return hvp


def model_hvp(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    mode: Mode = "eval",
) -> HVP:
    """v ↦ H v with H the Hessian of the mean loss over all of (`inputs`, `targets`) at the model's current
    parameters, flattened in ``model.parameters()`` order; the model itself is left untouched.

    `loss_fn(outputs, targets)` is the mean over its batch. With `chunk_size`, each product sums the chunks'
    Hessian-vector products weighted by chunk size / N (equal to the full batch, up to rounding) and holds
    one chunk's graph at a time; without it the whole dataset is one chunk whose graph is kept between calls.
    The forward passes run in `mode` (:mod:`~momentumlab.probes.model_state`): the model's training flags,
    buffers and the global RNG state are the same afterwards; in train mode each chunk's dropout masks are
    drawn once, so every product applies the same operator.
    """
    count = len(inputs)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be a positive number of examples, or None")
    check_mode(mode)
    names = [name for name, _ in model.named_parameters()]
    parameters = [parameter.detach() for parameter in model.parameters()]
    point = torch.cat([parameter.reshape(-1) for parameter in parameters])
    sizes = [parameter.numel() for parameter in parameters]
    seed = None  # the chunks' dropout-mask seeds (train mode); the global RNG is left as it was
    if mode == "train":
        with torch.random.fork_rng(devices=[]):
            seed = int(torch.randint(2**62, ()))

    def chunk_loss(chunk: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        def loss(flat: torch.Tensor) -> torch.Tensor:
            views = {name: view.view_as(p) for name, view, p in zip(names, flat.split(sizes), parameters)}
            with probe_mode(model, mode, seed=None if seed is None else seed + (chunk.start or 0)):
                outputs = functional_call(model, {**views, **probe_buffers(model, mode)}, (inputs[chunk],))
            return loss_fn(outputs, targets[chunk])

        return loss

    if chunk_size is None or chunk_size >= count:
        return flat_loss_hvp(chunk_loss(slice(None)), point)
    bounds = [(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]

    def hvp(vector: torch.Tensor) -> torch.Tensor:
        product = torch.zeros_like(point)
        for start, stop in bounds:
            chunk_product = flat_loss_hvp(chunk_loss(slice(start, stop)), point)(vector)
            product.add_(chunk_product, alpha=(stop - start) / count)  # weight N_chunk / N
        return product

    return hvp


@dataclass(frozen=True)
class EigenResult:
    """Top eigenpairs of a Hessian and what they cost."""

    eigenvalues: torch.Tensor  # (k,), descending by value (which="algebraic") or by magnitude
    eigenvectors: torch.Tensor  # (k, dim), unit rows, row i belongs to eigenvalues[i]
    residuals: torch.Tensor  # (k,), ‖H v_i − λ_i v_i‖ of each returned pair (Lanczos: its bound β_j|s_{j,i}|)
    hvp_count: int
    tolerance: float  # the stopping tolerance asked for
    converged: bool  # every residual ≤ tolerance·|λ_i| (or the Krylov space filled the whole space)
    method: str


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson estimate of tr(H) with its standard error."""

    trace: float
    standard_error: float
    hvp_count: int
    samples: int


def top_eigenvalues(
    hvp: HVP,
    dim: int,
    k: int = 1,
    tol: float = 1e-4,
    max_iter: int = 100,
    method: Literal["lanczos", "power"] = "lanczos",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    which: Literal["algebraic", "magnitude"] = "algebraic",
    start: torch.Tensor | None = None,
) -> EigenResult:
    """The k eigenvalues of the symmetric operator `hvp` of largest algebraic value (default), or of largest
    magnitude (``which="magnitude"``), with their eigenvectors.

    Stops when every pair's residual is small: ‖H v_i − θ_i v_i‖ ≤ `tol`·|θ_i|, which puts an eigenvalue of H
    within `tol`·|θ_i| of θ_i (a small change of θ between iterations does not: it stalls near a close second
    eigenvalue). ``"lanczos"``: Lanczos with full reorthogonalization, at most `max_iter` products (the
    Krylov dimension, capped at `dim`); the residual of the Ritz pair (θ_i, Q_j s_i) is β_j|s_{j,i}|, read
    off the tridiagonal matrix without a product. A small residual only says that *some* eigenvalue lies
    near θ_i: from a start almost orthogonal to the top eigenvector a lower pair converges first (1 of 20
    starts in the regression test), so Lanczos also waits for the (k+1)-th pair, by when the missed one has
    grown into the Krylov space. ``"power"``: power iteration with projection deflation,
    at most `max_iter` products per eigenvalue; for largest algebraic values, an eigenvalue found negative
    means a negative one dominates, and the search restarts on H − θI. `start` (e.g. the previous top
    eigenvector when tracking sharpness along training) replaces the random first vector. Vectors are kept
    in `dtype` on the HVP's device.
    """
    if not 1 <= k <= dim:
        raise ValueError(f"k={k}: must lie between 1 and dim={dim}")
    if tol <= 0:
        raise ValueError(f"tol={tol}: must be positive")
    if start is not None and (start.shape != (dim,) or not start.norm() > 0):
        raise ValueError(f"start of shape {tuple(start.shape)}: must be a nonzero vector of shape ({dim},)")
    if which not in ("algebraic", "magnitude"):
        raise ValueError(f"which={which!r}: allowed are 'algebraic' and 'magnitude'")
    if method == "lanczos":
        if max_iter < k:
            raise ValueError(f"max_iter={max_iter}: Lanczos needs at least k={k} iterations")
        return _lanczos(hvp, dim, k, tol, max_iter, which, generator, dtype, start)
    if method == "power":
        if max_iter < 1:
            raise ValueError(f"max_iter={max_iter}: must be at least 1")
        return _power_iteration(hvp, dim, k, tol, max_iter, which, generator, dtype, start)
    raise ValueError(f"method={method!r}: allowed are 'lanczos' and 'power'")


def hutchinson_trace(
    hvp: HVP,
    dim: int,
    samples: int = 100,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> TraceResult:
    """tr(H) ≈ (1/S) Σ_s z_sᵀ H z_s with Rademacher z_s (Hutchinson 1990); standard error = sample std / √S."""
    if samples < 2:
        raise ValueError(f"samples={samples}: need at least 2 for a standard error")
    estimates = []
    for _ in range(samples):
        probe = rademacher(dim, generator, dtype)
        product = hvp(probe).to(dtype)
        estimates.append(probe.to(product.device) @ product)  # z_sᵀ H z_s
    estimates = torch.stack(estimates)
    return TraceResult(
        trace=estimates.mean().item(),
        standard_error=(estimates.std() / samples**0.5).item(),
        hvp_count=samples,
        samples=samples,
    )


def _random_unit(dim: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    device = generator.device if generator is not None else None
    vector = torch.randn(dim, generator=generator, dtype=dtype, device=device)
    return vector / vector.norm()


def rademacher(dim: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    """A vector of `dim` independent ±1 entries, drawn from `generator` on its device."""
    device = generator.device if generator is not None else None
    return torch.randint(0, 2, (dim,), generator=generator, dtype=dtype, device=device) * 2 - 1


def _top_order(values: torch.Tensor, which: str) -> torch.Tensor:
    """Indices of `values` sorted by value or by magnitude, largest first."""
    return torch.argsort(values.abs() if which == "magnitude" else values, descending=True)


def orthogonalize(vector: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """`vector` minus its projection on the orthonormal rows of `basis`, by Gram–Schmidt applied twice
    ("twice is enough": orthogonal to working precision)."""
    for _ in range(2):
        vector = vector - basis.T @ (basis @ vector)
    return vector


def _first_vector(
    dim: int, generator: torch.Generator | None, dtype: torch.dtype, start: torch.Tensor | None
) -> torch.Tensor:
    if start is None:
        return _random_unit(dim, generator, dtype)
    return start.to(dtype) / start.to(dtype).norm()


def _lanczos(hvp, dim, k, tol, max_iter, which, generator, dtype, start) -> EigenResult:
    steps = min(max_iter, dim)
    basis = _first_vector(dim, generator, dtype, start)[None]  # q_1, …, q_j as rows
    diagonal, off_diagonal = [], []  # α_j, β_j of the tridiagonal T_j = Q_jᵀ H Q_j
    converged = False
    for step in range(1, steps + 1):
        product = hvp(basis[-1]).to(dtype)
        basis = basis.to(product.device)
        diagonal.append((basis[-1] @ product).item())  # α_j = q_jᵀ H q_j
        residual = orthogonalize(product, basis)  # full reorthogonalization
        beta = residual.norm().item()  # β_j: H Q_j = Q_j T_j + β_j q_{j+1} e_jᵀ
        tridiagonal = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
        if off_diagonal:
            betas = torch.tensor(off_diagonal, dtype=torch.float64)
            tridiagonal += torch.diag(betas, 1) + torch.diag(betas, -1)
        ritz_values, ritz_coordinates = torch.linalg.eigh(tridiagonal)
        order = _top_order(ritz_values, which)
        top, watched = order[:k], order[: k + 1]  # the k wanted pairs and one guard pair
        bounds = beta * ritz_coordinates[-1, order].abs()  # ‖H Q_j s_i − θ_i Q_j s_i‖ = β_j |s_{j,i}|
        if step >= min(k + 1, dim):
            converged = bool((bounds[: k + 1] <= tol * ritz_values[watched].abs()).all()) or step == dim
        if converged or step == steps:
            break
        if beta <= 1e-12 * ritz_values.abs().max().item():  # invariant subspace: restart orthogonally to it
            residual, beta = orthogonalize(_random_unit(dim, generator, dtype).to(basis), basis), 0.0
        off_diagonal.append(beta)
        basis = torch.cat([basis, (residual / residual.norm())[None]])
    coordinates = ritz_coordinates[:, top].to(basis)
    return EigenResult(
        eigenvalues=ritz_values[top].to(dtype),
        eigenvectors=coordinates.T @ basis,  # Ritz vectors Q_j s_i
        residuals=bounds[:k].to(dtype),
        hvp_count=step,
        tolerance=tol,
        converged=converged,
        method="lanczos",
    )


def _power_iteration(hvp, dim, k, tol, max_iter, which, generator, dtype, start) -> EigenResult:
    values, vectors, residuals = [], [], []
    shift, hvp_count = 0.0, 0

    def deflate(vector: torch.Tensor) -> torch.Tensor:  # P v, P projecting out the eigenvectors found so far
        return orthogonalize(vector, torch.stack(vectors)) if vectors else vector

    def dominant_eigenpair() -> tuple[float, torch.Tensor, float, bool]:
        """Power iteration on P(H − shift·I)P; returns (θ, v, ‖PHv − θv‖, converged) with θ = vᵀHv."""
        nonlocal hvp_count
        vector = _first_vector(dim, generator, dtype, start if not vectors and shift == 0 else None)
        if vectors:
            vector = deflate(vector.to(vectors[0]))
            vector = vector / vector.norm()
        for iteration in range(max_iter):
            product = hvp(vector).to(dtype)
            hvp_count += 1
            vector = vector.to(product.device)
            product = deflate(product - shift * vector)
            shifted_value = vector @ product
            value = shifted_value + shift  # Rayleigh quotient θ = vᵀHv
            residual = (product - shifted_value * vector).norm()  # ‖P(H − sI)v − (θ − s)v‖ = ‖PHv − θv‖
            converged = bool(residual <= tol * value.abs())
            if converged or iteration == max_iter - 1:
                return value.item(), vector, residual.item(), converged
            vector = product / product.norm()

    all_converged = True
    for _ in range(k):
        value, vector, residual, converged = dominant_eigenpair()
        if which == "algebraic" and value < 0 and shift == 0:  # a negative eigenvalue dominates: shift by it
            shift = value
            value, vector, residual, converged = dominant_eigenpair()
        values.append(value)
        vectors.append(vector)
        residuals.append(residual)
        all_converged = all_converged and converged
    order = _top_order(torch.tensor(values, dtype=dtype), which)
    return EigenResult(
        eigenvalues=torch.tensor(values, dtype=dtype)[order],
        eigenvectors=torch.stack(vectors)[order.to(vectors[0].device)],
        residuals=torch.tensor(residuals, dtype=dtype)[order],
        hvp_count=hvp_count,
        tolerance=tol,
        converged=all_converged,
        method="power",
    )
