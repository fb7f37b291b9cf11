"""What every reproduction takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from momentumlab.claims import Claim


@dataclass(frozen=True)
class ReproductionOptions:
    seeds: tuple[int, ...] | None = None  # None: the reproduction's default seeds
    overrides: tuple[str, ...] = ()  # dotted key=value applied to every run's config
    progress: bool = False
    scale: Literal["full", "smoke"] = "full"  # smoke: a tiny subset and few epochs, for CI and a quick look
    data_dir: Path | None = None  # where downloaded datasets live (None: $MOMENTUMLAB_DATA)


@dataclass
class ReproductionResult:
    name: str
    title: str
    claims: list[Claim]
    section: str  # Markdown, figure links relative to the report's folder
    figures: list[Path] = field(default_factory=list)


def ignored_overrides_note(options: ReproductionOptions) -> str:
    """A sentence for the report of a reproduction that trains no RunConfig, saying `--set` was ignored."""
    if not options.overrides:
        return ""
    return (
        f" The overrides {list(options.overrides)} configure training runs, which this reproduction does "
        "not use; they were ignored."
    )
