"""Tables from stored runs, shared by the reproductions that train through the store."""

from __future__ import annotations

import pandas as pd

from momentumlab.runs import RunRecord


def run_tables(runs: dict[str, list[RunRecord]], group: str = "optimizer") -> dict[str, pd.DataFrame]:
    """Runs grouped by a label (e.g. optimizer → runs over seeds) as three tables, each keyed by
    (`group`, seed): ``curves``, every logged row; ``final``, the last row of each run, with NaN
    measurements for a run that did not complete (so every claim that uses it fails); ``runs``, the run
    id, status and seconds."""
    curves, final, index = [], [], []
    for label, records in runs.items():
        for run in records:
            key = {group: label, "seed": run.config.seed}
            curves.append(run.metrics().assign(**key))
            final.append({**key, **(run.final() if run.status == "complete" else {})})
            index.append({**key, "run_id": run.run_id, "status": run.status, "seconds": run.seconds})
    return {
        "curves": pd.concat(curves, ignore_index=True),
        "final": pd.DataFrame(final),
        "runs": pd.DataFrame(index),
    }


def by_group(table: pd.DataFrame, group: str = "optimizer") -> dict[str, pd.DataFrame]:
    """{label: its rows} in the table's order of labels."""
    return {label: rows for label, rows in table.groupby(group, sort=False)}


def run_list(runs: pd.DataFrame, group: str = "optimizer") -> str:
    """Markdown bullets: one per run with its id and status."""
    return "\n".join(
        f"- {row[group]}, seed {row['seed']}: `{row['run_id']}` ({row['status']}, {row['seconds']:.0f} s)"
        for _, row in runs.iterrows()
    )
