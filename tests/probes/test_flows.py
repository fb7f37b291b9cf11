"""Heavy ball and its modified flows (momentumlab.probes.flows) against closed forms, the HeavyBall
optimizer, matrix exponentials and dense Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from torch.autograd.functional import hessian

from momentumlab.data.landscapes import scalar_product_gradient
from momentumlab.data.tanh_teacher import tanh_teacher_data
from momentumlab.models.tanh_network import TanhNetwork
from momentumlab.optim import HeavyBall
from momentumlab.probes.flows import (
    fitted_order,
    gradient,
    heavy_ball_iterates,
    heavy_ball_paths,
    igr_flow,
    igr_m_flow,
    igr_m_strength,
    integrate_flow,
    modified_flow,
    momentum_time_lag,
    order_study,
    plain_flow,
    regularized_loss,
    solver_error,
)

X, Y = 1.3, 0.6  # toy input and target; x ≠ 1 so that every power of x in the closed forms is exercised


def toy_loss(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * (Y - w[0] * w[1] * X) ** 2  # E = ½(y − w1 w2 x)²


def toy_closed_forms(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """By hand, with r = w1 w2 x − y and s = w1² + w2²:
    ∇E = r x (w2, w1);  ‖∇E‖² = r² x² s;
    ∇‖∇E‖² = (2 r x³ w2 s + 2 r² x² w1,  2 r x³ w1 s + 2 r² x² w2)."""
    w1, w2 = w.tolist()
    r, s = w1 * w2 * X - Y, w1**2 + w2**2
    grad = torch.tensor([r * X * w2, r * X * w1], dtype=torch.float64)
    squared_norm = torch.tensor(r**2 * X**2 * s, dtype=torch.float64)
    penalty_grad = torch.tensor(
        [2 * r * X**3 * w2 * s + 2 * r**2 * X**2 * w1, 2 * r * X**3 * w1 * s + 2 * r**2 * X**2 * w2],
        dtype=torch.float64,
    )
    return grad, squared_norm, penalty_grad


POINTS = [torch.tensor(p, dtype=torch.float64) for p in ((2.8, 3.4), (0.3, -1.1), (0.7746, 0.7746))]
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def test_heavy_ball_recursion_matches_optimizer():
    """The explicit recursion equals `HeavyBall` (b ← μb + ∇, x ← x − hb) step for step."""
    h, beta, steps = 0.02, 0.7, 60
    start = torch.tensor([2.8, 3.4], dtype=torch.float64)
    parameter = torch.nn.Parameter(start.clone())
    optimizer = HeavyBall([parameter], lr=h, momentum=beta)
    expected = [start.clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        toy_loss(parameter).backward()
        optimizer.step()
        expected.append(parameter.detach().clone())
    torch.testing.assert_close(
        heavy_ball_iterates(toy_loss, start, h, beta, steps), torch.stack(expected), **TIGHT
    )
    chosen = heavy_ball_iterates(toy_loss, start, h, beta, steps, record=[60, 0, 17])
    torch.testing.assert_close(chosen, torch.stack(expected)[[0, 17, 60]], **TIGHT)
    with pytest.raises(ValueError, match="record"):
        heavy_ball_iterates(toy_loss, start, h, beta, steps, record=[61])


def test_first_steps_by_hand():
    """E = ½x² (∇E = x), h = 0.1, β = 0.5: x_1 = 1 − 0.1 = 0.9, x_2 = 0.9 − 0.09 + 0.5(0.9 − 1) = 0.76."""
    iterates = heavy_ball_iterates(
        lambda x: 0.5 * x.pow(2).sum(), torch.tensor([1.0], dtype=torch.float64), 0.1, 0.5, 2
    )
    torch.testing.assert_close(
        iterates.flatten(), torch.tensor([1.0, 0.9, 0.76], dtype=torch.float64), **TIGHT
    )


def test_slow_manifold_first_steps_by_hand():
    """E = ½x², h = 0.1, β = 0.5 on the slow manifold: x_{−1} = 1 + 0.1·1/0.5 = 1.2, so
    x_1 = 1 − 0.1 + 0.5(1 − 1.2) = 0.8 = x_0 − h∇E(x_0)/(1 − β), x_2 = 0.8 − 0.08 + 0.5(0.8 − 1) = 0.62."""
    iterates = heavy_ball_iterates(
        lambda x: 0.5 * x.pow(2).sum(),
        torch.tensor([1.0], dtype=torch.float64),
        0.1,
        0.5,
        2,
        start="slow_manifold",
    )
    torch.testing.assert_close(
        iterates.flatten(), torch.tensor([1.0, 0.8, 0.62], dtype=torch.float64), **TIGHT
    )
    with pytest.raises(ValueError, match="start = 'moving'"):
        heavy_ball_iterates(toy_loss, POINTS[0], 0.1, 0.5, 2, start="moving")


def test_slow_manifold_start_removes_the_lag_on_a_quadratic():
    """E = ½xᵀAx, β = 0.5, T = 1, against the IGR-M flow's closed form expm(−(A + 2λA²)T/(1 − β))x_0.
    At rest, heavy ball trails the flow by τ = hβ/(1 − β): its distance at T is τ‖x̃′(T)‖ to within a few
    per cent and halves with h (order 1). On the slow manifold the lag is gone: the distance quarters
    (order 2) and is a small fraction of the at-rest one."""
    matrix = torch.tensor([[1.0, 0.3], [0.3, 3.0]], dtype=torch.float64)
    start, beta, horizon = torch.tensor([1.0, 1.0], dtype=torch.float64), 0.5, 1.0
    distances = {}
    for h in (4e-3, 2e-3):
        lam = igr_m_strength(h, beta)
        generator = (matrix + 2 * lam * matrix @ matrix) / (1 - beta)  # x̃′ = −generator · x̃
        flow = torch.from_numpy(expm(-generator.numpy() * horizon) @ start.numpy())
        steps = round(horizon / h)
        for heavy_ball_start in ("rest", "slow_manifold"):
            end = heavy_ball_iterates(
                lambda x: 0.5 * x @ matrix @ x, start, h, beta, steps, [steps], start=heavy_ball_start
            )[0]
            distances[heavy_ball_start, h] = (end - flow).norm().item()
        lag_term = momentum_time_lag(h, beta) * (generator @ flow).norm().item()  # τ‖x̃′(T)‖
        assert distances["rest", h] == pytest.approx(lag_term, rel=0.05)
        assert distances["slow_manifold", h] < 0.1 * distances["rest", h]  # 0.06 at h = 4e-3, 0.03 at 2e-3
    assert 1.8 < distances["rest", 4e-3] / distances["rest", 2e-3] < 2.2
    assert 3.6 < distances["slow_manifold", 4e-3] / distances["slow_manifold", 2e-3] < 4.4


@pytest.mark.parametrize("point", POINTS)
def test_fields_match_closed_forms_on_toy(point):
    h, beta = 0.01, 0.5
    grad, squared_norm, penalty_grad = toy_closed_forms(point)
    lam_m = 1.5 * 0.01 / (4 * 0.25)  # (1 + β)h/(4(1 − β)²) = 0.015
    assert igr_m_strength(h, beta) == pytest.approx(lam_m, rel=1e-15)
    torch.testing.assert_close(gradient(toy_loss, point), grad, **TIGHT)
    torch.testing.assert_close(plain_flow(toy_loss, beta)(point), -grad / (1 - beta), **TIGHT)
    torch.testing.assert_close(igr_flow(toy_loss, h)(point), -(grad + h / 4 * penalty_grad), **TIGHT)
    torch.testing.assert_close(
        igr_m_flow(toy_loss, h, beta)(point), -(grad + lam_m * penalty_grad) / (1 - beta), **TIGHT
    )
    torch.testing.assert_close(
        regularized_loss(toy_loss, 0.3)(point), toy_loss(point) + 0.3 * squared_norm, **TIGHT
    )
    assert not point.requires_grad


def test_integrate_flow_matches_matrix_exponential():
    """x' = −Ax (A not symmetric) gives x(t) = expm(−At) x0."""
    generator = torch.Generator().manual_seed(0)
    root = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    matrix = root @ root.T / 4 + 0.3 * torch.eye(4, dtype=torch.float64) + 0.2 * (root - root.T)
    start = torch.randn(4, generator=generator, dtype=torch.float64)
    times = [0.0, 0.3, 1.0, 2.5]
    flow = integrate_flow(lambda x: -matrix @ x, start, times)
    expected = torch.stack([torch.from_numpy(expm(-matrix.numpy() * t) @ start.numpy()) for t in times])
    torch.testing.assert_close(flow, expected, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="increasing"):
        integrate_flow(lambda x: -x, start, [1.0, 0.5])


