"""Atomic file writes: readers see the old file or the new one, never half of one.

A write that fails (no permission, a full disk, a file-size limit) is a
:class:`~clothopt.errors.WriteFailed` naming the file and the cause: :func:`write_failed`
says which ``OSError`` is one, :func:`writing` turns them into it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clothopt.errors import ClothoptError, WriteFailed

__all__ = [
    "WRITE_ERRNOS",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_lock",
    "write_failed",
    "writing",
]

# what the file system answers a write it refuses; a reader's errors (ENOENT) are not here
WRITE_ERRNOS = frozenset(
    {
        errno.ENOSPC,  # a full disk
        errno.EDQUOT,  # a full quota
        errno.EFBIG,  # a file-size limit (ulimit -f: Python ignores SIGXFSZ, write() fails)
        errno.EROFS,  # a read-only file system
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,  # a folder on the way is a file
        errno.EISDIR,
        errno.ENAMETOOLONG,
        errno.ETXTBSY,
        errno.EBUSY,  # a mount point, a file another program holds
        errno.ELOOP,  # a symbolic link loop on the way
        errno.EMLINK,
        errno.EIO,  # a failing disk
    }
)

# the ones only a write meets
_ONLY_WRITES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def write_failed(
    exc: BaseException,
    path: str | os.PathLike[str] | None = None,
    near: str | os.PathLike[str] | None = None,
) -> WriteFailed | None:
    """``exc`` as a :class:`WriteFailed` naming ``path`` (else the file the error names, else
    ``near``) and the cause; None when ``exc`` is not a refused write (or is clothopt's own)."""
    if isinstance(exc, ClothoptError) or not isinstance(exc, OSError):
        return None
    if exc.errno not in WRITE_ERRNOS:
        return None
    where = next((w for w in (path, exc.filename, near) if w is not None), None)
    cause = exc.strerror or str(exc) or type(exc).__name__
    if where is None:
        return WriteFailed(f"a write failed: {cause}")
    if path is None and exc.errno not in _ONLY_WRITES:
        return WriteFailed(f"{where}: {cause}")  # a read may have met it too: no verb
    return WriteFailed(f"cannot write {where}: {cause}")


@contextlib.contextmanager
def writing(
    path: str | os.PathLike[str] | None = None, near: str | os.PathLike[str] | None = None
) -> Iterator[None]:
    """Turn a refused write in the block into a :class:`WriteFailed` naming ``path`` (else
    the file the error names, else ``near``)."""
    try:
        yield
    except OSError as exc:
        failed = write_failed(exc, path, near)
        if failed is None:
            raise
        raise failed from None


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest`` in one rename.

    A refused write (in the block too) is a :class:`WriteFailed` naming ``dest``; ``dest`` is
    then as it was.
    """
    dest = Path(dest)
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writing(dest):
            yield tmp_path
            with open(tmp_path, "rb+") as fh:  # flush to disk before the rename shows it
                os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; others read these
            os.replace(tmp_path, dest)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


def _default(obj: Any) -> Any:
    # numpy scalars and arrays end up in reports; write them as plain JSON numbers and lists
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive lock between processes, held for the ``with`` block.

    ``filelock``'s OS lock (flock on POSIX, NFS included; msvcrt on Windows) is dropped by
    the kernel when its holder dies, so a killed process never wedges the others.
    """
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield
