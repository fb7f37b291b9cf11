"""C kernels compiled on first use by the machine's C compiler and called through ctypes.

A kernel is a C file shipped with the package, compiled with its shape constants (``-D``) and
``-O3 -march=native -fopenmp`` into a cache (``$MOMENTUMLAB_CACHE`` or ``~/.cache/momentumlab``), once per
machine, source, shape and compiler: a build takes under a second. Where no compiler works, or with
``MOMENTUMLAB_NATIVE=0``, :func:`load_kernel` returns None and the caller keeps its torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import torch

FLAGS = ["-O3", "-std=gnu11", "-shared", "-fPIC", "-pthread"]
# tried in turn: this CPU's instructions, and OpenMP (whose runtime, libgomp.so.1, resolves to the one
# torch has loaded: the kernel's threads are torch's), where the compiler has them
TARGETS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())


_IMPORTED_IN = os.getpid()


def openmp_usable() -> bool:
    """Whether a kernel may run on OpenMP's threads: not in a process forked from the one that imported
    this module, since the fork did not copy the OpenMP runtime's running workers (torch's own parallel
    ops hang there too unless the child sets ``torch.set_num_threads(1)``)."""
    return os.getpid() == _IMPORTED_IN


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    root = os.environ.get("MOMENTUMLAB_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return (Path(root) if root else Path.home() / ".cache") / "momentumlab" / "kernels"


def native_compiler() -> str | None:
    """The C compiler kernels are built with; None when there is none or ``MOMENTUMLAB_NATIVE=0``."""
    if os.environ.get("MOMENTUMLAB_NATIVE", "1") == "0":
        return None
    return shutil.which(os.environ.get("CC", "cc"))


@functools.cache
def load_kernel(source: str, constants: tuple[tuple[str, int], ...]) -> ctypes.CDLL | None:
    """The shared library of package file `source` (e.g. ``"models/cubic_objective.c"``) built with
    `constants` as ``-DNAME=value``; None when native kernels are off or no compiler builds it."""
    compiler = native_compiler()
    if compiler is None:
        return None
    text = resources.files("momentumlab").joinpath(source).read_text()
    defines = [f"-D{name}={value}" for name, value in constants]
    # the host's name too: -march=native code of one node may not run on another that shares the cache
    key = hashlib.sha256(
        "\0".join(
            [text, *defines, *FLAGS, str(TARGETS), compiler, platform.node(), platform.machine()]
        ).encode()
    ).hexdigest()[:20]
    library = cache_dir() / f"{Path(source).stem}-{key}.so"
    for rebuild in (not library.exists(), True):  # a file that does not load (damaged) is built again
        try:
            if rebuild:
                _compile(compiler, text, defines, library)
            return ctypes.CDLL(str(library))
        except (OSError, subprocess.SubprocessError):  # no cache folder, a failed or stuck build, a bad file
            continue
    return None


def _compile(compiler: str, text: str, defines: list[str], library: Path) -> None:
    """Build `text` into `library` atomically (a whole file or none), for this CPU where the compiler can."""
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as work:
        source, built = Path(work) / "kernel.c", Path(work) / "kernel.so"
        source.write_text(text)
        for target in TARGETS:
            command = [compiler, *FLAGS, *target, *defines, str(source), "-o", str(built), "-lm"]
            result = subprocess.run(command, check=False, capture_output=True, timeout=120)
            if result.returncode == 0:
                os.replace(built, library)
                return
        raise subprocess.CalledProcessError(result.returncode, command, result.stdout, result.stderr)


def raw_float32(tensor: torch.Tensor) -> bool:
    """Whether a kernel, which reads and writes raw float memory, can take `tensor` as it is: float32, on
    the CPU, contiguous."""
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.is_contiguous()
