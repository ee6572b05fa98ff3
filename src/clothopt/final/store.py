"""The finalized study's contract: where it lives, what it holds, how it is written and read.

``<study folder>/final`` holds ``model.keras``, ``classes.json``, ``report.json`` and the
confusion-matrix figure; the study's user attribute ``FINAL_ATTR`` points at the folder. The
folder is written whole into a temporary folder beside it and renamed into place, so a crash
leaves the previous result or none, never a mix of two. ``read_final`` is the one reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt.errors import UserError

if TYPE_CHECKING:
    import optuna

__all__ = [
    "FIGURE_STEM",
    "FINAL_ATTR",
    "MODEL_FILE",
    "REPORT_FILE",
    "REQUIRED_KEYS",
    "check_replaceable",
    "final_dir",
    "load_final",
    "make_staging",
    "publish",
    "read_final",
    "recover",
    "set_final_attr",
    "write_report",
]

FINAL_ATTR = "clothopt:final"  # study user attr: {"dir", "trial", "test_f1_macro", ...}
MODEL_FILE = "model.keras"
REPORT_FILE = "report.json"
FIGURE_STEM = "confusion_matrix"
# what the comparison reports need of a report.json
REQUIRED_KEYS = frozenset({"test", "test_labels", "test_predictions", "classes"})
_TMP_PREFIX = ".final-tmp-"
_OLD_PREFIX = ".final-old-"


def final_dir(storage: str | None, name: str) -> Path:
    """The study's ``final`` folder."""
    from clothopt.paths import study_dir

    return study_dir(storage, name) / "final"


# --------------------------------------------------------------------------- atomic folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(folder: Path, prefix: str) -> int | None:
    with contextlib.suppress(ValueError, IndexError):
        return int(folder.name[len(prefix) :].split("-")[0])
    return None


def recover(dest: Path) -> None:
    """Tidy what a killed finalize left: its temporary folder, or the previous result moved
    aside just before the swap (it comes back when nothing replaced it)."""
    parent = dest.parent
    if not parent.is_dir():
        return
    for prefix in (_OLD_PREFIX, _TMP_PREFIX):
        # newest first: the latest result moved aside is the one to bring back
        found = sorted(parent.glob(prefix + "*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for folder in found:
            pid = _owner_pid(folder, prefix)
            if pid is None or pid == os.getpid() or _alive(pid):
                continue  # another finalize is running now: its folders are its own
            if prefix == _OLD_PREFIX and not dest.exists():
                os.replace(folder, dest)
            else:
                shutil.rmtree(folder, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(tmp: Path, dest: Path) -> None:
    # Two renames: a crash between them leaves the old result aside, restored by recover
    old = None
    check_replaceable(dest)  # again: it may have appeared while the model trained
    if dest.exists():
        old = dest.with_name(f"{_OLD_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(dest: Path) -> None:
    """Refuse to replace a ``dest`` clothopt did not write (every one of ours has a report)."""
    if (dest.exists() or dest.is_symlink()) and (
        dest.is_symlink() or not dest.is_dir() or not (dest / REPORT_FILE).is_file()
    ):
        raise UserError(
            f"{dest} exists and was not written by clothopt study finalize (no {REPORT_FILE}): "
            "move it away first"
        )


def make_staging(dest: Path) -> Path:
    """A new private temporary folder beside ``dest``, after tidying what a killed run left.

    A ``dest`` that clothopt did not write is refused (a :class:`UserError`).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    check_replaceable(dest)
    return Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=dest.parent))


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """``report.json`` in ``folder`` (sorted keys, indented)."""
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def publish(tmp: Path, dest: Path) -> None:
    """Make ``tmp``'s files readable by others, flush them, and swap ``tmp`` in as ``dest``."""
    for path in tmp.iterdir():
        path.chmod(0o644)  # mkdtemp makes a private folder; others read these files
    tmp.chmod(0o755)
    _fsync_tree(tmp)
    _swap_in(tmp, dest)


def set_final_attr(
    st: optuna.Study, folder: Path, report: dict[str, Any], test_f1: float, ci95: list[float]
) -> None:
    """Point the study at its finalized folder (``FINAL_ATTR``)."""
    st.set_user_attr(
        FINAL_ATTR,
        {
            "dir": str(folder),
            "trial": report["trial"],
            "test_f1_macro": test_f1,
            "f1_macro_ci95": ci95,
            "model": MODEL_FILE,
            "created": report["created"],
        },
    )


# --------------------------------------------------------------------------- reading


def read_final(
    st: optuna.Study, name: str, storage: str | None
) -> tuple[dict[str, Any] | None, Path | None]:
    """The study's ``report.json`` and its folder; ``(None, None)`` when not finalized.

    A folder recorded as relative is taken from the study's folder; a report that cannot be
    read or lacks ``REQUIRED_KEYS`` is a UserError (finalize again).
    """
    from clothopt.paths import study_dir

    attr = st.user_attrs.get(FINAL_ATTR)
    if not attr:
        return None, None
    folder = Path(attr["dir"]).expanduser()
    if not folder.is_absolute() and not folder.is_dir():
        folder = study_dir(storage, name) / folder
    path = folder / REPORT_FILE
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"study {name!r} is finalized but its report {path} cannot be read ({exc}); "
            f"finalize it again"
        ) from None
    missing = REQUIRED_KEYS - set(report)
    if missing:
        raise UserError(f"{path} lacks {', '.join(sorted(missing))}: finalize {name} again")
    return report, folder


def load_final(name: str, storage: str | None = None) -> tuple[dict[str, Any], Path]:
    """A finalized study's ``report.json`` and its folder; UserError when not finalized."""
    from clothopt import study as study_mod

    st, _ = study_mod.load(name, storage)
    report, folder = read_final(st, name, storage)
    if report is None or folder is None:
        raise UserError(f"study {name!r} is not finalized (run `clothopt study finalize`)")
    return report, folder
