"""The `diffusion` reproduction at smoke scale: claims recomputed from the per-run tables, the old code's
smoke numbers, closed forms, and `--set`/`--seeds` reaching the measurement."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from momentumlab.config import ConfigError
from momentumlab.experiments import diffusion
from momentumlab.experiments.runner import ReproductionOptions, run_reproduction, settings_keys
from momentumlab.store import RunStore

SMALL = ("runs=30", "stationary_runs=10", "records=10", "horizon=1.5", "burn_in=1", "stationary_length=1")


def _run(tmp_path: Path, *overrides: str, seeds: tuple[int, ...] | None = None):
    options = ReproductionOptions(seeds=seeds, overrides=overrides, scale="smoke")
    return run_reproduction(diffusion.REPRODUCTION, RunStore(tmp_path / "store"), tmp_path / "out", options)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    """The smoke reproduction, its output folder and its tables as written (CSV)."""
    tmp_path = tmp_path_factory.mktemp("diffusion")
    result = _run(tmp_path)
    folder = tmp_path / "out" / "diffusion"
    tables = {
        name: _read(folder, name)
        for name in (
            "escape",
            "escape_runs",
            "paths",
            "spread",
            "spread_runs",
            "annealing",
            "annealing_paths",
        )
    }
    return result, folder, tables


def _read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{name}.csv")


def _lower_median(values: np.ndarray) -> float:
    return float(np.sort(values)[(len(values) - 1) // 2])


def test_smoke_claims_are_the_old_codes_numbers(smoke):
    """The same draws in the same order as before the redesign (`test_diffusion_smoke`'s settings)."""
    result, _, _ = smoke
    measured = {claim.id: claim.measured for claim in result.claims[:5]}
    assert measured == pytest.approx(
        {
            "escape-faster-with-momentum": 0.5058043117744611,
            "msgd-escape-matches-sgd-at-effective-step": 0.37209302325581395,
            "sde-escape-matches-msgd": 0.31864406779661036,
            "stationary-spread-grows-with-momentum": 2.078343198617392,
            "stationary-spread-matches-prediction": 0.029877024787148265,
        },
        rel=1e-12,
    )
    claims = {claim.id: claim for claim in result.claims}
    assert claims["escape-faster-with-momentum"].detail == {"0.0": 603.0, "0.5": 305.0, "0.9": 59.0}
    assert all(claim.reference.startswith("Liu, Chen, Zhou & Zhao (2018)") for claim in result.claims)
    assert len(result.claims) == 8  # the five above, then the three annealing claims


def test_claims_recomputed_from_the_per_run_tables(smoke):
    """Lower medians of the escape steps and means of the spreads, from one row per run, give the claims."""
    result, _, tables = smoke
    runs, spread = tables["escape_runs"], tables["spread_runs"]
    assert len(runs) == 100 * 8 and len(spread) == 50 * 6  # msgd, sde at 3 μ; sgd at 2

    def median(kind: str, mu: float) -> float:
        return _lower_median(runs.query("kind == @kind and momentum == @mu")["escape_step"].to_numpy())

    def mean_spread(kind: str, mu: float) -> float:
        return float(spread.query("kind == @kind and momentum == @mu")["spread"].mean())

    claims = {claim.id: claim.measured for claim in result.claims}
    assert claims["escape-faster-with-momentum"] == pytest.approx(
        max(median("msgd", 0.5) / median("msgd", 0.0), median("msgd", 0.9) / median("msgd", 0.5))
    )
    assert claims["msgd-escape-matches-sgd-at-effective-step"] == pytest.approx(
        max(abs(median("msgd", mu) / median("sgd", mu) - 1) for mu in (0.5, 0.9))
    )
    assert claims["sde-escape-matches-msgd"] == pytest.approx(
        max(abs(median("sde", mu) / median("msgd", mu) - 1) for mu in (0.0, 0.5, 0.9))
    )
    assert claims["stationary-spread-grows-with-momentum"] == pytest.approx(
        min(
            mean_spread("msgd", 0.5) / mean_spread("msgd", 0.0),
            mean_spread("msgd", 0.9) / mean_spread("msgd", 0.5),
        )
    )
    escape = tables["escape"].set_index(["kind", "momentum"])
    steps = runs.query("kind == 'sde' and momentum == 0.5")["escape_step"].to_numpy()
    assert escape.loc[("sde", 0.5), ["lower_quartile", "upper_quartile"]].tolist() == pytest.approx(
        np.quantile(steps, [0.25, 0.75])
    )
    assert escape.loc[("msgd", 0.9), "never_escaped"] == pytest.approx(
        np.mean(np.isinf(runs.query("kind == 'msgd' and momentum == 0.9")["escape_step"].to_numpy()))
    )


def test_predictions_and_the_ode_path_are_the_closed_forms(smoke):
    """Σ_j ηλ1λj/(2(λ1−λj)(1−μ)) and the ODE's start a(0) = u0² = (median |Z|)² with
    Var Z = ηλ1λ2/(2(λ1−λ2)(1−μ)), by hand at η = 0.01."""
    result, _, tables = smoke
    eigenvalues = diffusion.Settings().eigenvalues
    detail = next(c for c in result.claims if c.id == "stationary-spread-matches-prediction").detail
    for mu in (0.0, 0.5, 0.9):
        by_hand = sum(0.01 * 1.0 * lj / (2 * (1.0 - lj) * (1 - mu)) for lj in eigenvalues[1:])
        assert detail[str(mu)]["predicted"] == pytest.approx(by_hand, rel=1e-6)  # float32 λ
        ode = tables["paths"].query("kind == 'ode' and momentum == @mu")
        u0 = 0.6744897501960817 * math.sqrt(0.01 * 0.5 / (2 * 0.5 * (1 - mu)))
        assert ode["mean_alignment"].iloc[0] == pytest.approx(u0**2, rel=1e-6)
        assert ode["mean_alignment"].iloc[-1] > 0.99  # the ODE reaches e1 within the horizon
        msgd = tables["paths"].query("kind == 'msgd' and momentum == @mu")
        assert ode["step"].tolist() == msgd["step"].tolist()
        assert msgd["mean_alignment"].iloc[0] == 0.0  # every run starts exactly at e2


def test_annealing_claims_are_the_paired_ratios_of_the_table(smoke):
    """Each annealing claim is the mean over seeds of a variant's final spread over SGD's of the same seed,
    with the bootstrap interval of those ratios; the smoke's numbers, and the predicted levels."""
    result, _, tables = smoke
    finals = tables["annealing"].pivot(index="seed", columns="variant", values="final_spread")
    assert list(finals.index) == [0, 1, 2] and len(tables["annealing"]) == 12
    claims = {claim.id: claim for claim in result.claims}
    expected = {
        "constant-momentum-hurts-final-accuracy": ("constant", 9.443794860292217, "passed"),
        "step-annealed-restores-final-accuracy": ("step annealed", 1.0996827065605415, "passed"),
        "momentum-annealed-restores-final-accuracy": ("momentum annealed", 1.0314813517720725, "passed"),
    }
    for claim_id, (variant, measured, verdict) in expected.items():
        ratios = (finals[variant] / finals["SGD"]).to_numpy()
        claim = claims[claim_id]
        assert claim.measured == pytest.approx(ratios.mean(), rel=1e-12)
        assert claim.measured == pytest.approx(measured, rel=1e-5)
        resampled = ratios[np.random.default_rng(0).integers(0, 3, (10_000, 3))].mean(1)
        assert claim.interval == pytest.approx(tuple(np.quantile(resampled, [0.025, 0.975])), rel=1e-12)
        assert claim.verdict == verdict and claim.detail["seeds"] == 3
    # annealed: SGD's level Σ ηλ1λj/(2(λ1 − λj)); constant: 1/(1 − μ) = 10 times it
    assert claims["constant-momentum-hurts-final-accuracy"].detail[
        "predicted ratio (constant: 1/(1−μ); annealed: 1)"
    ] == pytest.approx(10.0)
    # the anneal at ⌈3·(1 − 0.9)/(2·0.01·0.5)⌉ = 30 steps, 50 runs per seed
    assert "step 30" in result.section and "50 runs start at e1" in result.section


def test_smoke_writes_figures_and_the_report(smoke):
    result, folder, _ = smoke
    for name in ("escape_times.png", "alignment_paths.png", "stationary_spread.png", "annealing.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(diffusion/{name})" in result.section
    assert "| 0.9 | 59 [43, 82], 1.0% never | 43 [33, 65], 1.0% never |" in result.section
    assert "| 0.5 | 2.642e-02 ± 1.5e-03 | 2.595e-02 ± 1.9e-03 | 2.566e-02 | +3.0% |" in result.section
    assert json.loads((folder / "settings.json").read_text())["lr"] == 0.01


def test_set_and_seeds_reach_the_measurement(tmp_path: Path):
    """Every field is a --set key; --set momenta/runs/lr and --seeds change what is simulated."""
    assert set(settings_keys(diffusion.Settings())) == set(diffusion.Settings.model_fields)
    result = _run(tmp_path, *SMALL, "momenta=[0.2, 0.6]", "lr=0.02", seeds=(1, 2))
    runs = _read(tmp_path / "out" / "diffusion", "escape_runs")
    assert sorted(set(runs["momentum"])) == [0.2, 0.6]
    assert runs.groupby(["kind", "momentum", "seed"]).size().eq(30).all()
    assert sorted(set(runs["seed"])) == [1, 2]
    assert result.settings.lr == 0.02
    detail = next(c for c in result.claims if c.id == "stationary-spread-matches-prediction").detail
    assert detail["0.2"]["predicted"] == pytest.approx(
        sum(0.02 * lj / (2 * (1.0 - lj) * 0.8) for lj in diffusion.Settings().eigenvalues[1:]), rel=1e-6
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=5", "train.steps is not a setting of diffusion"),
        ("momenta=[0.5, 0.0]", "momenta must increase"),
        ("momenta=[0.0, 1.0]", "momenta.1"),
        ("eigenvalues=[1.0, 1.0, 0.5]", "λ1 > λ2"),
        ("lr=0", "lr = 0"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        _run(tmp_path, override)
