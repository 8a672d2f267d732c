"""Fetch a dataset archive (URL or path), verify its sha256 and unpack it atomically.

Whatever goes wrong (missing file, checksum mismatch, corrupt archive, interrupted download), the
caller sees one :class:`~mapex.io.UserError` line and the disk holds neither ``dest`` nor any
temporary file or folder: the archive is unpacked beside ``dest`` and renamed onto it only at the end.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from mapex.io import UserError, atomic_path

MARKER = ".mapex-fetched"
"""File written into a fetched ``dest``; it holds the archive's sha256 so a re-fetch is skipped.

The DVC stages that read the dataset depend on it rather than on the folder (``dvc.yaml``), so
``dvc status`` hashes the dataset's files once, for ``fetch``'s output, not once per stage.
"""

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
ZIP_SUFFIXES = (".zip",)
CHUNK = 1 << 20


def fetch(source: str, sha256: str, dest: Path) -> Path:
    """Make ``dest`` the root of the dataset in the archive ``source``, and return ``dest``.

    ``source`` is an ``https://``/``http://`` URL, a ``file://`` URL or a plain path to a
    ``.tar.gz``/``.tgz``/``.tar``/``.zip`` archive. If the archive holds a single top folder,
    ``dest`` becomes that folder (its contents sit directly under ``dest``). A ``dest`` already
    fetched from an archive with this sha256 is returned as is; a ``dest`` that exists but was not
    made by ``fetch`` is refused rather than overwritten.
    """
    dest = Path(dest)
    expected = sha256.strip().lower()
    if _already_fetched(dest, expected):
        return dest
    name = _archive_name(source)
    with _local_archive(source, dest) as archive:
        _verify_sha256(archive, expected, label=source)
        _unpack(archive, name, dest, label=source, marker_text=expected + "\n")
    return dest


def _already_fetched(dest: Path, expected: str) -> bool:
    marker = dest / MARKER
    if marker.is_file():
        return marker.read_text().strip() == expected
    if dest.exists():
        raise UserError(f"{dest}: exists and was not made by fetch; remove it or choose another destination")
    return False


def _archive_name(source: str) -> str:
    """The archive's file name (from the URL path or the file path), checked for a known suffix."""
    name = urllib.request.url2pathname(urllib.parse.urlparse(source).path) if "://" in source else source
    name = Path(name).name
    if not name.lower().endswith(TAR_SUFFIXES + ZIP_SUFFIXES):
        allowed = ", ".join(TAR_SUFFIXES + ZIP_SUFFIXES)
        raise UserError(f"{source}: unknown archive type (expected one of {allowed})")
    return name


@contextlib.contextmanager
def _local_archive(source: str, dest: Path) -> Iterator[Path]:
    """Yield a local path to the archive: the file itself, or a temporary download beside ``dest``."""
    if source.startswith(("https://", "http://")):
        with _downloaded(source, dest) as path:
            yield path
        return
    path = (
        Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path))
        if source.startswith("file://")
        else Path(source)
    )
    if not path.is_file():
        raise UserError(f"{path}: archive not found")
    yield path


@contextlib.contextmanager
def _downloaded(url: str, dest: Path) -> Iterator[Path]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".download", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            _download(url, out)
        yield Path(tmp_name)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _download(url: str, out: BinaryIO) -> None:
    try:
        with urllib.request.urlopen(url) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name) as progress:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    progress.update(len(chunk))
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"{url}: download failed ({err})") from err


def _verify_sha256(archive: Path, expected: str, label: str) -> None:
    digest = hashlib.sha256()
    with archive.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        raise UserError(f"{label}: sha256 mismatch: expected {expected}, got {actual}")


def _unpack(archive: Path, name: str, dest: Path, label: str, marker_text: str) -> None:
    """Extract into a staging folder beside ``dest``, then rename the dataset root onto ``dest``.

    The marker goes in before the rename, so a ``dest`` without it was never completed by us.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extract", dir=dest.parent))
    try:
        _extract(archive, name, staging, label)
        with atomic_path(dest) as tmp:
            os.replace(_dataset_root(staging), tmp)
            (tmp / MARKER).write_text(marker_text)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract(archive: Path, name: str, into: Path, label: str) -> None:
    try:
        if name.lower().endswith(ZIP_SUFFIXES):
            with zipfile.ZipFile(archive) as zipped:  # zipfile itself drops absolute and ".." parts
                zipped.extractall(into)
        else:
            with tarfile.open(archive) as tarred:
                tarred.extractall(into, filter="data")
    except tarfile.FilterError as err:
        raise UserError(f"{label}: refusing unsafe archive member ({err})") from err
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as err:
        raise UserError(f"{label}: corrupt or truncated archive ({err or type(err).__name__})") from err


def _dataset_root(extracted: Path) -> Path:
    """The single top folder of the archive if there is one (ignoring macOS ``__MACOSX``), else all of it."""
    entries = [entry for entry in extracted.iterdir() if entry.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return extracted
