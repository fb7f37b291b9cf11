"""Download the official CIFAR archives: resumable, checksummed and extracted atomically.

`fetch_dataset("cifar10", D)` leaves `D/cifar-10-batches-py/` ready for :func:`load_cifar`. The bytes go
to `<archive>.part`, resumed with an HTTP Range request after an interruption; the archive appears under
its own name only once its md5 matches; it is extracted into a temporary folder that is renamed into
place, so D never holds a half-written archive or a half-extracted dataset. The archive is kept.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from momentumlab.data.cifar import LAYOUTS, CifarName, verify_cifar
from momentumlab.data.images import DatasetError

SOCKET_TIMEOUT_S = 60.0  # per blocking socket operation, not for the whole download
CHUNK_BYTES = 1 << 20
HTTP_PARTIAL_CONTENT, HTTP_RANGE_NOT_SATISFIABLE = 206, 416


@dataclass(frozen=True)
class ArchiveSource:
    """Where a dataset's official archive is, its md5, and the folder it extracts to."""

    url: str
    md5: str
    folder: str


DATASETS: dict[str, ArchiveSource] = {
    "cifar10": ArchiveSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder=LAYOUTS["cifar10"].folder,
    ),
    "cifar100": ArchiveSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder=LAYOUTS["cifar100"].folder,
    ),
}


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, offset: int) -> http.client.HTTPResponse:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=SOCKET_TIMEOUT_S)


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """The first byte of a 206 response, from its Content-Range header ("bytes START-END/TOTAL")."""
    if response.status != HTTP_PARTIAL_CONTENT:
        return None
    unit, _, span = (response.headers.get("Content-Range") or "").partition(" ")
    start = span.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _receive(url: str, part: Path, progress: bool) -> None:
    """Bring `part` up to the whole file, continuing from the bytes it holds when the server allows."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset)
    except urllib.error.HTTPError as error:
        if error.code != HTTP_RANGE_NOT_SATISFIABLE or offset == 0:
            raise
        offset = 0  # the .part is as long as the file or longer: start over
        response = _open(url, offset)
    with response:
        if offset and _range_start(response) != offset:
            offset = 0  # the server ignored the Range request and sends the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with (
            part.open("ab" if offset else "wb") as stream,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=part.name, disable=not progress
            ) as bar,
        ):
            while chunk := response.read(CHUNK_BYTES):
                stream.write(chunk)
                bar.update(len(chunk))
            stream.flush()
            os.fsync(stream.fileno())


def _download(url: str, archive: Path, md5: str, progress: bool) -> None:
    part = archive.with_name(archive.name + ".part")
    try:
        _receive(url, part, progress)
    except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError and timeouts are OSErrors
        kept = part.stat().st_size if part.is_file() else 0
        raise DatasetError(
            f"downloading {url} failed ({type(error).__name__}: {error}); {kept} bytes are kept in {part}: "
            "run the same command again to resume"
        ) from None
    actual = file_md5(part)
    if actual != md5:
        part.unlink()
        raise DatasetError(
            f"{url}: checksum mismatch, expected md5 {md5} but the download has md5 {actual}; "
            f"it was deleted; run the command again, or download and check the archive by hand into {archive}"
        )
    os.replace(part, archive)


def _destination(member: tarfile.TarInfo, staging: Path, archive: Path) -> Path:
    """Where `member` is extracted; only plain files and folders that stay inside `staging` are allowed."""
    name = posixpath.normpath(member.name)
    escapes = posixpath.isabs(name) or name == ".." or name.startswith("../")
    if escapes or not (member.isfile() or member.isdir()):
        raise DatasetError(
            f"{archive}: refusing to extract the member {member.name!r}: only plain files and folders "
            "inside the extraction folder are allowed (no links, devices or paths leaving it)"
        )
    return staging / name


def _extract(name: CifarName, archive: Path, directory: Path) -> None:
    target = directory / DATASETS[name].folder
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".{target.name}.", suffix=".extracting"))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                destinations = [_destination(member, staging, archive) for member in members]  # all, first
                for member, destination in zip(members, destinations):
                    if member.isdir():
                        destination.mkdir(parents=True, exist_ok=True)
                        continue
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as source, destination.open("wb") as sink:
                        shutil.copyfileobj(source, sink)
        except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as error:
            raise DatasetError(f"{archive} is not a readable tar.gz archive ({error})") from None
        try:
            verify_cifar(name, staging)
        except DatasetError as error:
            raise DatasetError(f"{archive} does not hold a valid {name} dataset: {error}") from None
        if target.exists():  # a broken earlier copy: moved aside, deleted with the staging folder
            os.replace(target, staging / "replaced")
        os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_dataset(
    name: CifarName, directory: Path, url: str | None = None, md5: str | None = None, progress: bool = False
) -> Path:
    """Download, verify and extract dataset `name` into `directory`; return the dataset folder.

    `url` and `md5` replace the official ones (tests use a local server). A dataset already there that
    reads correctly is left alone; an archive already there whose md5 matches is not downloaded again.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset name {name!r} cannot be fetched; allowed: {', '.join(DATASETS)}")
    source = DATASETS[name]
    url, md5 = url or source.url, (md5 or source.md5).lower()
    directory = Path(directory)
    target = directory / source.folder
    if target.exists():
        try:
            verify_cifar(name, directory)
            return target
        except DatasetError:
            pass  # a broken copy: fetched again and replaced
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / (Path(urllib.parse.urlparse(url).path).name or f"{name}.tar.gz")
    if not (archive.is_file() and file_md5(archive) == md5):
        _download(url, archive, md5, progress)
    _extract(name, archive, directory)
    return target
