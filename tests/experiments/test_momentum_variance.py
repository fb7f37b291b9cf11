"""`momentum-variance` at smoke scale through the runner: the old code's smoke numbers, the claims and
the ratios recomputed from the tables, `--set`, invalid settings and the figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from momentumlab.cli import app
from momentumlab.experiments import momentum_variance
from momentumlab.experiments.runner import ReproductionOptions, run_reproduction
from momentumlab.store import RunStore

# The code before issue 10 with 40 chains, 300 burn-in and 200 recorded steps, seed 0: the claims'
# measured values and the fixed-point ratios, which the conversion reproduced bit for bit.
OLD_SMOKE_CLAIMS = {
    "buffer-covariance-fixed-point": 0.01499227372382661,
    "noise-part-covariance-trajectory": 0.009727520816380952,
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("momentum-variance")
    report = run_reproduction(
        momentum_variance.REPRODUCTION,
        RunStore(folder / "store"),
        folder / "out",
        ReproductionOptions(scale="smoke"),
    )
    out = folder / "out" / "momentum-variance"
    names = ("ratios", "whitened_eigenvalues", "start_transient")
    return report, {name: pd.read_csv(out / f"{name}.csv") for name in names}


def test_smoke_claims_equal_the_old_code(smoke):
    report, _ = smoke
    measured = {claim.id: claim.measured for claim in report.claims}
    assert list(measured) == list(OLD_SMOKE_CLAIMS)
    for claim_id, value in OLD_SMOKE_CLAIMS.items():
        assert measured[claim_id] == pytest.approx(value, rel=1e-9), claim_id
    # 40 chains: the noise part's interval [0, 0.105] reaches past the 10% tolerance
    assert [claim.verdict for claim in report.claims] == ["passed", "not resolved"]


def test_claims_recomputed_from_the_ratios(smoke):
    """max over β of |ratio/((1−β)/(1+β)) − 1|, with the prediction computed here."""
    report, tables = smoke
    ratios = tables["ratios"]
    for claim, buffer in zip(report.claims, ("fixed_point", "noise_part")):
        rows = ratios[ratios["buffer"] == buffer]
        assert rows["beta"].tolist() == [0.5, 0.9, 0.99]
        predicted = (1 - rows["beta"]) / (1 + rows["beta"])
        assert claim.measured == pytest.approx((rows["ratio"] / predicted - 1).abs().max(), rel=1e-12)
        assert claim.detail["0.5"]["predicted"] == pytest.approx(1 / 3, rel=1e-15)
        assert claim.detail["0.9"]["ratio"] == pytest.approx(float(rows["ratio"].iloc[1]), rel=1e-15)
        # the interval: per β, the deviations over ratio ± 1.96 SE (0 when that range holds the prediction)
        low, high = (
            rows["ratio"] - 1.959964 * rows["standard_error"],
            rows["ratio"] + 1.959964 * rows["standard_error"],
        )
        ends = ((low / predicted - 1).abs(), (high / predicted - 1).abs())
        inside = (low <= predicted) & (predicted <= high)
        lowest = pd.concat(ends, axis=1).min(axis=1).where(~inside, 0.0)
        assert claim.interval == pytest.approx(
            (lowest.max(), pd.concat(ends, axis=1).max(axis=1).max()), rel=1e-6
        )


def test_start_transient_table_against_the_closed_forms(smoke):
    """Both starts share the draws; t = 0: the zero start's bias is β and Cov/Σ (1−β)², the first-gradient
    start's Cov/Σ is 1; the predicted columns are the closed forms."""
    report, tables = smoke
    transient = tables["start_transient"].set_index(["start", "beta", "step"]).sort_index()
    assert len(transient) == 2 * 3 * 100
    for beta in (0.5, 0.9, 0.99):
        zero, first = transient.loc[("zero", beta)], transient.loc[("first gradient", beta)]
        steps = zero.index.to_numpy()
        np.testing.assert_allclose(zero["predicted_bias"], beta ** (steps + 1), rtol=1e-12)
        np.testing.assert_allclose(
            first["predicted_variance_ratio"],
            beta ** (2 * steps) + (1 - beta) / (1 + beta) * (1 - beta ** (2 * steps)),
            rtol=1e-12,
        )
        assert zero.loc[0, "bias"] == pytest.approx(beta, abs=0.1)  # 40 chains: the mean's noise floor
        assert zero.loc[0, "variance_ratio"] == pytest.approx((1 - beta) ** 2, rel=0.25)
        assert first.loc[0, "variance_ratio"] == pytest.approx(1.0, rel=0.25)
    assert "| 0.9 | zero | 11 | 0.8993 (0.9000) | 0.0098 (0.0100) | 0.2858 (0.2824) |" in report.section


