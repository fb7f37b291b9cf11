"""`noise-level` at smoke scale through the runner: the old code's smoke numbers, the claims recomputed from
the tables by hand, the first runs retrained with PyTorch's own SGD, `--set`, and the figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

from momentumlab.cli import app
from momentumlab.data.digits import load_digits_dataset
from momentumlab.experiments import noise_level
from momentumlab.experiments.runner import ReproductionOptions, run_reproduction
from momentumlab.models.conv import SmallCNN
from momentumlab.store import RunStore

# The smoke scale of the code before issue 10 (batch sizes 64/256, β ∈ {0, 0.9}, one epoch, seed 0):
# the claims' measured values, which the conversion reproduced bit for bit.
OLD_SMOKE_CLAIMS = {
    "sgd-noise-falls-as-inverse-sqrt-batch": 0.1399867967843424,
    "noise-within-smoothing-degree": 1.4751312560705376,
    "lower-noise-higher-accuracy": -0.028988551782622423,
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("noise-level")
    report = run_reproduction(
        noise_level.REPRODUCTION,
        RunStore(folder / "store"),
        folder / "out",
        ReproductionOptions(scale="smoke"),
    )
    tables = {
        name: pd.read_csv(folder / "out" / noise_level.REPRODUCTION.name / f"{name}.csv")
        for name in ("measurements", "runs", "summary", "smoothing_line", "smoothing_lift")
    }
    return report, tables


def _claims(report) -> dict[str, float]:
    return {claim.id: claim.measured for claim in report.claims}


def test_smoke_claims_equal_the_old_code(smoke):
    report, _ = smoke
    measured = _claims(report)
    assert list(measured) == list(OLD_SMOKE_CLAIMS)
    for claim_id, value in OLD_SMOKE_CLAIMS.items():
        assert measured[claim_id] == pytest.approx(value, rel=1e-6), claim_id


def test_claims_recomputed_from_the_measured_steps(smoke):
    """Slope, largest ratio and Spearman ρ from the per-step and per-run CSVs with the formulas of SPEC §3."""
    report, tables = smoke
    steps, runs = tables["measurements"], tables["runs"]
    lr = report.settings.lr
    per_setting = steps.groupby(["method", "momentum", "batch_size"]).agg(
        mean_square=("noise_norm", lambda n: (n**2).mean()),
        variance=("variance", "max"),  # C²
        bound=("gradient_norm", "max"),  # K
    )
    per_setting["accuracy"] = runs.groupby(["method", "momentum", "batch_size"])["test_accuracy"].mean()
    sgd = per_setting.loc["sgd"].reset_index()
    slope = np.polyfit(np.log(sgd["batch_size"]), 0.5 * np.log(sgd["mean_square"]), 1)[0]
    ratios = []
    for (method, beta, b), row in per_setting.iterrows():
        per_batch = row["variance"] / b
        weight = {"sgd": 0.0, "shb": beta * (beta**2 - beta + 1) / (1 - beta) ** 2, "nshb": 4 * beta**2}
        delta = lr * math.sqrt(per_batch + weight[method] * (per_batch + row["bound"] ** 2))
        ratios.append(lr * math.sqrt(row["mean_square"]) / delta)
    noise_level = lr * np.sqrt(per_setting["mean_square"])
    rho = noise_level.corr(per_setting["accuracy"], method="spearman")
    measured = _claims(report)
    assert measured["sgd-noise-falls-as-inverse-sqrt-batch"] == pytest.approx(abs(slope + 0.5), rel=1e-9)
    assert measured["noise-within-smoothing-degree"] == pytest.approx(max(ratios), rel=1e-9)
    assert measured["lower-noise-higher-accuracy"] == pytest.approx(rho, rel=1e-9)


def _retrain_shb(
    batch_size: int, momentum: float, lr: float, steps: int
) -> tuple[dict[int, float], SmallCNN]:
    """Seed 0 with torch.optim.SGD (PyTorch's heavy ball, the SHB of the paper): ‖m_t − ∇f(x_t)‖ per step
    from a plain backward over the whole training set, and the trained model."""
    data = load_digits_dataset()
    inputs, labels = data.train.inputs, data.train.labels
    model = SmallCNN(generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1000))  # minibatch order
    noise = {}
    for step in range(steps):
        full = torch.autograd.grad(F.cross_entropy(model(inputs), labels), list(model.parameters()))
        batch = order[step * batch_size : (step + 1) * batch_size]
        optimizer.zero_grad()
        F.cross_entropy(model(inputs[batch]), labels[batch]).backward()
        optimizer.step()
        direction = [
            optimizer.state[p]["momentum_buffer"] if momentum else p.grad for p in model.parameters()
        ]
        noise[step] = torch.cat([(d - g).reshape(-1) for d, g in zip(direction, full)]).norm().item()
    return noise, model


def _rows(table: pd.DataFrame, method: str, batch_size: int) -> pd.DataFrame:
    return table[(table["method"] == method) & (table["batch_size"] == batch_size)]


def test_shb_run_equals_pytorch_sgd_with_momentum(smoke):
    """SHB β = 0.9, b = 256: 5 steps; ‖ω_t‖ at the measured steps 0 and 4, and the test accuracy."""
    report, tables = smoke
    noise, model = _retrain_shb(256, 0.9, report.settings.lr, steps=1437 // 256)
    measured = _rows(tables["measurements"], "shb", 256).set_index("step")["noise_norm"]
    assert list(measured.index) == [0, 4]
    for step, value in measured.items():
        assert value == pytest.approx(noise[step], rel=1e-4)
    test = load_digits_dataset().test
    with torch.no_grad():
        accuracy = (model(test.inputs).argmax(1) == test.labels).double().mean().item()
    assert _rows(tables["runs"], "shb", 256)["test_accuracy"].item() == pytest.approx(accuracy, abs=1e-12)


def test_smoothing_line_passes_through_sgds_trained_loss(smoke):
    """SGD b = 64 retrained for its 22 steps: f(x*) is the raw curve at offset 0; the lift's δ grid runs
    geometrically from δ_max/100 to 2δ_max, δ_max the line's largest δ."""
    report, tables = smoke
    _, model = _retrain_shb(64, 0.0, report.settings.lr, steps=1437 // 64)
    train = load_digits_dataset().train
    with torch.no_grad():
        loss = F.cross_entropy(model(train.inputs), train.labels).item()
    line, lift = tables["smoothing_line"], tables["smoothing_lift"]
    raw = line[(line["label"] == noise_level.RAW_LABEL) & (line["offset"] == 0)]
    assert raw["mean"].item() == pytest.approx(loss, rel=1e-5)
    largest = line["delta"].max()
    np.testing.assert_allclose(lift["delta"], np.geomspace(largest / 100, 2 * largest, 9), rtol=1e-12)
    assert len(line) == 3 * 4  # 3 points × (f and three δ)


def test_figures_are_pngs_linked_from_the_report(smoke):
    report, _ = smoke
    assert [path.name for path in report.figures] == ["noise.png", "accuracy_vs_noise.png", "smoothing.png"]
    for path in report.figures:
        assert path.read_bytes()[:8] == PNG
        assert f"(noise-level/{path.name})" in report.section
    assert "version 4" in report.section


def test_set_reaches_the_grid_the_step_size_and_the_smoothing(tmp_path: Path):
    """Two SGD batch sizes only, η = 0.1 and 3 ball pairs: the steps, the noise level and the draws follow."""
    overrides = ("batch_sizes=[128, 512]", "momenta=[0.0]", "lr=0.1", "smoothing.pairs=3")
    report = run_reproduction(
        noise_level.REPRODUCTION,
        RunStore(tmp_path / "store"),
        tmp_path / "out",
        ReproductionOptions(scale="smoke", overrides=overrides),
    )
    folder = tmp_path / "out" / "noise-level"
    runs, steps = pd.read_csv(folder / "runs.csv"), pd.read_csv(folder / "measurements.csv")
    summary = pd.read_csv(folder / "summary.csv")
    assert runs[["method", "batch_size", "steps"]].values.tolist() == [["sgd", 128, 11], ["sgd", 512, 2]]
    assert steps.groupby("batch_size")["step"].apply(list).to_dict() == {128: [0, 10], 512: [0, 1]}
    np.testing.assert_allclose(summary["noise_level"], 0.1 * summary["noise_rms"], rtol=1e-15)
    assert "(6 draws in" in report.section
    assert "--set lr=0.1" in report.section


def test_unknown_or_invalid_settings_exit_2(tmp_path: Path):
    arguments = ["reproduce", "noise-level", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
    unknown = CliRunner().invoke(app, [*arguments, "--set", "smoothing.draws=3"])
    assert unknown.exit_code == 2
    assert "smoothing.draws" in unknown.output and "smoothing.pairs" in unknown.output
    without_sgd = CliRunner().invoke(app, [*arguments, "--set", "momenta=[0.5, 0.9]"])
    assert without_sgd.exit_code == 2
    assert "momenta" in without_sgd.output and "must contain 0" in without_sgd.output
