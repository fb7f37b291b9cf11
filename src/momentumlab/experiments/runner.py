"""The runner: what every reproduction shares, done once.

Settings come from the reproduction's defaults ← ``--scale smoke`` ← ``--set`` ← ``--seeds``; the
measurement runs (on one thread where the reproduction asks) through the store, which caches its
tables under the hash of the settings; then claims, figures, one CSV per table, ``settings.json`` and
``claims.json`` go to ``OUT/<name>/`` and the report section (header, command, prose with the
claims table) to ``OUT/report.md`` beside every other reproduction's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from string import Template
from typing import Literal

from momentumlab import atomic
from momentumlab.claims import Claim
from momentumlab.config import ConfigError, apply_overrides, flatten, parse_override, validate
from momentumlab.experiments.reproduction import Reproduction, ReproductionSettings, references
from momentumlab.report import claims_table, write_report
from momentumlab.store import RunStore
from momentumlab.threads import single_thread

SMOKE_NOTE = "**Smoke scale**: a tiny version that checks the pipeline; its numbers are not results."


@dataclass(frozen=True)
class ReproductionOptions:
    """What the command line asks of every reproduction it runs."""

    seeds: tuple[int, ...] | None = None  # None: the settings' own seeds
    overrides: tuple[str, ...] = ()  # dotted key=value on the reproduction's settings
    scale: Literal["full", "smoke"] = "full"
    force: bool = False  # recompute a cached measurement


@dataclass(frozen=True)
class ReproductionReport:
    """What a reproduction produced: its settings, claims, report section and figures."""

    name: str
    title: str
    settings: ReproductionSettings
    claims: list[Claim]
    section: str  # Markdown, figure links relative to the report's folder
    figures: list[Path]


def settings_keys(settings: ReproductionSettings) -> list[str]:
    """Every dotted key that ``--set`` can reach in `settings`."""
    return list(flatten(settings.model_dump(mode="json")))


def resolve_settings(reproduction: Reproduction, options: ReproductionOptions) -> ReproductionSettings:
    """The reproduction's settings: defaults (or ``smoke()``), then ``--set``, then ``--seeds``."""
    settings_type = reproduction.settings
    base = settings_type.smoke() if options.scale == "smoke" else settings_type()
    keys = settings_keys(base)
    for text in options.overrides:
        path, _ = parse_override(text)
        key = ".".join(path)
        if not any(known == key or known.startswith(f"{key}.") for known in keys):
            raise ConfigError(
                f"--set {text}: {key} is not a setting of {reproduction.name}; allowed: {', '.join(keys)}"
            )
    raw = apply_overrides(base.model_dump(mode="json"), list(options.overrides))
    if options.seeds is not None:
        if "seeds" not in settings_type.model_fields:
            raise ConfigError(
                f"--seeds {','.join(map(str, options.seeds))}: {reproduction.name} is deterministic and has "
                f"no seeds; allowed settings: {', '.join(keys)}"
            )
        raw["seeds"] = list(options.seeds)
    try:
        return validate(settings_type, raw)
    except ConfigError as error:
        raise ConfigError(f"{reproduction.name}: {error}") from None


def command_line(reproduction: Reproduction, options: ReproductionOptions) -> str:
    """The command that reproduces this section."""
    parts = [f"momentumlab reproduce {reproduction.name}"]
    if options.scale == "smoke":
        parts.append("--scale smoke")
    if options.seeds is not None:
        parts.append(f"--seeds {','.join(map(str, options.seeds))}")
    parts += [f"--set {override}" for override in options.overrides]
    return " ".join(parts)


def run_reproduction(
    reproduction: Reproduction, store: RunStore, out_dir: Path, options: ReproductionOptions
) -> ReproductionReport:
    """Measure (or load the cached measurement), then write claims, figures, tables and the section."""
    settings = resolve_settings(reproduction, options)

    def measure():
        threads = single_thread() if reproduction.single_thread else contextlib.nullcontext()
        with threads:
            return reproduction.measure(settings, store)

    tables = store.measurement(reproduction.name, settings, measure, force=options.force)
    claims = [replace(claim(settings, tables), reference=references(claim)) for claim in reproduction.claims]
    folder = out_dir / reproduction.name
    folder.mkdir(parents=True, exist_ok=True)
    figures = reproduction.figures(settings, tables, folder)
    for name, table in tables.items():
        atomic.write_text(folder / f"{name}.csv", table.to_csv(index=False))
    atomic.write_json(folder / "settings.json", settings.model_dump(mode="json"))
    atomic.write_json(folder / "claims.json", [claim.to_json() for claim in claims])
    prose = Template(reproduction.prose).substitute(
        reproduction.report(settings, tables),
        name=reproduction.name,
        claims="### Claims\n\n" + claims_table(claims),
    )
    header = f"## {reproduction.title}\n\nCommand: `{command_line(reproduction, options)}`."
    smoke = [SMOKE_NOTE] if options.scale == "smoke" else []
    section = "\n\n".join([header, *smoke, prose.strip()])
    return ReproductionReport(reproduction.name, reproduction.title, settings, claims, section, figures)


def reproduce(
    reproductions: Sequence[Reproduction], store: RunStore, out_dir: Path, options: ReproductionOptions
) -> list[ReproductionReport]:
    """Run the reproductions; write each one's files under out_dir/NAME and one report.md + claims.json.

    Every reproduction's settings are resolved first, so a bad ``--set`` fails before anything runs.
    """
    for reproduction in reproductions:
        resolve_settings(reproduction, options)
    reports = [run_reproduction(r, store, out_dir, options) for r in reproductions]
    claims = [claim for report in reports for claim in report.claims]
    overview = "\n".join(f"- `{report.name}` ({report.title}): {_tally(report.claims)}" for report in reports)
    write_report(
        out_dir / "report.md",
        "momentumlab reproduction report",
        [f"{_tally(claims)}.\n\n{overview}", *(report.section for report in reports)],
    )
    atomic.write_json(
        out_dir / "claims.json", {report.name: [c.to_json() for c in report.claims] for report in reports}
    )
    return reports


def _tally(claims: Sequence[Claim]) -> str:
    """ "7/9 claims reproduced" (", 1 not resolved" when an interval straddles its threshold)."""
    passed = sum(claim.verdict == "passed" for claim in claims)
    open_ = sum(claim.verdict == "not resolved" for claim in claims)
    return f"{passed}/{len(claims)} claims reproduced" + (f", {open_} not resolved" if open_ else "")
