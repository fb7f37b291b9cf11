"""What produced a result: package versions, code revision and machine, recorded beside every run and
measurement (``environment.json``) so that a result can be traced and rerun."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from momentumlab.native import native_compiler


def environment() -> dict[str, Any]:
    """What produced a run: versions, code revision and machine."""
    packages = {}
    for name in ("momentumlab", "torch", "numpy", "pandas", "pydantic"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", *args], cwd=source, capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    return {
        "python": sys.version.split()[0],
        "packages": packages,
        "git_revision": revision,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if revision else None,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "hostname": platform.node(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "c_compiler": native_compiler(),  # None: no C kernels, the torch paths ran
        },
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@functools.cache
def source_fingerprint() -> str:
    """Hash (16 hex digits) of every Python and C source file of the installed package: a cached
    measurement is keyed by it as well as its settings, so that changed code never serves stale tables."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.c")]):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
