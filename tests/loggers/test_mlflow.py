import importlib.util
import math

import pytest

from momentumlab.loggers import MetricLogger, MLflowLogger

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sqlalchemy") is None,
        reason="the mlflow extra is not installed",
    ),
    # MLflow's SQL store uses a SQLAlchemy loader option that SQLAlchemy 2.1 deprecates: not ours to fix.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]


def test_mlflow_run_in_a_local_store_holds_the_metric_history(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # read when mlflow is imported: not before this
    logger = MLflowLogger(tmp_path / "mlflow", "momentum")
    assert isinstance(logger, MetricLogger)
    logger.log(0, {"loss": 0.693, "noise/delta": 2.5})
    logger.log(7, {"loss": 0.125, "noise/delta": math.nan})
    logger.close()
    again = MLflowLogger(tmp_path / "mlflow", "momentum")  # the experiment exists now: a second run in it
    again.close()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(logger.tracking_uri)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    loss = sorted((m.step, m.value) for m in client.get_metric_history(logger.run_id, "loss"))
    assert loss == [(0, 0.693), (7, 0.125)]
    delta = sorted((m.step, m.value) for m in client.get_metric_history(logger.run_id, "noise/delta"))
    assert delta[0] == (0, 2.5) and delta[1][0] == 7 and math.isnan(delta[1][1])
    runs = client.search_runs([client.get_experiment_by_name("momentum").experiment_id])
    assert sorted(run.info.run_id for run in runs) == sorted([logger.run_id, again.run_id])
    assert [p.name for p in (tmp_path / "mlflow").iterdir()] == ["mlflow.db"]
