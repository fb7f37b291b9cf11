"""Metrics as an MLflow run in a local store (the optional extra ``momentumlab[mlflow]``).

The store is one SQLite file, ``<tracking_dir>/mlflow.db``: MLflow's file-system backend (``./mlruns``)
is in maintenance mode and refuses to open since MLflow 3 unless an environment variable opts in; a
SQLite file is just as local and is the backend MLflow supports (``mlflow ui --backend-store-uri
sqlite:///<tracking_dir>/mlflow.db`` shows it). MLflow itself sends usage telemetry unless
``MLFLOW_DISABLE_TELEMETRY=true`` (or ``DO_NOT_TRACK=true``) is set before it is imported.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from momentumlab.loggers.optional import import_extra
from momentumlab.loggers.rows import scalar_row

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit on one log_batch call


class MLflowLogger:
    """One MLflow run of `experiment` (created if missing) in the local store in `tracking_dir`.

    The client is bound to that store, so the process-wide tracking URI of `mlflow` is left alone.
    Read it back with ``MlflowClient(logger.tracking_uri).get_metric_history(logger.run_id, name)``.
    """

    def __init__(self, tracking_dir: Path | str, experiment: str, run_name: str | None = None):
        import_extra("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        folder = Path(tracking_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found
            else self._client.create_experiment(experiment, artifact_location=(folder / "artifacts").as_uri())
        )
        self.run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id

    def log(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        step, row = scalar_row(step, values)
        timestamp = int(time.time() * 1000)
        metrics = [Metric(name, value, timestamp, step) for name, value in row.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])

    def close(self) -> None:
        self._client.set_terminated(self.run_id)
