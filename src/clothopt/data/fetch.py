"""Download the clothing data set, check it, and put it in place in one atomic rename.

A kill at any moment leaves either no ``dest`` or a complete one: everything is downloaded
and unpacked into hidden temporary paths beside ``dest`` (same file system, so the final
``os.rename`` is atomic) and those are removed on the way out.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import lzma
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clothopt._io import atomic_write_json
from clothopt.data.layout import SPLITS, Dataset, open_dataset
from clothopt.errors import (
    AlreadyExists,
    DataError,
    OutputConflict,
    UserError,
    WriteFailed,
)
from clothopt.logging import get_logger

__all__ = [
    "DATASET_COMMIT",
    "DATASET_FINGERPRINT",
    "DATASET_IMAGES",
    "DATASET_REPO",
    "DATASET_URL",
    "SOURCE_FILE",
    "fetch",
]

logger = get_logger(__name__)

DATASET_REPO = "alexeygrigorev/clothing-dataset-small"
DATASET_COMMIT = "11961516512414bf9f6c150a832cfd21b54a6b54"
DATASET_URL = f"https://github.com/{DATASET_REPO}/archive/{DATASET_COMMIT}.tar.gz"
# open_dataset(root).fingerprint of the files at DATASET_COMMIT. It pins the content: the
# SHA-256 of GitHub's generated archive is not stable across GitHub's tar/gzip versions.
DATASET_FINGERPRINT = "8354d7bd9f066bacf536c8fe39372d0749c8038c511445d6c05e9cf08d852a82"
DATASET_IMAGES = 3781

SOURCE_FILE = ".clothopt-source.json"

_CHUNK = 1 << 20


class _NoFilterError(Exception):
    """Stands in for tarfile.FilterError on Pythons without PEP 706; never raised."""


# PEP 706 (3.10.12+, 3.11.4+): what the stdlib's "data" filter raises for an unsafe member
_FilterError: type[Exception] = getattr(tarfile, "FilterError", _NoFilterError)
_SHA1 = re.compile(r"[0-9a-f]{40}")


def fetch(
    dest: str | os.PathLike[str],
    *,
    url: str = DATASET_URL,
    sha256: str | None = None,
    fingerprint: str | None = DATASET_FINGERPRINT,
    timeout: float = 60,
    progress: bool = True,
) -> Path:
    """Download the data set archive at ``url`` and unpack it as ``dest``; return ``dest``.

    ``sha256`` pins the archive's bytes, ``fingerprint`` the unpacked data set
    (:attr:`Dataset.fingerprint`); either mismatch is an error and leaves nothing behind.
    An existing ``dest`` with the expected fingerprint is returned as it is; any other
    existing ``dest`` is an error (it is never overwritten). ``progress`` prints a status
    line to stderr.
    """
    dest = Path(dest).expanduser().absolute()
    if dest.exists() or dest.is_symlink():
        _check_existing(dest, fingerprint)
        matches = "fingerprint matches, " if fingerprint is not None else ""
        _say(progress, f"{dest} is already there ({matches}nothing to download)")
        return dest

    created = _make_parents(dest.parent)
    archive: Path | None = None
    unpack_dir: Path | None = None
    done = False
    try:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".download", dir=dest.parent)
        except OSError as exc:
            raise WriteFailed(f"cannot write to {dest.parent}: {_reason(exc)}") from None
        archive = Path(tmp)
        with os.fdopen(fd, "wb") as out:
            digest, size = _download(url, out, timeout=timeout, progress=progress)
        if sha256 is not None and digest != sha256.strip().lower():
            raise DataError(
                f"archive from {url} has SHA-256 {digest}, expected {sha256.strip().lower()}"
            )

        unpack_dir = Path(
            tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpack", dir=dest.parent)
        )
        commit = _unpack(archive, unpack_dir, url)
        archive.unlink()  # free the space early; the data set is unpacked now
        archive = None
        folder = _find_root(unpack_dir, url)
        dataset = _open_downloaded(folder, url)
        if fingerprint is not None and dataset.fingerprint != fingerprint:
            raise DataError(
                f"data set from {url} has fingerprint {dataset.fingerprint}, expected {fingerprint}"
            )
        if commit is None and url == DATASET_URL:
            commit = DATASET_COMMIT
        atomic_write_json(
            folder / SOURCE_FILE,
            {
                "url": url,
                "commit": commit,
                "sha256": digest,
                "bytes": size,
                "fingerprint": dataset.fingerprint,
                "images": sum(len(s) for s in dataset.splits.values()),
                "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "fetched_by": "clothopt",
            },
        )
        # mkstemp/mkdtemp make private (0600/0700) paths; give them the usual modes
        os.chmod(folder / SOURCE_FILE, 0o666 & ~_umask())
        if folder == unpack_dir:
            os.chmod(folder, 0o777 & ~_umask())
        if dest.exists() or dest.is_symlink():  # appeared while we were downloading
            raise AlreadyExists(f"{dest} appeared while downloading; not overwriting it")
        try:
            os.rename(folder, dest)
        except OSError as exc:
            raise WriteFailed(f"cannot move the data set to {dest}: {_reason(exc)}") from None
        done = True
    finally:
        if archive is not None:
            with contextlib.suppress(FileNotFoundError):
                archive.unlink()
        if unpack_dir is not None:
            shutil.rmtree(unpack_dir, ignore_errors=True)
        if not done:
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()
    _say(progress, f"archive SHA-256 {digest} ({_mb(size)}), recorded in {dest / SOURCE_FILE}")
    return dest


def _check_existing(dest: Path, fingerprint: str | None) -> None:
    if not dest.is_dir():
        raise OutputConflict(
            f"{dest} already exists and is not a directory; choose another destination"
        )
    try:
        dataset = open_dataset(dest)
    except UserError as exc:
        raise OutputConflict(
            f"{dest} already exists and is not a usable data set ({exc}); "
            "choose another destination or remove it"
        ) from None
    if fingerprint is not None and dataset.fingerprint != fingerprint:
        raise OutputConflict(
            f"{dest} already exists with fingerprint {dataset.fingerprint}, "
            f"expected {fingerprint}; choose another destination or remove it"
        )


def _make_parents(parent: Path) -> list[Path]:
    """Create ``parent`` and its missing ancestors; return those created, outermost first."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    missing.reverse()
    for d in missing:
        try:
            d.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise WriteFailed(f"cannot create {d}: {_reason(exc)}") from None
    return missing


def _download(url: str, out: Any, *, timeout: float, progress: bool) -> tuple[str, int]:
    """Stream ``url`` into ``out``; return (SHA-256, bytes). Any failure is one-line."""
    h = hashlib.sha256()
    got = 0
    total: int | None = None
    meter = _Meter(url, progress)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "clothopt-fetch"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while block := resp.read(_CHUNK):
                h.update(block)
                try:
                    out.write(block)
                except OSError as exc:
                    raise WriteFailed(f"cannot write the download: {_reason(exc)}") from None
                got += len(block)
                meter.update(got, total)
    except urllib.error.HTTPError as exc:
        raise _download_error(url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):  # while connecting
            raise _download_error(url, f"timed out after {timeout:g} s") from None
        raise _download_error(url, _reason(exc.reason)) from None
    except TimeoutError:
        raise _download_error(url, f"timed out after {timeout:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _download_error(url, _reason(exc)) from None
    finally:
        meter.close(got, total)
    # http.client stops quietly when the server closes early; Content-Length says it did
    if total is not None and got != total:
        raise _download_error(url, f"connection closed after {got} of {total} bytes")
    if got == 0:
        raise _download_error(url, "the server sent no data")
    return h.hexdigest(), got


def _download_error(url: str, reason: str) -> DataError:
    return DataError(f"could not download {url}: {reason}")


def _reason(exc: object) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__


class _Meter:
    """A single self-overwriting stderr line on a terminal; one final line otherwise."""

    def __init__(self, url: str, enabled: bool) -> None:
        self.url = url
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.last = 0.0

    def _line(self, got: int, total: int | None) -> str:
        if total:
            return f"downloading {self.url}: {_mb(got)} of {_mb(total)} ({100 * got // total}%)"
        return f"downloading {self.url}: {_mb(got)}"

    def update(self, got: int, total: int | None) -> None:
        now = time.monotonic()
        if self.tty and now - self.last >= 0.2:
            self.last = now
            sys.stderr.write("\r" + self._line(got, total))
            sys.stderr.flush()

    def close(self, got: int, total: int | None) -> None:
        if self.enabled and got:
            sys.stderr.write(("\r" if self.tty else "") + self._line(got, total) + "\n")
            sys.stderr.flush()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _say(enabled: bool, message: str) -> None:
    if enabled:
        logger.info(message)


def _unpack(archive: Path, into: Path, url: str) -> str | None:
    """Unpack a tar (any compression) or zip, chosen by content; return the commit if named.

    GitHub writes the commit id into the archive comment (tar pax header / zip comment).
    """
    with open(archive, "rb") as fh:
        magic = fh.read(4)
    try:
        if magic in (b"PK\x03\x04", b"PK\x05\x06"):
            return _unpack_zip(archive, into)
        if magic[:2] == b"\x1f\x8b":
            # tarfile stops at the end-of-archive block and never reads the gzip trailer,
            # so check the whole stream (CRC and length) to catch a cut download
            with gzip.open(archive, "rb") as gz:
                while gz.read(_CHUNK):
                    pass
        return _unpack_tar(archive, into)
    except UserError:
        raise
    except _FilterError as exc:
        raise DataError(f"archive from {url} has a member that is not safe: {exc}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(
            f"archive from {url} is damaged or incomplete, or not a .tar.gz/.tar/.zip: "
            f"{_reason(exc)}"
        ) from None
    except (zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"archive from {url} is damaged: {_reason(exc)}") from None
    except OSError as exc:  # a full disk, a file-size limit, permissions
        raise WriteFailed(f"cannot unpack the archive from {url}: {_reason(exc)}") from None
    except ValueError as exc:
        raise DataError(f"cannot unpack the archive from {url}: {_reason(exc)}") from None


def _unsafe_name(name: str) -> bool:
    # Refuse rather than rewrite: a sane data-set archive never needs any of these.
    parts = name.replace("\\", "/").split("/")
    return (
        name.startswith(("/", "\\"))
        or (len(name) > 1 and name[1] == ":")  # a Windows drive
        or ".." in parts
        or "\x00" in name
    )


def _unpack_tar(archive: Path, into: Path) -> str | None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for m in members:
            if _unsafe_name(m.name):
                raise DataError(f"archive member {m.name!r} points outside the archive; refused")
            if m.issym():
                target = posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.linkname))
                if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                    raise DataError(
                        f"archive link {m.name!r} -> {m.linkname!r} points outside; refused"
                    )
            elif m.islnk():
                if _unsafe_name(m.linkname):
                    raise DataError(
                        f"archive link {m.name!r} -> {m.linkname!r} points outside; refused"
                    )
            elif not (m.isreg() or m.isdir()):
                raise DataError(f"archive member {m.name!r} is a device or fifo; refused")
        if hasattr(tarfile, "data_filter"):  # the stdlib's own checks as a second line
            tf.extractall(into, members=members, filter="data")
        else:  # pragma: no cover - Python without PEP 706 backports
            tf.extractall(into, members=members)
        comment = tf.pax_headers.get("comment", "")
    return comment if _SHA1.fullmatch(comment) else None


def _unpack_zip(archive: Path, into: Path) -> str | None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if _unsafe_name(info.filename):
                raise DataError(
                    f"archive member {info.filename!r} points outside the archive; refused"
                )
        zf.extractall(into)
        comment = zf.comment.decode("ascii", "replace").strip()
    return comment if _SHA1.fullmatch(comment) else None


def _find_root(unpack_dir: Path, url: str) -> Path:
    """The one folder (the unpack dir or below, up to three levels) holding every split."""
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(unpack_dir):
        here = Path(dirpath)
        if all((here / s).is_dir() for s in SPLITS):
            found.append(here)
            dirnames.clear()  # a data set's class folders are not more candidates
        elif len(here.relative_to(unpack_dir).parts) >= 3:
            dirnames.clear()
    if not found:
        raise DataError(f"archive from {url} holds no folder with {'/, '.join(SPLITS)}/ in it")
    if len(found) > 1:
        names = ", ".join(p.relative_to(unpack_dir).as_posix() for p in found)
        raise DataError(f"archive from {url} holds more than one data set: {names}")
    return found[0]


def _open_downloaded(folder: Path, url: str) -> Dataset:
    try:
        return open_dataset(folder)
    except UserError as exc:
        raise DataError(f"data set from {url} is not usable: {exc}") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
