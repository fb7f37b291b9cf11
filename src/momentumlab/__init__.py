"""momentumlab: reproduce and measure what momentum changes in what a network learns.

The names a user's own code needs to add a kind of run (see the README's "Your own run kinds"):
"""

__version__ = "0.2.0"

from momentumlab.config import StrictModel
from momentumlab.runs import RunKind, RunRecord, register_run_kind

__all__ = ["RunKind", "RunRecord", "StrictModel", "register_run_kind"]
