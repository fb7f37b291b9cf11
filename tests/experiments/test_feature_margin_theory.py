"""`feature-margin-theory` at smoke scale: claims recomputed from its tables, the tables from the stored runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from momentumlab.config import ConfigError
from momentumlab.experiments import feature_margin_theory as theory
from momentumlab.experiments.runner import ReproductionOptions, resolve_settings, run_reproduction
from momentumlab.statistics import bootstrap_mean, paired_difference
from momentumlab.store import RunStore
from momentumlab.train.feature_margin import build_data, build_model

NAME = "feature-margin-theory"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp(NAME)
    store = RunStore(root / "store")
    report = run_reproduction(theory.REPRODUCTION, store, root / "out", ReproductionOptions(scale="smoke"))
    folder = root / "out" / NAME
    claims = {claim["id"]: claim for claim in json.loads((folder / "claims.json").read_text())}
    return store, report, folder, claims


def _main(runs: pd.DataFrame, optimizer: str, mu: float = 0.02, batch_size: str = "full") -> pd.DataFrame:
    rows = runs[(runs["optimizer"] == optimizer) & np.isclose(runs["mu"], mu)]
    return rows[rows["batch_size"].astype(str) == batch_size].sort_values("seed")


def test_studies_follow_the_papers_parametrization():
    settings = theory.Settings()
    studies = settings.studies()
    configs = {
        (labels["optimizer"], labels["mu"], labels["batch_size"], labels["seed"]): c for labels, c in studies
    }
    gd, gdm = configs[("GD", 0.02, "full", 3)], configs[("GD+M", 0.02, "full", 3)]
    assert (gd.optimizer.name, gd.optimizer.lr) == ("gd", 0.02)  # GD: small η (flow)
    assert (gdm.optimizer.name, gdm.optimizer.lr, gdm.optimizer.momentum) == ("ema_momentum", 0.5, 0.99)
    assert (gd.data, gd.model, gd.train) == (gdm.data, gdm.model, gdm.train) and gd.data.n_train == 500
    assert configs[("GD+M, GD's η", 0.02, "full", 3)].optimizer.lr == 0.02
    flow = configs[("GD, η/2", 0.02, "full", 3)]
    assert (flow.optimizer.lr, flow.train.steps) == (0.01, 2 * gd.train.steps)
    sgdm = configs[("SGD+M", 0.02, "10", 3)]
    assert sgdm.train.batch_size == 10 and sgdm.optimizer == gdm.optimizer
    assert configs[("GD", 0.1, "full", 0)].data.small_margin_fraction == 0.1
    # 5 seeds × (2 optimizers × (4 μ + 2 batch sizes) + same-step GD+M + flow check)
    assert len(studies) == len({c for _, c in studies}) == 5 * (2 * 6 + 2)


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="gdm.momentum = 0.0"):
        resolve_settings(
            theory.REPRODUCTION, ReproductionOptions(overrides=("gdm.momentum=0", "gdm.name=gd"))
        )
    with pytest.raises(ConfigError, match="small_margin_fractions"):
        resolve_settings(
            theory.REPRODUCTION, ReproductionOptions(overrides=("small_margin_fractions=[0.02]",))
        )


def test_per_run_quantities_are_the_stored_weights(smoke):
    """α·max_r |c_r(T)|, min over Z2 of y_iΞ_i and max |Ξ| at T and 0, recomputed with plain loops."""
    store, _, folder, _ = smoke
    runs = pd.read_csv(folder / "runs.csv")
    row = _main(runs, "GD").iloc[0]
    run = store.get(row["run_id"])
    data, weight = build_data(run.config), run.load_weights()["weight"].double()
    initial = build_model(run.config).weight.detach().double()
    alpha = run.config.data.large_margin
    assert row["alpha_signal_abs_max"] == pytest.approx(alpha * (weight @ data.feature).abs().max().item())

    def noise(w):
        totals, largest = [], 0.0
        for i in range(len(data.train)):
            projections = [
                (w @ data.train.inputs[i, j]).tolist() for j in range(5) if j != data.train.signal_position[i]
            ]
            totals.append(sum(x**3 for patch in projections for x in patch))
            largest = max(largest, max(abs(x) for patch in projections for x in patch))
        return totals, largest

    totals, largest = noise(weight)
    small = data.train.is_small_margin.tolist()
    labels = data.train.labels.tolist()
    memorization = [y * t for y, t, s in zip(labels, totals, small) if s]
    assert row["memorization_min_small"] == pytest.approx(min(memorization), rel=1e-9)
    assert row["memorized_all_small"] == float(all(m >= 1 for m in memorization))
    assert row["noise_max_final"] == pytest.approx(largest, rel=1e-9)
    assert row["noise_max_initial"] == pytest.approx(noise(initial)[1], rel=1e-9)


def test_claims_are_the_tables_numbers(smoke):
    _, _, folder, claims = smoke
    runs = pd.read_csv(folder / "runs.csv")
    gd, gdm = _main(runs, "GD"), _main(runs, "GD+M")
    assert len(gd) == len(gdm) == 2
    signal = bootstrap_mean(gd["alpha_signal_abs_max"].tolist())
    assert claims["gd-signal-bounded"]["measured"] == pytest.approx(signal.mean)
    assert claims["gd-signal-bounded"]["interval"] == pytest.approx([signal.low, signal.high])
    assert claims["gd-signal-bounded"]["threshold"] == pytest.approx(math.log(30))
    gap = claims["gdm-minus-gd-small-margin"]
    by_hand = np.mean(gdm["test_accuracy_small"].to_numpy() - gd["test_accuracy_small"].to_numpy())
    assert gap["measured"] == pytest.approx(by_hand) and gap["threshold"] == pytest.approx(0.2)
    assert claims["gdm-signal-reaches-inverse-beta"]["measured"] == pytest.approx(gdm["signal_max"].mean())
    ratio = (gdm["noise_max_final"] / gdm["noise_max_initial"]).mean()
    assert claims["gdm-noise-stays-small"]["measured"] == pytest.approx(ratio)
    gd_high = _main(runs, "GD", 0.1)
    grows = paired_difference((1 - gd_high["test_accuracy"]).tolist(), (1 - gd["test_accuracy"]).tolist())
    assert claims["gd-test-error-grows-with-mu"]["measured"] == pytest.approx(grows.mean)
    gains = {
        size: _main(runs, f"{prefix}D+M", batch_size=size)["test_accuracy_small"].to_numpy()
        - _main(runs, f"{prefix}D", batch_size=size)["test_accuracy_small"].to_numpy()
        for size, prefix in (("full", "G"), ("20", "SG"))
    }
    assert claims["momentum-helps-gd-more-than-sgd"]["measured"] == pytest.approx(
        np.mean(gains["full"] - gains["20"])
    )
    for claim in claims.values():
        assert claim["reference"].startswith("Jelassi & Li (2022)")
        assert claim["interval"] is not None and claim["verdict"] in ("passed", "failed", "not resolved")


def test_momentum_claims_use_the_window_after_the_fit(smoke):
    """T0 = first logged step with c ≥ 1/α; −Ĝ minimal over [T0, T0 + 1/(1−γ)], Ĝ/G at its end."""
    _, report, folder, claims = smoke
    curves = pd.read_csv(folder / "curves.csv")
    alpha, memory = report.settings.data.large_margin, 1 / (1 - report.settings.gdm.momentum)
    lowest, ratios = [], []
    for seed in (0, 1):
        rows = curves[(curves["optimizer"] == "GD+M") & (curves["seed"] == seed)].sort_values("step")
        start = rows.loc[rows["signal_max"] >= 1 / alpha, "step"].iloc[0]
        window = rows[(rows["step"] >= start) & (rows["step"] <= start + memory)]
        assert len(window) >= 2
        lowest.append(min(-window["momentum_signal"]))
        ratios.append(window["momentum_signal"].iloc[-1] / window["gradient_signal"].iloc[-1])
    assert claims["momentum-holds-feature"]["measured"] == pytest.approx(np.mean(lowest))
    assert claims["momentum-holds-feature"]["threshold"] == pytest.approx(0.1 / alpha)
    assert claims["momentum-exceeds-gradient"]["measured"] == pytest.approx(np.mean(ratios))


def test_curves_are_the_runs_rows_in_ema_scale(smoke):
    """GD+M is the EMA rule: its logged Ĝ is already in the EMA scale and the curves keep it as logged."""
    store, _, folder, _ = smoke
    curves, runs = pd.read_csv(folder / "curves.csv"), pd.read_csv(folder / "runs.csv")
    row = _main(runs, "GD+M").iloc[1]
    logged = store.get(row["run_id"]).metrics()
    kept = curves[(curves["optimizer"] == "GD+M") & (curves["seed"] == row["seed"])]
    assert kept["momentum_signal"].tolist() == pytest.approx(logged["momentum_signal"].tolist(), rel=1e-12)
    assert set(curves["optimizer"]) == {"GD", "GD+M", "GD+M, GD's η", "GD, η/2"}


def test_figures_and_report(smoke):
    _, report, folder, _ = smoke
    names = ["training.png", "mu_sweep.png", "batch_size.png", "flow_check.png"]
    assert report.figures == [folder / name for name in names]
    for figure in report.figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert "GD: ηα³σ0 = 0.02·5.29³·0.05 = 0.148" in report.section
    assert "### Power" in report.section and "$" not in report.section.replace("$claims", "")
