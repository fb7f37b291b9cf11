import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from momentumlab.loggers import MetricLogger, TensorBoardLogger


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb")
    assert isinstance(logger, MetricLogger)
    rows = {0: {"loss": 0.693, "curvature/top_1": 18.8}, 10: {"loss": 0.1}, 25: {"loss": 1e-3}}
    for step, values in rows.items():
        logger.log(step, values)
    logger.close()

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["curvature/top_1", "loss"]
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [0, 10, 25]
    assert [e.value for e in loss] == [float(np.float32(v)) for v in (0.693, 0.1, 1e-3)]  # stored as float32
    (top,) = events.Scalars("curvature/top_1")
    assert (top.step, top.value) == (0, float(np.float32(18.8)))
