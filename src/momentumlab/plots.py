"""Figures of stored runs and sweep results (`momentumlab plot`), without writing matplotlib.

Runs come as a table, one row per run: its id, status, every config field (dotted) and its final logged
row — a sweep's result table, or the same table built from run ids. From it:

- curves: logged columns against the step, one curve per group of runs (the values of chosen config
  fields; by default every field the runs differ in except the seed), the mean over the group's runs
  with a min–max band;
- a heat map: the final value of a column over two config fields, the mean over each cell's runs
  (usually the seeds).

Each plotting function returns the tidy table it drew, so what a figure shows can be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from momentumlab import atomic
from momentumlab.config import ConfigError
from momentumlab.runs import FINISHED, RunRecord
from momentumlab.store import RUN_ID_PREFIX, RunStore, RunStoreError
from momentumlab.sweep import PER_NEURON, load_result, result_table, varied_fields

FIGURE_FORMATS = (".png", ".pdf", ".svg")
BOOKKEEPING = ("run_id", "status", "diverged_at", "seconds")  # result-table columns that are not data


def run_table(sources: Sequence[str], store: RunStore) -> tuple[pd.DataFrame, list[str]]:
    """One row per finished run named by `sources`: run ids (or unique prefixes) and sweep results (an
    output folder or its results.csv/.parquet); no sources means every run in `store`. Also returns the
    runs left out because they have no results (running or failed), as "id (status)"."""
    tables, run_ids = [], []
    for source in sources:
        path = Path(source)
        if path.exists():
            tables.append(_sweep_result(path))
        elif RUN_ID_PREFIX.fullmatch(source):
            run_ids.append(_resolve(store, source))
        else:
            raise ConfigError(f"{source!r} is neither a sweep result (folder or file) nor a run id")
    if not sources:
        run_ids = [row["run_id"] for row in store.list()]
    if run_ids:
        tables.append(result_table([store.get(run_id).config for run_id in run_ids], store))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(BOOKKEEPING))
    table = table.drop_duplicates("run_id", ignore_index=True)
    finished = table["status"].isin(FINISHED)
    left_out = [f"{row.run_id} ({row.status})" for row in table[~finished].itertuples()]
    if not finished.any():
        raise ConfigError(f"no finished runs to plot (store: {store.root})")
    return table[finished].reset_index(drop=True), left_out


def _sweep_result(path: Path) -> pd.DataFrame:
    """A sweep's result table, its run ids kept as text (read as CSV, an all-digit id became a number)."""
    if path.is_dir() and (path / "results.parquet").is_file():
        return pd.read_parquet(path / "results.parquet")
    if path.is_file() and path.suffix == ".csv":
        return pd.read_csv(path, dtype={"run_id": str})
    return load_result(path)


def _resolve(store: RunStore, run_id: str) -> str:
    try:
        return store.resolve(run_id)
    except RunStoreError as error:
        raise ConfigError(str(error)) from None


def config_fields(table: pd.DataFrame) -> list[str]:
    """The table's config fields: dotted names, and the top-level `kind` and `seed`."""
    return [c for c in table.columns if "." in c or c in ("kind", "seed")]


def _check_fields(table: pd.DataFrame, fields: Sequence[str], option: str) -> None:
    available = config_fields(table)
    for field in fields:
        if field not in available:
            raise ConfigError(
                f"{option} {field!r} is not a config field of these runs; available: {', '.join(available)}"
            )


