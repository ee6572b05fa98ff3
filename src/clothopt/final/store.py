"""The finalized study's contract: where it lives, what it holds, how it is written and read.

``<study folder>/final`` holds ``model.keras``, ``classes.json``, ``report.json`` and the
confusion-matrix figure; the study's user attribute ``FINAL_ATTR`` points at the folder. The
folder is written whole into a temporary folder beside it and renamed into place, so a crash
leaves the previous result or none, never a mix of two (an index ``index build`` put beside
the model is carried over). The record follows the folder: :func:`reconcile` squares them
after a stop between the swap and the record. ``read_final`` is the one reader.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt._io import writing
from clothopt.errors import DataError, NotFound, OutputConflict

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
    "reconcile",
    "recover",
    "set_final_attr",
    "write_report",
]

FINAL_ATTR = "clothopt:final"  # study user attr: {"dir", "trial", "test_f1_macro", ...}
MODEL_FILE = "model.keras"
REPORT_FILE = "report.json"
INDEX_FILE = "similar.npz"  # where `clothopt index build` puts an index by default
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


def recover(dest: Path) -> None:
    """Tidy what a killed finalize left: its temporary folder, or the previous result moved
    aside just before the swap (it comes back when nothing replaced it)."""
    from clothopt.outputs import recover as recover_folder

    recover_folder(dest, _TMP_PREFIX, _OLD_PREFIX)


def check_replaceable(dest: Path) -> None:
    """Refuse to replace a ``dest`` clothopt did not write (an :class:`OutputConflict`)."""
    from clothopt.outputs import FINAL

    if (dest.exists() or dest.is_symlink()) and not FINAL.recognise(dest):
        raise OutputConflict(
            f"{dest} exists and was not written by clothopt study finalize (not a final model "
            "folder): move it away first"
        )


def make_staging(dest: Path) -> Path:
    """A new private temporary folder beside ``dest``, after tidying what a killed run left.

    A ``dest`` that clothopt did not write is refused (an :class:`OutputConflict`); a folder
    that cannot be written, a :class:`WriteFailed`.
    """
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        recover(dest)
        check_replaceable(dest)
        return Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=dest.parent))


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """``report.json`` in ``folder`` (sorted keys, indented)."""
    with writing(folder / REPORT_FILE):
        (folder / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def publish(tmp: Path, dest: Path) -> None:
    """Make ``tmp``'s files readable by others, flush them, and swap ``tmp`` in as ``dest``
    (SIGINT and SIGTERM held across the swap: :func:`clothopt.outputs.swap_in`)."""
    from clothopt.outputs import swap_in

    check_replaceable(dest)  # again: it may have appeared while the model trained
    _keep_index(dest, tmp)
    swap_in(tmp, dest, _OLD_PREFIX)


def _keep_index(dest: Path, tmp: Path) -> None:
    # an index built beside the previous model is the user's, not ours to delete (it is now
    # stale: `clothopt similar` says so and asks for a rebuild)
    index = dest / INDEX_FILE
    if index.is_file() and not index.is_symlink() and not (tmp / INDEX_FILE).exists():
        with writing(tmp / INDEX_FILE):
            try:
                os.link(index, tmp / INDEX_FILE)
            except OSError:
                shutil.copy2(index, tmp / INDEX_FILE)


def set_final_attr(
    st: optuna.Study, folder: Path, report: dict[str, Any], test_f1: float, ci95: list[float]
) -> None:
    """Point the study at its finalized folder (``FINAL_ATTR``), SIGINT and SIGTERM held.

    ``final/`` is swapped in before this record is written: a process killed between the
    two leaves a record of the previous result, which :func:`reconcile` brings in line.
    """
    from clothopt.engine.interrupts import signals_held

    record = {
        "dir": str(folder),
        "trial": report["trial"],
        "test_f1_macro": test_f1,
        "f1_macro_ci95": ci95,
        "model": MODEL_FILE,
        "created": report["created"],
    }
    with signals_held():
        st.set_user_attr(FINAL_ATTR, record)


def reconcile(st: optuna.Study, dest: Path) -> dict[str, Any] | None:
    """Make the study's record agree with its ``final/`` folder ``dest`` (the folder is what
    was kept); returns the folder's report, or None when there is no usable one.

    After a finalize stopped between the swap and the record, or killed between the two
    renames of the swap (:func:`recover` runs first).
    """
    recover(dest)
    try:
        report = json.loads((dest / REPORT_FILE).read_text())
        trial, created = report["trial"], report["created"]
        f1, ci95 = report["test"]["f1_macro"], list(report["f1_macro_ci95"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    attr = st.user_attrs.get(FINAL_ATTR) or {}
    if (attr.get("trial"), attr.get("created")) != (trial, created) or Path(
        attr.get("dir", "")
    ) != dest:
        set_final_attr(st, dest, report, f1, ci95)
    return report


# --------------------------------------------------------------------------- reading


def read_final(
    st: optuna.Study, name: str, storage: str | None
) -> tuple[dict[str, Any] | None, Path | None]:
    """The study's ``report.json`` and its folder; ``(None, None)`` when not finalized.

    A folder recorded as relative is taken from the study's folder; a report that cannot be
    read or lacks ``REQUIRED_KEYS`` is a :class:`DataError` (finalize again).
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
        raise DataError(
            f"study {name!r} is finalized but its report {path} cannot be read ({exc}); "
            f"finalize it again"
        ) from None
    missing = REQUIRED_KEYS - set(report)
    if missing:
        raise DataError(f"{path} lacks {', '.join(sorted(missing))}: finalize {name} again")
    return report, folder


def load_final(name: str, storage: str | None = None) -> tuple[dict[str, Any], Path]:
    """A finalized study's ``report.json`` and its folder; :class:`NotFound` when not finalized."""
    from clothopt import study as study_mod

    st, _ = study_mod.load(name, storage)
    report, folder = read_final(st, name, storage)
    if report is None or folder is None:
        raise NotFound(f"study {name!r} is not finalized (run `clothopt study finalize`)")
    return report, folder
