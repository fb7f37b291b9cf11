"""The registry of reproductions and the runner that writes their combined report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from momentumlab import atomic
from momentumlab.config import ConfigError
from momentumlab.experiments import (
    cifar_momentum,
    cifar_small_margin,
    diffusion,
    digits_small_margin,
    feature_margin,
    feature_margin_phase,
    flatness_toy,
    heavy_ball_flow,
    momentum_variance,
    noise_level,
    teacher_student,
)
from momentumlab.experiments.base import ReproductionOptions, ReproductionResult
from momentumlab.report import write_report
from momentumlab.store import RunStore


@dataclass(frozen=True)
class Reproduction:
    name: str
    title: str
    cpu_sized: bool  # runs in minutes on a laptop CPU; `reproduce` with no name runs these
    run: Callable[[RunStore, Path, ReproductionOptions], ReproductionResult]


MODULES = (
    feature_margin,
    feature_margin_phase,
    heavy_ball_flow,
    flatness_toy,
    momentum_variance,
    diffusion,
    noise_level,
    digits_small_margin,
    cifar_momentum,
    cifar_small_margin,
    teacher_student,
)
REPRODUCTIONS = {
    module.NAME: Reproduction(module.NAME, module.TITLE, getattr(module, "CPU_SIZED", True), module.run)
    for module in MODULES
}


def select(names: Sequence[str]) -> list[Reproduction]:
    """The reproductions named (all CPU-sized ones when none is)."""
    if not names:
        return [r for r in REPRODUCTIONS.values() if r.cpu_sized]
    unknown = [name for name in names if name not in REPRODUCTIONS]
    if unknown:
        raise ConfigError(f"unknown reproduction {unknown[0]!r}; allowed: {', '.join(REPRODUCTIONS)}")
    return [REPRODUCTIONS[name] for name in names]


def reproduce(
    names: Sequence[str], store: RunStore, out_dir: Path, options: ReproductionOptions
) -> list[ReproductionResult]:
    """Run the reproductions; write each one's files under out_dir/NAME and one report.md + claims.json."""
    results = [r.run(store, out_dir / r.name, options) for r in select(names)]
    passed = sum(claim.passed for result in results for claim in result.claims)
    total = sum(len(result.claims) for result in results)
    overview = "\n".join(
        f"- `{result.name}` ({result.title}): {sum(c.passed for c in result.claims)}/{len(result.claims)} "
        "claims reproduced"
        for result in results
    )
    write_report(
        out_dir / "report.md",
        "momentumlab reproduction report",
        [f"{passed}/{total} claims reproduced.\n\n{overview}", *(result.section for result in results)],
    )
    atomic.write_json(out_dir / "claims.json", {r.name: [c.to_json() for c in r.claims] for r in results})
    return results
