"""Atomic file writes: a reader sees the old file or the new one, never a partial one; and appends of
whole lines that a reader can follow."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

TEMPORARY_SUFFIX = ".tmp"  # temporary files are `.<name>.<random>.tmp` beside their target


class WriteError(OSError):
    """A file could not be written (full disk, no permission, ...); the message names the path."""


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write` into a temporary file beside `path`, fsync it, then rename over `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX
        )
    except OSError as error:
        raise WriteError(error.errno, f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(error.errno, f"cannot write {path}: {error.strerror}") from error
        raise


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda stream: stream.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True, allow_nan=True) + "\n")


def torch_bytes(value: Any) -> bytes:
    """`value` serialized by `torch.save`."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def save_torch(path: Path, value: Any) -> str:
    """Save `value` with torch atomically; return the SHA-256 of the bytes written."""
    data = torch_bytes(value)
    write_bytes(path, data)
    return sha256(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def append_lines(path: Path, text: str) -> None:
    """Append whole lines to `path` in one write, then flush and fsync them: a reader that follows the
    file sees each block complete or not at all (a line without its newline is still being written)."""
    if not text.endswith("\n"):
        raise ValueError("append_lines writes whole lines: the text must end with a newline")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = memoryview(text.encode())
            while data:
                data = data[os.write(descriptor, data) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise WriteError(error.errno, f"cannot write {path}: {error.strerror}") from None
