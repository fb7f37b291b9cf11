"""`heavy-ball-flow` at smoke scale through the runner: the old code's smoke numbers, SPEC §2's toy
distances, the fitted orders by hand, the regularizer study against HeavyBall and a dense Hessian,
`--set`, invalid settings and the figures."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.autograd.functional import hessian
from typer.testing import CliRunner

from momentumlab.cli import app
from momentumlab.data.tanh_teacher import tanh_teacher_data
from momentumlab.experiments import heavy_ball_flow
from momentumlab.experiments.runner import ReproductionOptions, run_reproduction
from momentumlab.models.tanh_network import TanhNetwork
from momentumlab.optim import HeavyBall
from momentumlab.probes.flows import fitted_order
from momentumlab.store import RunStore

# The code before issue 10 in the smoke setting (its test's TINY settings, seed 0), heavy ball started at
# rest: the fitted orders, which the conversion reproduced bit for bit and the at-rest variant still does.
OLD_SMOKE_AT_REST = {
    ("toy", "igr_m_horizon"): 1.9007376173869117,
    ("toy", "plain_horizon"): 0.9815445801658618,
    ("network", "igr_m_horizon"): 0.9854440329491296,
    ("network", "plain_horizon"): 1.005705692263546,
    ("network", "igr_m_lagged"): 1.9881597749097595,
}
# Issue 13's protocol, heavy ball started on the slow manifold, first measured with this code at smoke
# scale: the claims' measured values (the regularizer study still starts at rest: the old code's value).
SMOKE_CLAIMS = {
    "toy-igr-m-order-2": 1.9441895715366817,
    "toy-plain-order-1": 1.0674864118750378,
    "network-igr-m-order-2": 1.997801745059273,
    "network-plain-order-1": 1.0153789254397017,
    "network-igr-m-lagged-order-2": 1.9881597749097595,
    "regularizer-closer-to-gdm": 0.4101902624857416,
}
TABLES = ("toy_distances", "network_distances", "regularizer", "solver_error")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("heavy-ball-flow")
    report = run_reproduction(
        heavy_ball_flow.REPRODUCTION,
        RunStore(folder / "store"),
        folder / "out",
        ReproductionOptions(scale="smoke"),
    )
    return report, {name: pd.read_csv(folder / "out" / "heavy-ball-flow" / f"{name}.csv") for name in TABLES}


def test_smoke_claims(smoke):
    report, _ = smoke
    measured = {claim.id: claim.measured for claim in report.claims}
    assert list(measured) == list(SMOKE_CLAIMS)
    for claim_id, value in SMOKE_CLAIMS.items():
        assert measured[claim_id] == pytest.approx(value, rel=1e-9), claim_id
    assert all(claim.verdict == "passed" for claim in report.claims)
    network = next(claim for claim in report.claims if claim.id == "network-igr-m-order-2")
    assert network.interval == pytest.approx((SMOKE_CLAIMS[network.id],) * 2)  # one seed: a point
    assert network.detail["seeds"] == 1


def test_at_rest_variant_equals_the_old_code(smoke):
    _, tables = smoke
    for (problem, column), value in OLD_SMOKE_AT_REST.items():
        frame = tables[f"{problem}_distances"]
        rest = frame[frame["start"] == "rest"]
        assert fitted_order(rest["h"], rest[column]) == pytest.approx(value, rel=1e-9)


def test_slow_manifold_start_removes_the_lag(smoke):
    """On the network, the slow-manifold start's distance at T is far below the at-rest one, which is
    about the lag term τ‖x̃′(T)‖; on the slow manifold τ = 0, so its lagged distance is the one at T."""
    _, tables = smoke
    network = tables["network_distances"].set_index(["start", "h"])
    slow, rest = network.loc["slow_manifold"], network.loc["rest"]
    assert (slow["igr_m_horizon"] < 0.1 * rest["igr_m_horizon"]).all()  # 0.09 at h = 4e-3, 0.04 at 2e-3
    assert (rest["igr_m_horizon"] / rest["lag_term"]).between(0.9, 1.1).all()
    assert (slow["lag_term"] == 0).all()
    assert slow["igr_m_lagged"].to_numpy() == pytest.approx(slow["igr_m_horizon"].to_numpy(), rel=1e-6)


def test_toy_distances_are_spec_values(smoke):
    """SPEC §2 quotes two significant digits for h = 4e-3 and 2e-3, β = 0.5, T = 1."""
    _, tables = smoke
    toy = tables["toy_distances"]
    toy = toy[toy["start"] == "rest"].set_index("h")  # SPEC §2's heavy ball starts at rest
    assert list(toy.index) == [4e-3, 2e-3] and toy["steps"].tolist() == [250, 500]
    for h in toy.index:
        igr_m, plain = heavy_ball_flow.SPEC_DISTANCES[h]
        assert toy.loc[h, "igr_m_horizon"] == pytest.approx(igr_m, rel=0.06)
        assert toy.loc[h, "plain_horizon"] == pytest.approx(plain, rel=0.06)


def test_orders_are_the_two_point_slopes(smoke):
    """With two step sizes the fitted order is log(d₁/d₂)/log(h₁/h₂); the claims take it per table."""
    report, tables = smoke
    measured = {claim.id: claim.measured for claim in report.claims}

    def slope(frame: pd.DataFrame, column: str) -> float:
        (h1, d1), (h2, d2) = frame[["h", column]].values
        return math.log(d1 / d2) / math.log(h1 / h2)

    toy, network = tables["toy_distances"], tables["network_distances"]
    toy_slow, network_slow = (
        toy[toy["start"] == "slow_manifold"],
        network[network["start"] == "slow_manifold"],
    )
    network_rest = network[network["start"] == "rest"]
    assert measured["toy-igr-m-order-2"] == pytest.approx(slope(toy_slow, "igr_m_horizon"), rel=1e-12)
    assert measured["toy-plain-order-1"] == pytest.approx(slope(toy_slow, "plain_horizon"), rel=1e-12)
    assert measured["network-igr-m-order-2"] == pytest.approx(slope(network_slow, "igr_m_horizon"), rel=1e-12)
    assert measured["network-plain-order-1"] == pytest.approx(slope(network_slow, "plain_horizon"), rel=1e-12)
    assert measured["network-igr-m-lagged-order-2"] == pytest.approx(
        slope(network_rest, "igr_m_lagged"), rel=1e-12
    )
    assert network["seed"].unique().tolist() == [0]
    # at rest the network's flow still moves at T, so the lag τ = hβ/(1 − β) is most of the distance there
    assert (network_rest["igr_m_lagged"] < 0.1 * network_rest["igr_m_horizon"]).all()


def test_regularizer_study_against_heavy_ball_and_a_dense_hessian(smoke):
    """The final GD+M row: HeavyBall(h = 2e-3, μ = 0.9) for 60 steps on the seed-0 network built from the
    model and data modules gives its loss and gradient norm; its sharpness is the top eigenvalue of the
    dense autograd Hessian. The claim's ratio is recomputed from the final distances."""
    report, tables = smoke
    regularizer = tables["regularizer"]
    final = regularizer[regularizer["step"] == 60].set_index("method")
    assert sorted(regularizer["step"].unique().tolist()) == [0, 1, 3, 15, 60]
    generator = torch.Generator().manual_seed(0)
    data = tanh_teacher_data(16, 4, generator)
    network = TanhNetwork(2, 4)
    loss = network.mse_loss(data.inputs, data.targets)
    parameter = torch.nn.Parameter(network.initial_parameters(generator))
    optimizer = HeavyBall([parameter], lr=2e-3, momentum=0.9)
    for _ in range(60):
        optimizer.zero_grad()
        loss(parameter).backward()
        optimizer.step()
    point = parameter.detach()
    assert final.loc["GD+M", "loss"] == pytest.approx(loss(point).item(), rel=1e-10)
    assert final.loc["GD+M", "gradient_norm"] == pytest.approx(
        torch.func.grad(loss)(point).norm().item(), rel=1e-9
    )
    top = torch.linalg.eigvalsh(hessian(loss, point))[-1].item()
    assert final.loc["GD+M", "sharpness"] == pytest.approx(top, rel=1e-7)
    assert final.loc["GD+M", "distance_to_gdm"] == 0
    ratio = final.loc["GD + λ‖∇E‖²", "distance_to_gdm"] / final.loc["GD", "distance_to_gdm"]
    claim = next(claim for claim in report.claims if claim.id == "regularizer-closer-to-gdm")
    assert claim.measured == pytest.approx(ratio, rel=1e-12)
    assert claim.detail["per_seed"] == {0: pytest.approx(ratio, rel=1e-12)}


