import math

import numpy as np
import pandas as pd
import pytest
import torch

from momentumlab.loggers import MetricLogger, TableLogger


def test_table_logger_keeps_tidy_rows_and_writes_them_as_parquet(tmp_path):
    path = tmp_path / "out" / "monitor.parquet"
    logger = TableLogger(path)
    assert isinstance(logger, MetricLogger)
    logger.log(0, {"loss": 1.25, "sharpness": torch.tensor(3.5)})
    logger.log(10, {"loss": np.float32(0.5), "diverged": math.inf})
    logger.flush()
    first = pd.read_parquet(path)
    logger.log(20, {"loss": 0.125})
    logger.close()
    expected = pd.DataFrame(
        {
            "step": [0, 0, 10, 10, 20],
            "name": ["loss", "sharpness", "loss", "diverged", "loss"],
            "value": [1.25, 3.5, 0.5, math.inf, 0.125],
        }
    )
    pd.testing.assert_frame_equal(logger.frame(), expected)
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected)
    pd.testing.assert_frame_equal(first, expected.iloc[:4])  # a flush writes everything logged so far
    assert sorted(p.name for p in path.parent.iterdir()) == ["monitor.parquet"]  # no temporary left


def test_table_logger_without_a_path_stays_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logger = TableLogger()
    logger.log(3, {"a": 1.0})
    logger.close()
    assert logger.frame().to_dict("records") == [{"step": 3, "name": "a", "value": 1.0}]
    assert list(tmp_path.iterdir()) == []


def test_an_empty_table_has_its_columns():
    frame = TableLogger().frame()
    assert list(frame.columns) == ["step", "name", "value"] and len(frame) == 0
    assert frame["step"].dtype == np.int64 and frame["value"].dtype == np.float64


@pytest.mark.parametrize(
    ("step", "values", "message"),
    [
        (1.5, {"a": 1.0}, r"step = 1\.5: allowed: an integer ≥ 0"),
        (-1, {"a": 1.0}, r"step = -1: allowed: an integer ≥ 0"),
        (0, {"a": "high"}, r"a = 'high': a logged value must be a real number"),
    ],
)
def test_bad_rows_are_refused_with_the_field_and_value(step, values, message):
    logger = TableLogger()
    with pytest.raises((TypeError, ValueError), match=message):
        logger.log(step, values)
    assert len(logger.frame()) == 0
