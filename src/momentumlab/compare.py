"""Fair comparison of optimizers from a sweep: each at its best setting, chosen on validation data.

Runs are grouped by optimizer family — GD or SGD (full batch or minibatches), plus the momentum rule
when the momentum is nonzero (any rule with zero momentum *is* (S)GD). Within a family, a setting
is the values of the other swept fields; its score is the mean of a validation metric over seeds,
and a setting with a diverged or failed seed ranks below every setting without one. The chosen
setting's test metrics are reported as mean ± std over its seeds. Test metrics never enter the choice.
"""

from __future__ import annotations

import pandas as pd

from momentumlab.config import ConfigError
from momentumlab.sweep import varied_fields


def optimizer_family(row: pd.Series) -> str:
    """'gd', 'sgd', 'gd+ema_momentum', 'sgd+heavy_ball', … ('+momentum' for a run kind whose optimizer
    section has a momentum but no rule name, e.g. `torch.optim.SGD`'s)."""
    stochastic = "train.batch_size" in row and pd.notna(row["train.batch_size"])
    base = "sgd" if stochastic else "gd"
    return (
        base if row.get("optimizer.momentum", 0) == 0 else f"{base}+{row.get('optimizer.name', 'momentum')}"
    )


def compare(table: pd.DataFrame, metric: str = "val_accuracy") -> pd.DataFrame:
    """One row per optimizer family: its best setting by mean `metric`, and test metrics there."""
    if metric.startswith("test"):
        raise ConfigError(
            f"metric = {metric!r}: hyperparameters are never chosen on test; allowed: val_* or train_*"
        )
    if metric not in table:
        allowed = ", ".join(c for c in table.columns if c.startswith(("val_", "train_")))
        raise ConfigError(f"metric = {metric!r} is not in the sweep result; allowed: {allowed}")
    table = table.assign(family=table.apply(optimizer_family, axis=1))
    settings = [f for f in varied_fields(table) if f != "optimizer.name"]
    test_metrics = [c for c in table.columns if c.startswith("test_")]
    rows = []
    for family, runs in table.groupby("family", sort=False):
        hyperparameters = [f for f in settings if runs[f].nunique(dropna=False) > 1]
        candidates = (
            runs.groupby(hyperparameters, dropna=False, sort=False) if hyperparameters else [((), runs)]
        )
        best, best_score = None, None
        for setting, seeds in candidates:
            healthy = bool((seeds["status"] == "complete").all())
            score = (healthy, seeds[metric].mean())
            if best_score is None or score > best_score:
                best, best_score = (setting, seeds), score
        setting, seeds = best
        values = setting if isinstance(setting, tuple) else (setting,)
        row = {"optimizer": family, **dict(zip(hyperparameters, values)), "seeds": len(seeds)}
        row[f"{metric} (selection)"] = seeds[metric].mean()
        for name in test_metrics:
            row[f"{name} mean"] = seeds[name].mean()
            row[f"{name} std"] = seeds[name].std(ddof=0)
        rows.append(row)
    comparison = pd.DataFrame(rows)
    chosen = [f for f in settings if f in comparison]
    return comparison[["optimizer", *chosen, *[c for c in comparison if c not in ("optimizer", *chosen)]]]


def to_markdown(comparison: pd.DataFrame) -> str:
    """The comparison as a Markdown table with test metrics written as mean ± std."""
    columns = [c for c in comparison.columns if not c.endswith((" mean", " std"))]
    metrics = [c.removesuffix(" mean") for c in comparison.columns if c.endswith(" mean")]
    header = columns + metrics
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in comparison.iterrows():
        cells = [_cell(row[c]) for c in columns]
        cells += [f"{row[f'{m} mean']:.4f} ± {row[f'{m} std']:.4f}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)
