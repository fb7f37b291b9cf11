"""Figures and the Markdown report of a reproduction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from momentumlab import atomic
from momentumlab.claims import Claim

COLORS = {"GD": "#d1495b", "GD+M": "#00798c"}


@dataclass(frozen=True)
class Panel:
    """One subplot: a metrics column against step, optionally with a horizontal reference line."""

    column: str
    title: str
    yscale: str = "linear"
    reference: float | None = None
    reference_label: str = ""


def plot_mean_band(axis: plt.Axes, curves: pd.DataFrame, column: str, label: str, color: str) -> None:
    """Mean over seeds of `column` against step, with the min–max band; `curves` has a 'seed' column."""
    table = curves.dropna(subset=[column]).pivot_table(index="step", columns="seed", values=column)
    marker = "o" if len(table) < 20 else None  # show where sparse measurements (e.g. sharpness) were taken
    axis.plot(table.index, table.mean(axis=1), color=color, label=label, linewidth=1.8, marker=marker, ms=3)
    axis.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2, linewidth=0)


def compare_panels(
    curves: dict[str, pd.DataFrame],
    panels: Sequence[Panel],
    path: Path,
    columns: int = 3,
    title: str = "",
) -> Path:
    """One subplot per panel with every optimizer's curve (steps on a symlog axis); saved as PNG."""
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, panel in zip(axes.flat, panels):
        for label, frame in curves.items():
            if panel.column in frame and frame[panel.column].notna().any():
                plot_mean_band(axis, frame, panel.column, label, COLORS.get(label))
        if panel.reference is not None:
            axis.axhline(
                panel.reference, color="gray", linestyle="--", linewidth=1, label=panel.reference_label
            )
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel("step")
        axis.set_xscale("symlog", linthresh=10)
        axis.set_xlim(left=0)
        axis.set_yscale(panel.yscale)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def save_figure(figure: plt.Figure, path: Path, dpi: int = 120) -> Path:
    """Lay out `figure`, write it as a PNG atomically, close it, and return `path`."""
    figure.tight_layout()
    atomic.atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=dpi))
    plt.close(figure)
    return path


def claims_table(claims: Sequence[Claim]) -> str:
    """Markdown table of claims with their measured values, verdicts and what each tests."""
    lines = ["| claim | measured | 95% interval | threshold | verdict | tests |", "|---|---|---|---|---|---|"]
    verdicts = {"passed": "PASSED", "failed": "**FAILED**", "not resolved": "*not resolved*"}
    for claim in claims:
        interval = "—" if claim.interval is None else f"[{claim.interval[0]:.4g}, {claim.interval[1]:.4g}]"
        lines.append(
            f"| {claim.statement} (`{claim.id}`) | {claim.measured:.4g} | {interval} | {claim.comparison} "
            f"{claim.threshold:.4g} | {verdicts[claim.verdict]} | {claim.reference} |"
        )
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """`frame` as a Markdown table; `formats` maps a column to a format spec (e.g. ".4g")."""
    formats = formats or {}

    def cell(column: str, value: object) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "—"
        return format(value, formats[column]) if column in formats else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(frame.columns, row)) + " |")
    return "\n".join(lines)


def write_report(path: Path, title: str, sections: Sequence[str]) -> Path:
    """Write the report's Markdown atomically."""
    atomic.write_text(path, f"# {title}\n\n" + "\n\n".join(sections).rstrip() + "\n")
    return path
