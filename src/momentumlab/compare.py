"""Fair comparison of optimizers from a sweep: each at its best setting, chosen on validation data.

Runs are grouped by optimizer family — GD or SGD (full batch or minibatches), plus the momentum rule
when the momentum is nonzero (any rule with zero momentum *is* (S)GD). The other varied fields that
are not the optimizer's (data, model, training length, ...) are not hyperparameters to choose: each of
their settings gets its own table (`by` chooses them instead). Within a table and family, a setting is
the values of the varied optimizer fields; its score is the mean of a validation metric over seeds, in
the metric's direction (loss and error: lower is better; accuracy: higher; others: `maximize` says),
and a setting with a diverged or failed seed ranks below every setting without one. The chosen
setting's test metrics are reported as mean ± std over its seeds. Test metrics never enter the choice.
"""

from __future__ import annotations

import math

import pandas as pd

from momentumlab.config import ConfigError
from momentumlab.sweep import varied_fields

FAMILY_FIELDS = ("optimizer.name", "train.batch_size")  # what the family already says


def optimizer_family(row: pd.Series) -> str:
    """'gd', 'sgd', 'gd+ema_momentum', 'sgd+heavy_ball', … ('+momentum' for a run kind whose optimizer
    section has a momentum but no rule name, e.g. `torch.optim.SGD`'s)."""
    stochastic = "train.batch_size" in row and pd.notna(row["train.batch_size"])
    base = "sgd" if stochastic else "gd"
    return (
        base if row.get("optimizer.momentum", 0) == 0 else f"{base}+{row.get('optimizer.name', 'momentum')}"
    )


def metric_direction(metric: str, maximize: bool | None) -> bool:
    """Whether a higher `metric` is better: `maximize` when given, else known from its name."""
    if maximize is not None:
        return maximize
    if "loss" in metric or "error" in metric:
        return False
    if "accuracy" in metric:
        return True
    raise ConfigError(
        f"metric = {metric!r}: whether higher or lower is better is unknown; allowed: --maximize or --minimize"
    )


def _check_metric(table: pd.DataFrame, metric: str) -> None:
    if "status" not in table:
        raise ConfigError(
            "the sweep result has no status column; allowed: a table written by `momentumlab sweep`"
        )
    if metric.startswith("test"):
        raise ConfigError(
            f"metric = {metric!r}: hyperparameters are never chosen on test; allowed: val_* or train_*"
        )
    if metric not in table:
        allowed = ", ".join(c for c in table.columns if c.startswith(("val_", "train_")))
        if not any(c.startswith("val_") for c in table.columns):
            allowed += " (the sweep has no validation metric: give its data a validation split)"
        raise ConfigError(f"metric = {metric!r} is not in the sweep result; allowed: {allowed}")
    complete = table[table["status"] == "complete"]
    if complete.empty:
        raise ConfigError(
            f"no run of the sweep completed ({', '.join(sorted(set(table['status'])))}): there is no best "
            "setting; allowed: a sweep with completed runs"
        )
    if pd.to_numeric(complete[metric], errors="coerce").isna().all():
        raise ConfigError(
            f"metric = {metric!r} is blank for every completed run (no validation split?); allowed: a metric "
            "the runs measured"
        )