def test_solver_error_is_far_below_the_distances(smoke):
    _, tables = smoke
    solver = tables["solver_error"].set_index("problem")
    assert solver["h"].tolist() == [2e-3, 2e-3]
    assert (solver["error"] < 1e-10).all()
    assert (solver["error"] < 1e-6 * tables["toy_distances"]["igr_m_horizon"].min()).all()


def test_report_and_figures(smoke):
    report, _ = smoke
    assert [path.name for path in report.figures] == ["distance_vs_step.png", "regularizer.png"]
    for path in report.figures:
        assert path.read_bytes()[:8] == PNG
        assert f"(heavy-ball-flow/{path.name})" in report.section
    assert "| 0.004 | 250 | 1.04e-02 | 1.0e-02 | 7.13e-02 | 7.1e-02 |" in report.section  # with SPEC's
    assert "width 4 (17 parameters)" in report.section


def test_set_reaches_the_horizons_and_the_regularizer(tmp_path: Path):
    overrides = ("toy.horizon=0.5", "network.horizon=0.1", "regularizer.steps=5", "beta=0.6")
    report = run_reproduction(
        heavy_ball_flow.REPRODUCTION,
        RunStore(tmp_path / "store"),
        tmp_path / "out",
        ReproductionOptions(scale="smoke", overrides=overrides),
    )
    folder = tmp_path / "out" / "heavy-ball-flow"
    assert pd.read_csv(folder / "toy_distances.csv")["steps"].tolist() == [125, 125, 250, 250]
    assert pd.read_csv(folder / "network_distances.csv")["steps"].tolist() == [25, 25, 50, 50]
    assert pd.read_csv(folder / "regularizer.csv")["step"].max() == 5
    assert "| SPEC |" not in report.section  # β = 0.6, T = 0.5: not SPEC's setting
    assert "β = 0.6, T = 0.5" in report.section


def test_unknown_and_invalid_settings_exit_2(tmp_path: Path):
    arguments = ["reproduce", "heavy-ball-flow", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
    unknown = CliRunner().invoke(app, [*arguments, "--set", "network.depth=2"])
    assert unknown.exit_code == 2
    assert "network.depth" in unknown.output and "network.width" in unknown.output
    repeated = CliRunner().invoke(app, [*arguments, "--set", "toy.step_sizes=[0.004, 0.004]"])
    assert repeated.exit_code == 2
    assert "toy.step_sizes" in repeated.output and "distinct" in repeated.output
    too_long = CliRunner().invoke(
        app, [*arguments, "--set", "network.step_sizes=[0.5, 0.25]", "--set", "beta=0.9"]
    )
    assert too_long.exit_code == 2
    assert "h = 0.5" in too_long.output and "τ" in too_long.output
    assert not (tmp_path / "o").exists()
