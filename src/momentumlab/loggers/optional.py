"""Optional integrations: a missing package is an error that names the extra which installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_extra(module: str, extra: str) -> ModuleType:
    """`module` imported, or an ImportError saying ``pip install 'momentumlab[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} is not installed (needed by this logger); install it with: "
            f"pip install 'momentumlab[{extra}]'"
        ) from error
