"""The runner: settings from defaults ← smoke ← --set ← --seeds, cached measurements, files and the section."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import Field

from momentumlab.claims import Claim
from momentumlab.config import ConfigError, StrictModel
from momentumlab.experiments import REPRODUCTIONS, select
from momentumlab.experiments.reproduction import Reproduction, ReproductionSettings, Seeds, Tables, references
from momentumlab.experiments.runner import (
    ReproductionOptions,
    command_line,
    reproduce,
    resolve_settings,
    run_reproduction,
)


class Grid(StrictModel):
    points: int = Field(4, ge=1)
    scale: float = 1.0


class Settings(ReproductionSettings):
    seeds: Seeds = (0, 1)
    grid: Grid = Grid()

    @classmethod
    def smoke(cls) -> Settings:
        return cls(seeds=(0,), grid=Grid(points=2))


CALLS: list[Settings] = []


def measure(settings: Settings, store) -> Tables:
    CALLS.append(settings)
    rows = [
        {"seed": s, "x": i * settings.grid.scale} for s in settings.seeds for i in range(settings.grid.points)
    ]
    return {"points": pd.DataFrame(rows)}


def total_is_positive(settings: Settings, tables: Tables) -> Claim:
    """The sum of x is positive.

    References: Nobody (2024), Eq. (1) — x is positive."""
    return Claim("total-positive", "sum of x > 0", float(tables["points"]["x"].sum()), 0.0, ">")


def figures(settings: Settings, tables: Tables, out_dir: Path) -> list[Path]:
    return []


def report(settings: Settings, tables: Tables) -> dict[str, str]:
    return {"count": str(len(tables["points"]))}


TOY = Reproduction(
    name="toy",
    title="A toy reproduction",
    settings=Settings,
    measure=measure,
    claims=(total_is_positive,),
    figures=figures,
    report=report,
    prose="$count points.\n\n$claims\n\n![x]($name/x.png)",
)


class Deterministic(ReproductionSettings):
    steps: int = 3


DETERMINISTIC = Reproduction("fixed", "Deterministic", Deterministic, measure, (), figures, report, "")


def test_settings_come_from_defaults_then_smoke_then_set_then_seeds():
    assert resolve_settings(TOY, ReproductionOptions()) == Settings()
    assert resolve_settings(TOY, ReproductionOptions(scale="smoke")) == Settings.smoke()
    options = ReproductionOptions(scale="smoke", overrides=("grid.scale=2.5", "seeds=[4, 5]"), seeds=(7,))
    assert resolve_settings(TOY, options) == Settings(seeds=(7,), grid=Grid(points=2, scale=2.5))
    whole_section = ReproductionOptions(overrides=("grid={points: 9}",))
    assert resolve_settings(TOY, whole_section).grid == Grid(points=9)


def test_an_unknown_setting_exits_with_the_allowed_keys():
    with pytest.raises(ConfigError) as caught:
        resolve_settings(TOY, ReproductionOptions(overrides=("grid.pionts=3",)))
    assert str(caught.value) == (
        "--set grid.pionts=3: grid.pionts is not a setting of toy; allowed: seeds, grid.points, grid.scale"
    )


def test_an_invalid_setting_names_the_reproduction_field_and_range():
    with pytest.raises(
        ConfigError, match=r"toy: invalid config:\n  grid.points = 0: Input should be greater"
    ):
        resolve_settings(TOY, ReproductionOptions(overrides=("grid.points=0",)))
    with pytest.raises(ConfigError, match=r"seeds = \[\]: .*at least 1 item"):
        resolve_settings(TOY, ReproductionOptions(overrides=("seeds=[]",)))
    with pytest.raises(ConfigError, match=r"seeds.0 = -1: Input should be greater than or equal to 0"):
        resolve_settings(TOY, ReproductionOptions(seeds=(-1,)))


def test_seeds_for_a_deterministic_reproduction_are_refused():
    with pytest.raises(
        ConfigError, match="--seeds 1,2: fixed is deterministic and has no seeds; allowed settings: steps"
    ):
        resolve_settings(DETERMINISTIC, ReproductionOptions(seeds=(1, 2)))


def test_the_command_line_reproduces_the_options():
    options = ReproductionOptions(scale="smoke", seeds=(1, 2), overrides=("grid.points=3",))
    assert (
        command_line(TOY, options)
        == "momentumlab reproduce toy --scale smoke --seeds 1,2 --set grid.points=3"
    )


def test_a_measurement_is_cached_under_its_settings_and_forced_anew(tmp_path, store):
    CALLS.clear()
    first = run_reproduction(TOY, store, tmp_path / "out", ReproductionOptions())
    again = run_reproduction(TOY, store, tmp_path / "out", ReproductionOptions())
    assert len(CALLS) == 1  # the second call read the stored tables
    assert again.claims == first.claims and first.claims[0].measured == 2 * (0 + 1 + 2 + 3)
    (folder,) = (store.root / "measurements" / "toy").iterdir()
    assert json.loads((folder / "settings.json").read_text()) == Settings().model_dump(mode="json")
    assert json.loads((folder / "status.json").read_text())["tables"] == ["points"]
    assert "torch" in json.loads((folder / "environment.json").read_text())["packages"]
    run_reproduction(TOY, store, tmp_path / "out", ReproductionOptions(overrides=("grid.scale=2",)))
    assert len(CALLS) == 2  # other settings, another measurement
    run_reproduction(TOY, store, tmp_path / "out", ReproductionOptions(force=True))
    assert len(CALLS) == 3


def test_files_and_section_of_a_reproduction(tmp_path, store):
    report = run_reproduction(TOY, store, tmp_path, ReproductionOptions(scale="smoke"))
    folder = tmp_path / "toy"
    pd.testing.assert_frame_equal(
        pd.read_csv(folder / "points.csv"), measure(Settings.smoke(), None)["points"]
    )
    assert json.loads((folder / "settings.json").read_text())["grid"] == {"points": 2, "scale": 1.0}
    (claim,) = json.loads((folder / "claims.json").read_text())
    assert (claim["measured"], claim["passed"]) == (1.0, True)
    assert claim["reference"] == "Nobody (2024), Eq. (1) — x is positive."
    assert report.section.startswith(
        "## A toy reproduction\n\nCommand: `momentumlab reproduce toy --scale smoke`."
    )
    assert "**Smoke scale**" in report.section and "2 points." in report.section
    assert (
        "| sum of x > 0 (`total-positive`) | 1 | — | > 0 | PASSED | Nobody (2024), Eq. (1)" in report.section
    )
    assert "![x](toy/x.png)" in report.section


def test_reproduce_writes_one_report_and_checks_every_setting_first(tmp_path, store):
    CALLS.clear()
    with pytest.raises(ConfigError, match="no seeds"):
        reproduce([TOY, DETERMINISTIC], store, tmp_path, ReproductionOptions(seeds=(1,)))
    assert CALLS == []  # nothing ran
    reports = reproduce([TOY], store, tmp_path, ReproductionOptions(scale="smoke"))
    assert json.loads((tmp_path / "claims.json").read_text())["toy"][0]["id"] == "total-positive"
    assert (tmp_path / "report.md").read_text().startswith("# momentumlab reproduction report\n\n1/1 claims")
    assert reports[0].settings == Settings.smoke()


def test_every_registered_claim_cites_its_source():
    for reproduction in REPRODUCTIONS.values():
        for claim in reproduction.claims:
            assert references(claim), f"{reproduction.name}: {claim.__name__} has no References: paragraph"


def test_every_registered_reproduction_has_a_valid_smoke_variant():
    for reproduction in REPRODUCTIONS.values():
        smoke = reproduction.settings.smoke()
        assert smoke != reproduction.settings(), reproduction.name
        assert (
            reproduction.settings.model_validate(smoke.model_dump(mode="json")) == smoke
        )  # --set round trip


def test_select_names_the_allowed_reproductions():
    assert [r.name for r in select([])] == [r.name for r in REPRODUCTIONS.values() if r.cpu_sized]
    with pytest.raises(ConfigError, match="unknown reproduction 'nope'; allowed: feature-margin"):
        select(["nope"])