def test_igr_m_flow_on_quadratic_is_a_matrix_exponential():
    """E = ½xᵀAx: the IGR-M flow is linear, x̃(t) = expm(−(A + 2λA²)t/(1 − β)) x0."""
    matrix = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    start = torch.tensor([1.0, -0.7], dtype=torch.float64)
    h, beta, t = 0.05, 0.8, 0.7
    lam = igr_m_strength(h, beta)
    flow = integrate_flow(igr_m_flow(lambda x: 0.5 * x @ matrix @ x, h, beta), start, [t])[0]
    generator = ((matrix + 2 * lam * matrix @ matrix) / (1 - beta)).numpy()
    torch.testing.assert_close(
        flow, torch.from_numpy(expm(-generator * t) @ start.numpy()), rtol=1e-9, atol=1e-10
    )


def test_orders_on_quadratic():
    """E = ½xᵀAx, β = 0.5, T = 1, h = 4e-3 → 2e-3. At a fixed time heavy ball trails every flow by the lag
    τ = hβ/(1 − β), so its distance to the IGR-M flow at T halves (order 1), like the distance to the plain
    flow; ‖x_K − x̃(T) + τ x̃′(T)‖ and the distance to the IGR-M flow at T − τ quarter (order 2)."""
    matrix = torch.tensor([[1.0, 0.3], [0.3, 3.0]], dtype=torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x @ matrix @ x

    start, beta, horizon = torch.tensor([1.0, 1.0], dtype=torch.float64), 0.5, 1.0
    measured = {}
    for h in (4e-3, 2e-3):
        steps = round(horizon / h)
        iterates = heavy_ball_iterates(loss, start, h, beta, steps, record=[0, steps])
        field, lag = igr_m_flow(loss, h, beta), momentum_time_lag(h, beta)
        at_horizon = integrate_flow(field, start, [horizon])[0]
        lagged = integrate_flow(field, start, [horizon - lag])[0]
        plain = integrate_flow(plain_flow(loss, beta), start, [horizon])[0]
        measured[h] = {
            "igr_m": (iterates[-1] - at_horizon).norm().item(),
            "plain": (iterates[-1] - plain).norm().item(),
            "lag_corrected": (iterates[-1] - at_horizon + lag * field(at_horizon)).norm().item(),
            "lagged": (iterates[-1] - lagged).norm().item(),
        }
    ratios = {key: measured[4e-3][key] / measured[2e-3][key] for key in measured[4e-3]}
    assert 1.8 < ratios["plain"] < 2.2
    assert 1.8 < ratios["igr_m"] < 2.2
    assert 3.6 < ratios["lag_corrected"] < 4.4
    assert 3.6 < ratios["lagged"] < 4.4
    assert measured[2e-3]["lagged"] < 0.05 * measured[2e-3]["igr_m"]  # the lag is most of the distance


def test_heavy_ball_paths_equal_heavy_ball_optimizer_steps():
    """The batched recursion, four β at once at h = 0.01(1 − β), equals HeavyBall(h, μ = β) run per β."""
    betas = (0.0, 0.5, 0.8, 0.9)
    beta = torch.tensor(betas, dtype=torch.float64).unsqueeze(1)
    step = 0.01 * (1 - beta)
    start = torch.tensor([2.8, 3.4], dtype=torch.float64).expand(len(betas), 2)
    steps = 120
    paths = heavy_ball_paths(lambda w: scalar_product_gradient(w, X, Y), start, step, beta, steps)
    assert paths.shape == (steps + 1, len(betas), 2)
    for index, momentum in enumerate(betas):
        parameter = torch.nn.Parameter(start[index].clone())
        optimizer = HeavyBall([parameter], lr=float(step[index]), momentum=momentum)
        iterates = [parameter.detach().clone()]
        for _ in range(steps):
            parameter.grad = scalar_product_gradient(parameter.detach(), X, Y)
            optimizer.step()
            iterates.append(parameter.detach().clone())
        torch.testing.assert_close(paths[:, index], torch.stack(iterates), **TIGHT)
        torch.testing.assert_close(
            paths[:, index],
            heavy_ball_iterates(toy_loss, start[index], float(step[index]), momentum, steps),
            **TIGHT,
        )


def small_network(seed: int = 0) -> tuple[TanhNetwork, torch.Tensor, torch.Tensor]:
    """A tanh network of width 5 on 12 teacher points: (network, its loss, θ_0)."""
    generator = torch.Generator().manual_seed(seed)
    data = tanh_teacher_data(12, 4, generator)
    network = TanhNetwork(2, 5)
    return network, network.mse_loss(data.inputs, data.targets), network.initial_parameters(generator)


def test_regularized_gradient_matches_dense_hessian():
    """∇[E + λ‖∇E‖²] = ∇E + 2λ H∇E with H the dense autograd Hessian of a small tanh network."""
    _, loss, point = small_network()
    lam = 0.3
    dense = hessian(loss, point)
    grad = gradient(loss, point)
    expected = grad + 2 * lam * dense @ grad
    torch.testing.assert_close(gradient(regularized_loss(loss, lam), point), expected, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(modified_flow(loss, lam, 2.0)(point), -2.0 * expected, rtol=1e-11, atol=1e-12)


def test_fitted_order_of_power_laws():
    steps = [8e-3, 4e-3, 2e-3, 1e-3]
    assert fitted_order(steps, [3 * h**2 for h in steps]) == pytest.approx(2.0, abs=1e-12)
    assert fitted_order(steps, [0.5 * h for h in steps]) == pytest.approx(1.0, abs=1e-12)
    assert fitted_order(steps, [h**1.5 * (1 + 0.1 * i) for i, h in enumerate(steps)]) < 1.5  # noisy: a fit


QUADRATIC = torch.tensor([[1.0, 0.3], [0.3, 3.0]], dtype=torch.float64)


def quadratic_loss(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ QUADRATIC @ x


def test_order_study_matches_matrix_exponentials():
    """E = ½xᵀAx: the plain flow is expm(−At/(1 − β))x0 and the IGR-M flow expm(−Gt)x0 with
    G = (A + 2λA²)/(1 − β), so every distance of the study has a closed-form reference."""
    start, beta, horizon = torch.tensor([1.0, 1.0], dtype=torch.float64), 0.5, 0.4
    rows = order_study(quadratic_loss, start, [8e-3, 4e-3], horizon, beta)
    assert [row.h for row in rows] == [8e-3, 4e-3] and [row.steps for row in rows] == [50, 100]
    matrix = QUADRATIC.numpy()
    for row in rows:
        h = row.h
        generator = (matrix + 2 * igr_m_strength(h, beta) * matrix @ matrix) / (1 - beta)
        iterates = heavy_ball_iterates(quadratic_loss, start, h, beta, row.steps).numpy()

        def flow(rate: np.ndarray, t: float) -> np.ndarray:
            return expm(-rate * t) @ start.numpy()

        to_igr_m = [np.linalg.norm(x - flow(generator, k * h)) for k, x in enumerate(iterates)]
        to_plain = [np.linalg.norm(x - flow(matrix / (1 - beta), k * h)) for k, x in enumerate(iterates)]
        lag = h * beta / (1 - beta)  # τ
        expected = {
            "igr_m_horizon": to_igr_m[-1],
            "plain_horizon": to_plain[-1],
            "igr_m_max": max(to_igr_m),
            "plain_max": max(to_plain),
            "igr_m_lagged": np.linalg.norm(iterates[-1] - flow(generator, horizon - lag)),
            "lag_term": lag * np.linalg.norm(generator @ iterates[-1]),  # τ‖x̃′‖ at x_K, x̃′ = −Gx
        }
        for field, value in expected.items():
            assert getattr(row, field) == pytest.approx(value, rel=1e-7, abs=1e-12), (h, field)


def test_solver_error_estimates_the_integration_error():
    """With loose tolerances the solver's error against the exact IGR-M flow of a quadratic is large enough
    to measure; tolerances 100× tighter make it small, so their difference is the error itself."""
    start, beta, h, horizon = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5, 0.01, 1.0
    rtol, atol = 1e-5, 1e-7
    generator = (QUADRATIC + 2 * igr_m_strength(h, beta) * QUADRATIC @ QUADRATIC).numpy() / (1 - beta)
    exact = torch.from_numpy(expm(-generator * horizon) @ start.numpy())
    loose = integrate_flow(igr_m_flow(quadratic_loss, h, beta), start, [horizon], rtol, atol)[0]
    true_error = (loose - exact).norm().item()
    assert true_error > 1e-10
    estimate = solver_error(quadratic_loss, start, h, horizon, beta, rtol, atol)
    assert estimate == pytest.approx(true_error, rel=0.3)
    assert solver_error(quadratic_loss, start, h, horizon, beta) < 1e-11  # the default tolerances