def test_ratio_is_the_mean_whitened_eigenvalue(smoke):
    """tr(Σ⁻¹C)/d two ways: from the chains' time averages (the ratio) and as the mean eigenvalue of the
    pooled whitened covariance."""
    _, tables = smoke
    eigenvalues = tables["whitened_eigenvalues"].groupby(["buffer", "beta"], sort=False)["eigenvalue"]
    assert (eigenvalues.count() == 10).all()
    means = eigenvalues.mean()
    for row in tables["ratios"].itertuples():
        assert means[(row.buffer, row.beta)] == pytest.approx(row.ratio, rel=1e-10)


def test_fixed_point_ratios_are_within_their_standard_errors(smoke):
    """The smoke-scale estimates are noisy, but unbiased: within 4 standard errors of (1−β)/(1+β)."""
    _, tables = smoke
    fixed = tables["ratios"].query("buffer == 'fixed_point'")
    assert ((fixed["ratio"] - fixed["predicted"]).abs() < 4 * fixed["standard_error"]).all()


def test_report_and_figure(smoke):
    report, _ = smoke
    assert [path.name for path in report.figures] == ["variance_ratio.png", "buffer_start.png"]
    assert all(path.read_bytes()[:8] == PNG for path in report.figures)
    assert "No source paper states a claim about the start" in report.section
    assert "(momentum-variance/variance_ratio.png)" in report.section
    assert "| 0.5 | 0.33333 | 0.33108 ± 0.00222 (-0.67%) |" in report.section  # the old code's row
    assert "condition number\n100)" in report.section


def test_set_reaches_the_chains_and_the_learning_rate(tmp_path: Path):
    overrides = ("chains=10", "learning_rate=0.05", "betas=[0.5]")
    report = run_reproduction(
        momentum_variance.REPRODUCTION,
        RunStore(tmp_path / "store"),
        tmp_path / "out",
        ReproductionOptions(scale="smoke", overrides=overrides, seeds=(3,)),
    )
    ratios = pd.read_csv(tmp_path / "out" / "momentum-variance" / "ratios.csv")
    assert ratios["beta"].tolist() == [0.5] * 3
    assert ratios["ratio"].iloc[0] != pytest.approx(0.33108, abs=1e-5)
    assert "10 independent chains" in report.section and "seeds [3]" in report.section
    assert "full buffer along the trajectory (η = 0.05)" in report.section


def test_unknown_and_invalid_settings_exit_2(tmp_path: Path):
    arguments = [
        "reproduce",
        "momentum-variance",
        "--store",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "o"),
    ]
    unknown = CliRunner().invoke(app, [*arguments, "--set", "steps_per_chain=3"])
    assert unknown.exit_code == 2
    assert "steps_per_chain" in unknown.output and "burn_in" in unknown.output
    one_chain = CliRunner().invoke(app, [*arguments, "--set", "chains=1"])
    assert one_chain.exit_code == 2
    assert "chains" in one_chain.output and "greater than or equal to 2" in one_chain.output
    reversed_range = CliRunner().invoke(app, [*arguments, "--set", "noise_variances=[10, 0.1]"])
    assert reversed_range.exit_code == 2
    assert "noise_variances" in reversed_range.output and "low ≤ high" in reversed_range.output
    assert not (tmp_path / "o").exists()
