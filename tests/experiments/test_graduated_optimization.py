"""`graduated-optimization` at smoke scale through the runner: the smoke numbers, every arm's schedule by
hand (δ_{m+1} = γ_m δ_m), C² and K against a loop of per-example backward passes, the claims recomputed as
paired differences, invalid settings and the figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

from momentumlab.cli import app
from momentumlab.experiments import graduated_optimization
from momentumlab.experiments.runner import ReproductionOptions, run_reproduction
from momentumlab.probes.noise import smoothing_degree
from momentumlab.store import RunStore
from momentumlab.train.images import build_image_data, build_image_model, standardize

# Smoke scale (2 seeds, 300 training digits, M = 3 epochs from η = 0.2, b = 16, β = 0.9), first measured
# with this code: the claims' paired differences of final test accuracy (decayed − constant).
SMOKE_CLAIMS = {
    "lr-decay-beats-constant": 0.00833333283662796,
    "batch-increase-beats-constant": -0.029166661202907562,
    "momentum-decay-beats-constant": 0.04027774930000305,
}
TABLES = ("constants", "final", "schedules")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("graduated-optimization")
    report = run_reproduction(
        graduated_optimization.REPRODUCTION,
        RunStore(folder / "store"),
        folder / "out",
        ReproductionOptions(scale="smoke"),
    )
    out = folder / "out" / "graduated-optimization"
    return report, {name: pd.read_csv(out / f"{name}.csv") for name in TABLES}


def test_smoke_claims(smoke):
    report, _ = smoke
    measured = {claim.id: claim.measured for claim in report.claims}
    assert list(measured) == list(SMOKE_CLAIMS)
    for claim_id, value in SMOKE_CLAIMS.items():
        assert measured[claim_id] == pytest.approx(value, rel=1e-6), claim_id


def test_schedules_by_hand(smoke):
    """M = 3, p = 0.9: δ_m/δ_1 = ((M − m + 1)/M)^p; η_m = 0.2 δ_m/δ_1; b_m = round(16 (δ_1/δ_m)²) = 16, 33,
    116; SHB's β_m gives δ(0.2, 16, β_m) = δ_m with the seed's C² and K; the constant arms keep δ_1."""
    _, tables = smoke
    schedules, constants = tables["schedules"], tables["constants"].set_index("seed")
    ratios = [((3 - m + 1) / 3) ** 0.9 for m in (1, 2, 3)]  # δ_m/δ_1
    for seed in (0, 1):
        rows = schedules[schedules["seed"] == seed]

        def arm(name: str, rows=rows) -> pd.DataFrame:
            return rows[rows["arm"] == name].sort_values("epoch")

        assert arm("SGD, η decayed")["lr"].tolist() == pytest.approx([0.2 * r for r in ratios], rel=1e-12)
        assert arm("SGD, b increased")["batch_size"].tolist() == [16, 33, 116]
        for name in ("SGD, constant δ", "SHB, constant δ"):
            assert arm(name)["delta"].nunique() == 1
        variance, bound = constants.loc[seed, ["variance", "gradient_bound"]]
        shb = arm("SHB, β decayed")
        first = smoothing_degree("shb", 0.2, 16, 0.9, variance, bound)
        assert shb["momentum"].iloc[0] == pytest.approx(0.9, rel=1e-12)  # the root for δ_1
        for momentum, ratio in zip(shb["momentum"], ratios):
            assert smoothing_degree("shb", 0.2, 16, momentum, variance, bound) == pytest.approx(
                first * ratio, rel=1e-9
            )
        assert 0 < shb["momentum"].iloc[-1] < shb["momentum"].iloc[1] < 0.9


def test_constants_against_a_loop_of_per_example_gradients(smoke):
    """C² = (1/N) Σ‖∇f_i − ∇f‖² and K = ‖∇f‖ at seed 0's initialization, one backward per example."""
    report, tables = smoke
    config = report.settings.run_config("SGD, constant δ", 0, 1.0, 1.0)
    data = build_image_data(config)
    inputs, _ = standardize(torch.as_tensor(data.train.images), torch.as_tensor(data.test.images))
    labels = torch.as_tensor(data.train.labels)
    model = build_image_model(config, 1, 8, 10)
    gradients = []
    for image, label in zip(inputs, labels):
        model.zero_grad()
        F.cross_entropy(model(image[None]), label[None]).backward()
        gradients.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    gradients = torch.stack(gradients)
    mean = gradients.mean(0)
    constants = tables["constants"].set_index("seed")
    assert len(labels) == 300
    assert constants.loc[0, "variance"] == pytest.approx(
        (gradients - mean).pow(2).sum(1).mean().item(), rel=1e-4
    )
    assert constants.loc[0, "gradient_bound"] == pytest.approx(mean.norm().item(), rel=1e-4)


def test_claims_are_paired_differences_of_final_test_accuracy(smoke):
    report, tables = smoke
    final = tables["final"].set_index(["arm", "seed"])["test_accuracy"]
    for claim in report.claims:
        decayed, constant = graduated_optimization.COMPARISONS[claim.id]
        differences = [final[(decayed, seed)] - final[(constant, seed)] for seed in (0, 1)]
        assert claim.measured == pytest.approx(sum(differences) / 2, rel=1e-12)
        assert claim.interval == pytest.approx((min(differences), max(differences)), rel=1e-12)
        assert claim.threshold == 0 and claim.comparison == ">"
        assert claim.verdict == (
            "passed" if min(differences) > 0 else "failed" if max(differences) <= 0 else "not resolved"
        )


def test_report_and_figures(smoke):
    report, _ = smoke
    assert [path.name for path in report.figures] == ["schedules.png", "accuracy.png"]
    for path in report.figures:
        assert path.read_bytes()[:8] == PNG
        assert f"(graduated-optimization/{path.name})" in report.section
    assert "| SGD, b increased |" in report.section and "| 116 |" in report.section


def test_invalid_settings_exit_2(tmp_path: Path):
    arguments = [
        "reproduce",
        "graduated-optimization",
        "--store",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "o"),
    ]
    too_long = CliRunner().invoke(app, [*arguments, "--set", "epochs=20"])
    assert too_long.exit_code == 2
    assert "b_1·M^(2p) = 3515 > 1437" in too_long.output
    unknown = CliRunner().invoke(app, [*arguments, "--set", "momentum=1.0"])
    assert unknown.exit_code == 2 and "momentum" in unknown.output
    assert not (tmp_path / "o").exists()
