"""`flatness-toy` at smoke scale through the runner: the old code's smoke numbers, the tables against
HeavyBall, the closed forms and dense Hessians, `--set`, `--seeds` (refused: it is deterministic) and
the figures."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from momentumlab.cli import app
from momentumlab.data.landscapes import scalar_product_gradient, scalar_product_hessian, scalar_product_loss
from momentumlab.experiments import flatness_toy
from momentumlab.experiments.runner import ReproductionOptions, run_reproduction
from momentumlab.optim import HeavyBall
from momentumlab.store import RunStore

# The code before issue 10 at 2 000 steps (its smoke test): the sharpness at every β, which the
# conversion reproduced bit for bit, and the claims' values (two are rounding-level residuals).
OLD_SMOKE_SHARPNESS = {
    "0.0": 3.7900030053899947,
    "0.5": 3.5834347739417303,
    "0.8": 3.0120949466519145,
    "0.9": 2.118989513333898,
}
OLD_SMOKE_CLAIMS = {
    "runs-reach-minima": 1.9746790831395656e-28,
    "sharpness-decreases-with-beta": 0.20656823144826442,
    "probe-matches-closed-form": 5.448974326416228e-15,
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("flatness-toy")
    report = run_reproduction(
        flatness_toy.REPRODUCTION,
        RunStore(folder / "store"),
        folder / "out",
        ReproductionOptions(scale="smoke"),
    )
    out = folder / "out" / "flatness-toy"
    return report, {name: pd.read_csv(out / f"{name}.csv") for name in ("end_points", "paths")}


def test_smoke_claims_equal_the_old_code(smoke):
    report, _ = smoke
    claims = {claim.id: claim for claim in report.claims}
    assert list(claims) == list(OLD_SMOKE_CLAIMS)
    assert claims["sharpness-decreases-with-beta"].measured == pytest.approx(
        OLD_SMOKE_CLAIMS["sharpness-decreases-with-beta"], rel=1e-12
    )
    assert claims["sharpness-decreases-with-beta"].detail == pytest.approx(OLD_SMOKE_SHARPNESS, rel=1e-12)
    assert claims["runs-reach-minima"].measured < 1e-26  # rounding level, as in the old code
    assert claims["probe-matches-closed-form"].measured < 1e-13
    assert all(claim.passed for claim in report.claims)


def test_paths_are_heavy_ball_optimizer_runs(smoke):
    """Each β's path over its first 100 steps equals HeavyBall(h = 0.01(1 − β), μ = β) from (2.8, 3.4)."""
    _, tables = smoke
    settings = flatness_toy.Settings.smoke()
    for row in tables["end_points"].itertuples():
        assert row.h == pytest.approx(settings.effective_step * (1 - row.beta), rel=1e-15)
        path = tables["paths"].query(f"beta == {row.beta} and step <= 100")[["w1", "w2"]]
        parameter = torch.nn.Parameter(torch.tensor(settings.start, dtype=torch.float64))
        optimizer = HeavyBall([parameter], lr=row.h, momentum=row.beta)
        expected = [parameter.detach().tolist()]
        for _ in range(100):
            parameter.grad = scalar_product_gradient(parameter.detach(), settings.input, settings.target)
            optimizer.step()
            expected.append(parameter.detach().tolist())
        torch.testing.assert_close(
            torch.tensor(path.values), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12
        )


def test_tables_against_closed_forms_and_dense_hessians(smoke):
    """Final loss and λ_max = x²(w1² + w2²) recomputed from the end points; the probe's value is the top
    eigenvalue of the 2×2 Hessian; the claims recomputed from the table."""
    report, tables = smoke
    end_points = tables["end_points"]
    points = torch.tensor(end_points[["w1", "w2"]].values, dtype=torch.float64)
    loss = scalar_product_loss(1.0, 0.6)(points)
    torch.testing.assert_close(torch.tensor(end_points["final_loss"].values), loss, rtol=1e-6, atol=1e-30)
    top = torch.linalg.eigvalsh(scalar_product_hessian(points, 1.0, 0.6))[:, -1]
    torch.testing.assert_close(torch.tensor(end_points["probe_sharpness"].values), top, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.tensor(end_points["sharpness"].values), top, rtol=1e-12, atol=0)
    assert end_points["probe_converged"].all()
    claims = {claim.id: claim.measured for claim in report.claims}
    sharpness = end_points["sharpness"].tolist()
    assert claims["sharpness-decreases-with-beta"] == min(a - b for a, b in itertools.pairwise(sharpness))
    assert claims["runs-reach-minima"] == end_points["final_loss"].max()


def test_paths_start_at_the_start_and_end_at_the_end_points(smoke):
    _, tables = smoke
    paths, end_points = tables["paths"], tables["end_points"]
    for (beta, rows), end in zip(paths.groupby("beta"), end_points.itertuples()):
        assert beta == end.beta
        assert rows["step"].tolist() == list(range(2001))  # smoke: every step of the dense part
        assert rows.iloc[0][["w1", "w2"]].tolist() == [2.8, 3.4]
        assert rows.iloc[-1][["w1", "w2"]].tolist() == [end.w1, end.w2]


def test_report_and_figures(smoke):
    report, _ = smoke
    assert [path.name for path in report.figures] == ["trajectories.png", "sharpness.png"]
    for path in report.figures:
        assert path.read_bytes()[:8] == PNG
        assert f"(flatness-toy/{path.name})" in report.section
    assert "(1+β)/(1−β) = 1, 3, 9, 19" in report.section
    # the gradient flow keeps w1² − w2² = −3.72, so it ends where λ_max = √(3.72² + 4·0.36) = 3.9088
    assert "ends at λ_max = 3.9088" in report.section


def test_set_reaches_the_steps_and_the_betas(tmp_path: Path):
    overrides = ("steps=300", "betas=[0.0, 0.9]")
    report = run_reproduction(
        flatness_toy.REPRODUCTION,
        RunStore(tmp_path / "store"),
        tmp_path / "out",
        ReproductionOptions(scale="smoke", overrides=overrides),
    )
    end_points = pd.read_csv(tmp_path / "out" / "flatness-toy" / "end_points.csv")
    paths = pd.read_csv(tmp_path / "out" / "flatness-toy" / "paths.csv")
    assert end_points["beta"].tolist() == [0.0, 0.9]
    assert paths["step"].max() == 300
    assert end_points["final_loss"].max() > 1e-20  # β = 0.9 has not converged after 300 steps
    assert "for 300 steps" in report.section


def test_seeds_unknown_and_invalid_settings_exit_2(tmp_path: Path):
    arguments = ["reproduce", "flatness-toy", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
    seeds = CliRunner().invoke(app, [*arguments, "--seeds", "0,1"])
    assert seeds.exit_code == 2
    assert "deterministic" in seeds.output
    unknown = CliRunner().invoke(app, [*arguments, "--set", "chains=3"])
    assert unknown.exit_code == 2
    assert "chains" in unknown.output and "effective_step" in unknown.output
    unordered = CliRunner().invoke(app, [*arguments, "--set", "betas=[0.5, 0.0]"])
    assert unordered.exit_code == 2
    assert "betas" in unordered.output and "strictly increasing" in unordered.output
    assert not (tmp_path / "o").exists()