def compare(
    table: pd.DataFrame,
    metric: str = "val_accuracy",
    maximize: bool | None = None,
    by: list[str] | None = None,
) -> pd.DataFrame:
    """One row per (group, optimizer family): its best setting by mean `metric`, and test metrics there.

    The groups are the settings of `by` (default: every varied field outside the optimizer); they lead
    the columns and are listed in ``result.attrs["groups"]``."""
    _check_metric(table, metric)
    higher_is_better = metric_direction(metric, maximize)
    varied = varied_fields(table)
    if by is None:
        groups = [f for f in varied if not f.startswith("optimizer.") and f not in FAMILY_FIELDS]
    else:
        unknown = [f for f in by if f not in table]
        if unknown:
            raise ConfigError(
                f"--by {', '.join(unknown)}: not a field of the sweep; allowed: {', '.join(varied) or '(none)'}"
            )
        groups = list(by)
    settings = [f for f in varied if f not in groups and f not in FAMILY_FIELDS]
    test_metrics = [c for c in table.columns if c.startswith("test_")]
    table = table.assign(family=table.apply(optimizer_family, axis=1))
    rows = []
    grouped = table.groupby(groups, dropna=False, sort=False) if groups else [((), table)]
    for group, runs_of_group in grouped:
        group_values = dict(zip(groups, group if isinstance(group, tuple) else (group,)))
        for family, runs in runs_of_group.groupby("family", sort=False):
            rows.append(
                {**group_values, **_best(family, runs, settings, metric, higher_is_better, test_metrics)}
            )
    comparison = pd.DataFrame(rows)
    chosen = [f for f in settings if f in comparison]
    leading = [*groups, "optimizer", *chosen]
    comparison = comparison[[*leading, *[c for c in comparison if c not in leading]]]
    comparison.attrs["groups"] = groups
    return comparison


def _best(
    family: str,
    runs: pd.DataFrame,
    settings: list[str],
    metric: str,
    higher_is_better: bool,
    test_metrics: list[str],
) -> dict[str, object]:
    """The family's row: its best setting (healthy first, then by mean metric; NaN scores last)."""
    hyperparameters = [f for f in settings if runs[f].nunique(dropna=False) > 1]
    candidates = runs.groupby(hyperparameters, dropna=False, sort=False) if hyperparameters else [((), runs)]
    best, best_score = None, None
    for setting, seeds in candidates:
        healthy = bool((seeds["status"] == "complete").all())
        mean = pd.to_numeric(seeds[metric], errors="coerce").mean()
        signed = -math.inf if math.isnan(mean) else (mean if higher_is_better else -mean)
        score = (healthy, signed)
        if best_score is None or score > best_score:
            best, best_score = (setting, seeds), score
    setting, seeds = best
    values = setting if isinstance(setting, tuple) else (setting,)
    row: dict[str, object] = {"optimizer": family, **dict(zip(hyperparameters, values)), "seeds": len(seeds)}
    healthy = bool((seeds["status"] == "complete").all())
    row["diverged"] = int((seeds["status"] == "diverged").sum())
    row[f"{metric} (selection)"] = (
        pd.to_numeric(seeds[metric], errors="coerce").mean() if healthy else math.nan
    )
    for name in test_metrics:
        values_of = pd.to_numeric(seeds[name], errors="coerce")
        row[f"{name} mean"] = values_of.mean() if healthy else math.nan
        row[f"{name} std"] = values_of.std(ddof=0) if healthy else math.nan
    return row


def to_markdown(comparison: pd.DataFrame) -> str:
    """The comparison as Markdown, one table per group (a heading names its setting), test metrics as
    mean ± std (blank where every setting of the family diverged)."""
    groups = [g for g in comparison.attrs.get("groups", []) if g in comparison]
    if not groups:
        return _table(comparison)
    parts = []
    for group, rows in comparison.groupby(groups, dropna=False, sort=False):
        values = group if isinstance(group, tuple) else (group,)
        heading = ", ".join(f"{field} = {_cell(value)}" for field, value in zip(groups, values))
        parts.append(f"### {heading}\n\n{_table(rows.drop(columns=groups))}")
    return "\n\n".join(parts)


def _table(comparison: pd.DataFrame) -> str:
    columns = [c for c in comparison.columns if not c.endswith((" mean", " std"))]
    metrics = [c.removesuffix(" mean") for c in comparison.columns if c.endswith(" mean")]
    header = columns + metrics
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in comparison.iterrows():
        cells = [_cell(row[c]) for c in columns]
        cells += [
            "" if pd.isna(row[f"{m} mean"]) else f"{row[f'{m} mean']:.4f} ± {row[f'{m} std']:.4f}"
            for m in metrics
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)
