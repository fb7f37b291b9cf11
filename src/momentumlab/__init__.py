"""momentumlab: reproduce and measure what momentum changes in what a network learns.

The names a user's own code needs to add a kind of run (see the README's "Your own run kinds") and to
instrument their own training loop (:class:`Monitor`, see "Instrument your own training loop"):
"""

__version__ = "0.2.0"

from momentumlab.config import StrictModel
from momentumlab.monitor import Monitor
from momentumlab.runs import RunKind, RunRecord, register_run_kind

__all__ = ["Monitor", "RunKind", "RunRecord", "StrictModel", "register_run_kind"]