def select(table: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """The rows of `table` whose config fields have the values of the ``field=value`` conditions (the
    value is read as YAML, as in overrides: ``optimizer.momentum=0.9``, ``train.batch_size=null``)."""
    for condition in conditions:
        field, sep, text = condition.partition("=")
        if not sep:
            raise ConfigError(f"--where {condition!r} must look like field=value")
        _check_fields(table, [field], "--where")
        value = yaml.safe_load(text) if text.strip() else None
        matches = table[field].isna() if value is None else table[field] == value
        if not matches.any():
            present = ", ".join(sorted(map(str, table[field].unique())))
            raise ConfigError(f"no run has {field} = {value!r}; its values among these runs: {present}")
        table = table[matches]
    return table.reset_index(drop=True)


def groups_of(table: pd.DataFrame, group: Sequence[str] | None) -> list[str]:
    """The fields that group runs: `group` (checked), or every field the runs differ in but the seed."""
    if group is None:
        return varied_fields(table)
    _check_fields(table, group, "--group")
    return list(group)


def averaged_fields(table: pd.DataFrame, group: Sequence[str] | None) -> list[str]:
    """Fields other than the seed that differ between runs of one group, when grouped by `group`."""
    return mixed_within(table, groups_of(table, group))


def mixed_within(table: pd.DataFrame, fields: Sequence[str]) -> list[str]:
    """Varied fields (the seed aside) that take several values among runs sharing the values of `fields`
    (a field that follows from them, like optimizer.name from optimizer.momentum in a sweep, does not)."""
    others = [f for f in varied_fields(table) if f not in fields]
    if not fields:
        return others
    groups = table.groupby(list(fields), dropna=False)
    return [f for f in others if (groups[f].nunique(dropna=False) > 1).any()]


def _columns_list(columns: Sequence[str]) -> str:
    shown = [c for c in columns if not PER_NEURON.search(c)]
    hidden = len(columns) - len(shown)
    return ", ".join(shown) + (f" (and {hidden} per-neuron columns *_r<i>)" if hidden else "")


def curves(
    table: pd.DataFrame,
    store: RunStore,
    columns: Sequence[str],
    group: Sequence[str] | None = None,
    x: str = "step",
) -> pd.DataFrame:
    """Each column's mean, min and max over every group's runs at each `x`: a tidy table with the group
    fields, `label`, `column`, `x`, mean, low, high and runs (how many runs had a value there)."""
    fields = groups_of(table, group)
    runs = [store.get(_resolve(store, run_id)) for run_id in table["run_id"]]
    metrics = {run.run_id: run.metrics() for run in runs}
    _check_columns(metrics, [x, *columns])
    labels = _labels(table, fields, runs)
    parts = []
    for column in columns:
        rows = pd.concat(
            [
                pd.DataFrame({"run_id": run_id, x: frame[x], "value": frame[column]})
                for run_id, frame in metrics.items()
            ],
            ignore_index=True,
        ).dropna(subset=["value"])  # a column measured every k-th row is empty in between
        rows = rows.merge(table[["run_id", *fields]], on="run_id").assign(
            label=lambda r: r["run_id"].map(labels)
        )
        statistics = (
            rows.groupby(["label", *fields, x], dropna=False, sort=False)["value"]
            .agg(mean="mean", low="min", high="max", runs="count")
            .reset_index()
        )
        parts.append(statistics.assign(column=column))
    frame = pd.concat(parts, ignore_index=True)
    return frame[[*fields, "label", "column", x, "mean", "low", "high", "runs"]].sort_values(
        ["column", *fields, x], ignore_index=True
    )


def _check_columns(metrics: dict[str, pd.DataFrame], columns: Sequence[str]) -> None:
    for column in columns:
        lacking = [run_id for run_id, frame in metrics.items() if column not in frame]
        if len(lacking) == len(metrics):
            logged = list(dict.fromkeys(c for frame in metrics.values() for c in frame.columns))
            raise ConfigError(
                f"column {column!r} was not logged by these runs; available: {_columns_list(logged)}"
            )
        if lacking:
            raise ConfigError(
                f"column {column!r} was not logged by runs {', '.join(lacking)}: leave them out with --where"
            )


def _labels(table: pd.DataFrame, fields: Sequence[str], runs: Sequence[RunRecord]) -> dict[str, str]:
    """Each run's curve label: its group's field values, or its id when there are no group fields."""
    if not fields:
        label = runs[0].run_id if len(runs) == 1 else f"{len(runs)} runs"
        return {run.run_id: label for run in runs}
    return {
        row["run_id"]: ", ".join(f"{field}={_shown(row[field])}" for field in fields)
        for _, row in table.iterrows()
    }


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_curves(
    table: pd.DataFrame,
    store: RunStore,
    columns: Sequence[str],
    path: Path,
    group: Sequence[str] | None = None,
    x: str = "step",
    log_y: bool = False,
) -> pd.DataFrame:
    """One panel per column, one curve per group (mean, min–max band); saved at `path`. Returns
    :func:`curves`' table."""
    frame = curves(table, store, columns, group, x)
    labels = list(dict.fromkeys(frame["label"]))
    colors = (
        plt.get_cmap("tab10")(np.arange(len(labels)))
        if len(labels) <= 10
        else plt.get_cmap("viridis")(np.linspace(0, 1, len(labels)))
    )
    panels = min(len(columns), 3)
    rows = -(-len(columns) // panels)
    figure, axes = plt.subplots(rows, panels, figsize=(5 * panels, 3.6 * rows), squeeze=False)
    for panel, (axis, column) in enumerate(zip(axes.flat, columns)):
        for label, color in zip(labels, colors):
            curve = frame[(frame["column"] == column) & (frame["label"] == label)]
            marker = "o" if len(curve) < 20 else None  # sparse measurements show where they were taken
            axis.plot(curve[x], curve["mean"], color=color, label=label, marker=marker, ms=3, linewidth=1.6)
            if (curve["runs"] > 1).any():
                axis.fill_between(curve[x], curve["low"], curve["high"], color=color, alpha=0.2, linewidth=0)
        axis.set_title(column, fontsize=10)
        axis.set_xlabel(x)
        axis.set_yscale("log" if log_y else "linear")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(columns) :]:
        axis.axis("off")
    figure.tight_layout()
    # one legend for every panel (the groups are the same), below them: labels can be long
    figure.legend(
        *axes[0, 0].get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(0, 0), fontsize=8
    )
    if (frame["runs"] > 1).any():
        mixed = averaged_fields(table, group)
        note = f"; each curve averages over {', '.join(mixed)}" if mixed else ""
        figure.suptitle(f"mean over each group's runs (band: min–max){note}", fontsize=10)
    save(figure, path)
    return frame


def heatmap(table: pd.DataFrame, column: str, fields: tuple[str, str]) -> pd.DataFrame:
    """The mean of `column` (a run's final value) over the runs in each cell of the two `fields`: a
    tidy table with the two fields, mean, runs and diverged (how many of the cell's runs diverged).

    A diverged run's final value counts like any other (NaN makes its cell's mean NaN). A cell must hold
    the seeds of one setting: other fields that differ within a cell are fixed first (:func:`select`).
    """
    _check_fields(table, fields, "--heatmap")
    if fields[0] == fields[1]:
        raise ConfigError(f"--heatmap {fields[0]},{fields[1]}: give two different fields")
    data = [c for c in table.columns if c not in BOOKKEEPING and c not in config_fields(table)]
    if column not in data:
        raise ConfigError(
            f"column {column!r} is not a final value of these runs; available: {_columns_list(data)}"
        )
    if not pd.api.types.is_numeric_dtype(table[column]):
        raise ConfigError(f"column {column!r} is not numeric")
    mixed = mixed_within(table, fields)
    if mixed:
        listed = "; ".join(f"{f} ({', '.join(sorted(map(str, table[f].unique())))})" for f in mixed)
        raise ConfigError(
            f"the runs of one cell also differ in {listed}: choose one value each with --where field=value"
        )
    cells = table.assign(diverged=table["status"] == "diverged").groupby(list(fields), dropna=False)
    return cells.agg(
        mean=(column, lambda values: values.mean(skipna=False)),
        runs=(column, "size"),
        diverged=("diverged", "sum"),
    ).reset_index()


def plot_heatmap(table: pd.DataFrame, column: str, fields: tuple[str, str], path: Path) -> pd.DataFrame:
    """The heat map of :func:`heatmap` (first field across, second up, each cell annotated with its mean
    and run count); saved at `path`. Returns the table it drew."""
    frame = heatmap(table, column, fields)
    across, up = fields
    grid = frame.pivot(index=up, columns=across, values="mean")
    runs = frame.pivot(index=up, columns=across, values="runs")
    diverged = frame.pivot(index=up, columns=across, values="diverged")
    figure, axis = plt.subplots(figsize=(1.3 * len(grid.columns) + 3, 0.8 * len(grid.index) + 2.2))
    image = axis.imshow(
        np.ma.masked_invalid(grid.to_numpy(dtype=float)), origin="lower", aspect="auto", cmap="viridis"
    )
    axis.set_facecolor("#dddddd")  # cells without a finite mean
    for i, j in np.ndindex(grid.shape):
        count = runs.iat[i, j]
        if pd.isna(count):
            continue
        text = f"{grid.iat[i, j]:.3g}\nn={int(count)}" + (
            f", {int(diverged.iat[i, j])} div." if diverged.iat[i, j] else ""
        )
        mean = grid.iat[i, j]
        axis.text(j, i, text, ha="center", va="center", fontsize=8, color=_text_color(image, mean))
    axis.set_xticks(range(len(grid.columns)), [_shown(v) for v in grid.columns])
    axis.set_yticks(range(len(grid.index)), [_shown(v) for v in grid.index])
    axis.set_xlabel(across)
    axis.set_ylabel(up)
    figure.colorbar(image, ax=axis, label=column)
    axis.set_title(f"final {column}, mean over each cell's runs", fontsize=10)
    save(figure, path)
    return frame


def _text_color(image: Any, value: float) -> str:
    """Black on light cells, white on dark ones (and black on the gray of a cell without a mean)."""
    if not np.isfinite(value):
        return "black"
    red, green, blue, _ = image.cmap(image.norm(value))
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def save(figure: plt.Figure, path: Path, dpi: int = 120) -> Path:
    """Write `figure` atomically in the format its extension names (.png, .pdf or .svg); close it."""
    check_figure_path(path)
    figure.tight_layout()
    atomic.atomic_write(
        path,
        lambda stream: figure.savefig(stream, format=path.suffix[1:].lower(), dpi=dpi, bbox_inches="tight"),
    )
    plt.close(figure)
    return path


def check_figure_path(path: Path) -> None:
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ConfigError(f"--out {str(path)!r}: the extension must be one of {', '.join(FIGURE_FORMATS)}")
