"""The shape of every reproduction: typed settings, a measurement, claims, figures and report prose.

A reproduction module declares one :class:`Reproduction`:

- ``Settings`` (a :class:`ReproductionSettings`): every size, seed and optimizer setting it measures
  with, and ``smoke()``, a variant small enough for CI and a quick look;
- ``measure(settings, store) -> tables``: the measurement, as named DataFrames; runs train through
  the store, and the runner caches the tables under the hash of the settings;
- ``claims``: functions ``(settings, tables) -> Claim``, each with a docstring whose ``References:``
  paragraph cites the paper and the equation, theorem or figure it tests;
- ``figures(settings, tables, out_dir) -> [paths]``: PNGs drawn from the tables alone;
- ``report(settings, tables) -> {placeholder: text}``: the values of the prose template, a Markdown
  file beside the module (``$claims`` and ``$name`` are filled by the runner).

Everything else (settings from defaults, ``--scale smoke``, ``--set`` and ``--seeds``; threads; the
output folder; CSVs; ``claims.json``; the claims table and the section header) is the runner's
(:mod:`momentumlab.experiments.runner`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import pandas as pd
from pydantic import Field
from typing_extensions import Self

from momentumlab.claims import Claim
from momentumlab.config import StrictModel
from momentumlab.store import RunStore

Tables = dict[str, pd.DataFrame]
Seeds = Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(min_length=1, description="repeated runs")]


class ReproductionSettings(StrictModel):
    """Base of every reproduction's settings. A reproduction with repeated random runs has a field
    ``seeds: Seeds``; `smoke()` returns the small variant that ``--scale smoke`` starts from."""

    @classmethod
    def smoke(cls) -> Self:
        return cls()


S = TypeVar("S", bound=ReproductionSettings)
ClaimFunction = Callable[[Any, Tables], Claim]


@dataclass(frozen=True)
class Reproduction(Generic[S]):
    """One reproduction, declared: see the module docstring for what each part does."""

    name: str
    title: str
    settings: type[S]
    measure: Callable[[S, RunStore], Tables]
    claims: Sequence[ClaimFunction]
    figures: Callable[[S, Tables, Path], list[Path]]
    report: Callable[[S, Tables], dict[str, str]]
    prose: str
    cpu_sized: bool = True  # runs in minutes on a laptop CPU; `reproduce` with no name runs these
    single_thread: bool = False  # tiny tensors: one thread is faster than a contended pool


def read_prose(module_file: str, name: str | None = None) -> str:
    """The Markdown template beside a reproduction module (``<module>.md``, or ``<name>.md`` there)."""
    path = Path(module_file)
    return (path.with_suffix(".md") if name is None else path.with_name(f"{name}.md")).read_text()


def references(function: ClaimFunction) -> str:
    """The ``References:`` paragraph of a claim function's docstring (empty when it has none)."""
    doc = inspect.getdoc(function) or ""
    _, found, rest = doc.partition("References:")
    return " ".join(rest.split()) if found else ""
