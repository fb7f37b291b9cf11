"""Run kinds: one module per kind of training run (its config schema, trainer, optional batched engine and
batch key), the registry that users extend with their own, and the record a run leaves.

Importing this package registers the package's kinds: ``feature_margin``, ``teacher_student`` and
``image``.
"""

from momentumlab.runs import feature_margin, image, teacher_student  # noqa: F401 - registration
from momentumlab.runs.feature_margin import FeatureMarginRunConfig
from momentumlab.runs.image import ImageRunConfig
from momentumlab.runs.record import FINISHED, RunRecord, Status
from momentumlab.runs.registry import (
    BatchTrainer,
    MemoryEstimate,
    RunKind,
    Trainer,
    check_runnable,
    import_kind_module,
    kind_of,
    load_run_config,
    parse_run_config,
    register_run_kind,
    run_kind,
    run_kinds,
)
from momentumlab.runs.teacher_student import TeacherStudentRunConfig

__all__ = [
    "FINISHED",
    "BatchTrainer",
    "FeatureMarginRunConfig",
    "ImageRunConfig",
    "MemoryEstimate",
    "RunKind",
    "RunRecord",
    "Status",
    "TeacherStudentRunConfig",
    "Trainer",
    "check_runnable",
    "import_kind_module",
    "kind_of",
    "load_run_config",
    "parse_run_config",
    "register_run_kind",
    "run_kind",
    "run_kinds",
]
