"""Where metrics go: adapters over one interface (:class:`MetricLogger`), used by the Monitor.

`TableLogger` (pandas/Parquet) needs nothing extra; `TensorBoardLogger`, `WandbLogger` and
`MLflowLogger` need the extras ``tensorboard``, ``wandb`` and ``mlflow`` and import them only when built.
"""

from momentumlab.loggers.base import MetricLogger
from momentumlab.loggers.mlflow import MLflowLogger
from momentumlab.loggers.table import TableLogger
from momentumlab.loggers.tensorboard import TensorBoardLogger
from momentumlab.loggers.wandb import WandbLogger

__all__ = ["MLflowLogger", "MetricLogger", "TableLogger", "TensorBoardLogger", "WandbLogger"]
