"""Fetching an archive from a local HTTP server (127.0.0.1 only): checksums, resume, atomic extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from momentumlab.data.cifar import load_cifar, write_cifar_files
from momentumlab.data.fetch import fetch_dataset
from momentumlab.data.images import DatasetError

ARCHIVE_PATH = "/cifar-10-python.tar.gz"


class ArchiveHandler(BaseHTTPRequestHandler):
    """Serves `server.payload` at ARCHIVE_PATH, honouring "Range: bytes=START-" if `server.honour_range`."""

    def do_GET(self) -> None:
        server = self.server
        requested = self.headers.get("Range")
        server.ranges.append(requested)
        if self.path != ARCHIVE_PATH:
            self.send_error(404)
            return
        payload, start = server.payload, 0
        if requested and server.honour_range:
            start = int(requested.removeprefix("bytes=").partition("-")[0])
            if start >= len(payload):
                self.send_error(416)
                return
        body = payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[str, ThreadingHTTPServer]]]:
    """Factory: start a server on 127.0.0.1 for `payload`; every server is shut down after the test."""
    running: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(payload: bytes, honour_range: bool = True) -> tuple[str, ThreadingHTTPServer]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
        server.payload, server.honour_range, server.ranges = payload, honour_range, []
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}{ARCHIVE_PATH}", server

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def tar_gz(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory) -> tuple[bytes, dict[str, bytes]]:
    """A tiny CIFAR-10 archive (8 training, 4 test images) and the files it holds."""
    source = tmp_path_factory.mktemp("source")
    rng = np.random.default_rng(0)
    folder = write_cifar_files(
        source,
        "cifar10",
        rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 8),
        rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 4),
    )
    files = {f"{folder.name}/{path.name}": path.read_bytes() for path in sorted(folder.iterdir())}
    return tar_gz(files), files


def md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def assert_fetched(directory: Path, payload: bytes, files: dict[str, bytes]) -> None:
    folder = directory / "cifar-10-batches-py"
    assert {f"{folder.name}/{path.name}": path.read_bytes() for path in folder.iterdir()} == files
    assert (directory / "cifar-10-python.tar.gz").read_bytes() == payload
    assert sorted(path.name for path in directory.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    assert len(load_cifar("cifar10", directory).train) == 8


def test_fetch_downloads_verifies_and_extracts(serve, cifar_archive, tmp_path):
    payload, files = cifar_archive
    url, server = serve(payload)
    folder = fetch_dataset("cifar10", tmp_path / "data", url=url, md5=md5(payload))
    assert folder == tmp_path / "data" / "cifar-10-batches-py"
    assert server.ranges == [None]
    assert_fetched(tmp_path / "data", payload, files)


def test_second_fetch_is_a_no_op(serve, cifar_archive, tmp_path):
    payload, _ = cifar_archive
    url, server = serve(payload)
    fetch_dataset("cifar10", tmp_path, url=url, md5=md5(payload))
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "cifar-10-batches-py").iterdir()}
    fetch_dataset("cifar10", tmp_path, url=url, md5=md5(payload))
    assert len(server.ranges) == 1  # no second request
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "cifar-10-batches-py").iterdir()} == before


def test_an_interrupted_download_resumes_with_a_range_request(serve, cifar_archive, tmp_path):
    payload, files = cifar_archive
    half = len(payload) // 2
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(payload[:half])
    url, server = serve(payload)
    fetch_dataset("cifar10", tmp_path, url=url, md5=md5(payload))
    assert server.ranges == [f"bytes={half}-"]
    assert_fetched(tmp_path, payload, files)


def test_a_server_that_ignores_range_still_gives_the_right_archive(serve, cifar_archive, tmp_path):
    payload, files = cifar_archive
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(b"x" * (len(payload) // 2))  # and wrong bytes
    url, server = serve(payload, honour_range=False)
    fetch_dataset("cifar10", tmp_path, url=url, md5=md5(payload))
    assert server.ranges == [f"bytes={len(payload) // 2}-"]
    assert_fetched(tmp_path, payload, files)


def test_a_part_as_long_as_the_file_starts_over(serve, cifar_archive, tmp_path):
    payload, files = cifar_archive
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(b"x" * len(payload))
    url, server = serve(payload)
    fetch_dataset("cifar10", tmp_path, url=url, md5=md5(payload))
    assert server.ranges == [f"bytes={len(payload)}-", None]  # 416, then the whole file
    assert_fetched(tmp_path, payload, files)


def test_a_checksum_mismatch_deletes_the_download(serve, cifar_archive, tmp_path):
    payload, _ = cifar_archive
    url, _ = serve(payload)
    wrong = "0" * 32
    with pytest.raises(DatasetError, match="checksum mismatch") as caught:
        fetch_dataset("cifar10", tmp_path, url=url, md5=wrong)
    assert wrong in str(caught.value) and md5(payload) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_request_keeps_the_part_and_says_how_to_resume(serve, cifar_archive, tmp_path):
    payload, _ = cifar_archive
    url, _ = serve(payload)
    with pytest.raises(DatasetError, match="HTTPError.*404.*run the same command again to resume"):
        fetch_dataset("cifar10", tmp_path, url=url.replace(ARCHIVE_PATH, "/missing.tar.gz"), md5=md5(payload))
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_a_broken_extracted_copy_is_replaced(serve, cifar_archive, tmp_path):
    payload, files = cifar_archive
    broken = tmp_path / "cifar-10-batches-py"
    broken.mkdir()
    (broken / "test_batch").write_bytes(b"not a pickle")
    url, _ = serve(payload)
    fetch_dataset("cifar10", tmp_path, url=url, md5=md5(payload))
    assert_fetched(tmp_path, payload, files)


@pytest.mark.parametrize(
    ("files", "symlinks", "member"),
    [
        ({"../escaped.txt": b"x"}, {}, "../escaped.txt"),
        ({"cifar-10-batches-py/../../escaped.txt": b"x"}, {}, "cifar-10-batches-py/../../escaped.txt"),
        ({"/tmp/escaped.txt": b"x"}, {}, "/tmp/escaped.txt"),
        ({}, {"cifar-10-batches-py/test_batch": "/etc/passwd"}, "cifar-10-batches-py/test_batch"),
    ],
)
def test_a_malicious_member_is_refused(serve, tmp_path, files, symlinks, member):
    payload = tar_gz({"cifar-10-batches-py/readme": b"ok", **files}, symlinks)
    url, _ = serve(payload)
    directory = tmp_path / "data"
    with pytest.raises(DatasetError, match="refusing to extract the member") as caught:
        fetch_dataset("cifar10", directory, url=url, md5=md5(payload))
    assert repr(member) in str(caught.value)
    assert sorted(path.name for path in directory.iterdir()) == [
        "cifar-10-python.tar.gz"
    ]  # nothing extracted
    assert not (tmp_path / "escaped.txt").exists()
