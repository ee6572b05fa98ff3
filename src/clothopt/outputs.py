"""May this command write here? The one owner of that question, and of output folders.

A command never writes over a file it reads in the same run, nor over a file or folder of
another kind or made by another command (a model, an index, an image, a study's ``final/``);
it replaces only an output of its own kind, recognised by its format (:class:`Kind`). Checks
run before the work, so a mistake costs nothing but one line:

- :func:`check_output_file` and :func:`check_output_dir`: an :class:`OutputConflict` for an
  output path that is an input (or the same file through a link), inside an input folder or
  holding one, a link, a special file (FIFO, device), or an existing file or folder that is
  not of the command's kind; then :func:`check_writable` on its folder.
- :func:`check_writable`: a :class:`WriteFailed` when the folder cannot take a new file
  (permissions, a file on the way, a read-only or full file system).
- :func:`staged_dir`: an output folder written whole beside its destination, then swapped in
  with SIGINT/SIGTERM held, so a reader (and an interrupt) sees the old set or the new one,
  never a mix. :func:`swap_in` and :func:`recover` are the parts study finalize uses too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clothopt._io import writing
from clothopt.data.layout import IMAGE_EXTENSIONS
from clothopt.errors import OutputConflict, WriteFailed

__all__ = [
    "COMPARE_BACKBONES",
    "COMPARE_SAMPLERS",
    "EVALUATION",
    "FINAL",
    "FOREIGN_SUFFIXES",
    "INDEX",
    "SIMILAR_PAGE",
    "Kind",
    "check_output_dir",
    "check_output_file",
    "check_writable",
    "recover",
    "staged_dir",
    "swap_in",
]

PathLike = str | os.PathLike[str]

# names that say a file is of another kind: an output never takes one it is not
FOREIGN_SUFFIXES = frozenset(
    {*IMAGE_EXTENSIONS, ".gif", ".webp", ".keras", ".h5", ".npz", ".html", ".htm", ".json"}
    | {".db", ".sqlite", ".sqlite3", ".toml"}
)


@dataclass(frozen=True)
class Kind:
    """An output kind: what it is, the command that writes it, and how to recognise one.

    ``recognise(path)`` says whether an existing file (or folder) is one of this kind;
    ``suffixes``: the names it may take from :data:`FOREIGN_SUFFIXES`; ``files``: for a
    folder, the names it may hold.
    """

    what: str
    command: str
    recognise: Callable[[Path], bool]
    suffixes: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- recognisers


def _json_dict(path: Path) -> dict[str, object] | None:
    if not path.is_file():  # a FIFO named so would block the read
        return None
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        obj = json.loads(path.read_text(encoding="utf-8"))
        return obj if isinstance(obj, dict) else None
    return None


def _head(path: Path, size: int = 512) -> bytes:
    if not path.is_file():
        return b""
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        return fh.read(size)
    return b""


def _is_index(path: Path) -> bool:
    import zipfile

    from clothopt.similar import INDEX_FORMAT

    try:
        with zipfile.ZipFile(path) as z, z.open("meta.npy") as fh:
            import numpy as np

            meta = json.loads(str(np.lib.format.read_array(fh, allow_pickle=False)))
    except Exception:  # not a zip, no meta, not numpy, not JSON: not an index
        return False
    return isinstance(meta, dict) and meta.get("format") == INDEX_FORMAT


def _is_similar_page(path: Path) -> bool:
    # similar's page begins so; compare's report.html and plotly's figures begin otherwise
    return _head(path).startswith(b'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">')


def _folder_of(files: frozenset[str], check: Callable[[Path], bool]) -> Callable[[Path], bool]:
    def recognise(folder: Path) -> bool:
        if folder.is_symlink() or not folder.is_dir() or not check(folder):
            return False  # the content check first: it reads one file, a listing may be long
        return {p.name for p in folder.iterdir() if not _leftover(p.name)} <= files

    return recognise


def _leftover(name: str) -> bool:
    # a killed atomic write's temporary file (clothopt._io.atomic_path)
    return name.startswith(".") and ".tmp" in name


def _is_evaluation(folder: Path) -> bool:
    report = _json_dict(folder / "report.json")
    return (
        report is not None and {"model", "dir", "images"} <= set(report) and "trial" not in report
    )


def _is_final(folder: Path) -> bool:
    if not (folder / "report.json").is_file():
        return False
    report = _json_dict(folder / "report.json")
    # a damaged report of finalize's own: finalizing again is the fix; an evaluation's is not
    return report is None or not _is_evaluation(folder)


def _markdown_title(title: str) -> Callable[[Path], bool]:
    return lambda folder: _head(folder / "report.md").startswith(title.encode())


INDEX = Kind("a similar-item index", "clothopt index build", _is_index, frozenset({".npz"}))
SIMILAR_PAGE = Kind(
    "a similar-items page",
    "clothopt similar --html",
    _is_similar_page,
    frozenset({".html", ".htm"}),
)
_EVALUATION_FILES = frozenset({"report.json", "confusion_matrix.html", "confusion_matrix.png"})
EVALUATION = Kind(
    "an evaluation",
    "clothopt evaluate --out",
    _folder_of(_EVALUATION_FILES, _is_evaluation),
    files=_EVALUATION_FILES,
)
# study finalize's folder; an index built with `index build MODEL DIR` lies beside the model
_FINAL_FILES = frozenset(
    {"model.keras", "classes.json", "report.json", "confusion_matrix.html", "confusion_matrix.png"}
)
FINAL = Kind(
    "a finalized model folder",
    "clothopt study finalize",
    _folder_of(_FINAL_FILES | {"similar.npz"}, _is_final),
    files=_FINAL_FILES,
)
_BACKBONE_FILES = frozenset(
    {"table1_validation_f1.csv", "table3_test.csv", "mcnemar.csv", "per_class_f1.csv"}
    | {"f1_difference.csv", "report.md", "report.html"}
)
COMPARE_BACKBONES = Kind(
    "a backbone comparison",
    "clothopt compare backbones",
    _folder_of(_BACKBONE_FILES, _markdown_title("# Backbone comparison")),
    files=_BACKBONE_FILES,
)
_SAMPLER_FILES = frozenset(
    {"samplers_summary.csv", "samplers_per_seed.csv", "best_so_far.csv", "best_so_far_mean.csv"}
    | {"samplers_pairwise.csv", "report.md", "report.html", "comparison.json"}
)
COMPARE_SAMPLERS = Kind(
    "a sampler comparison",
    "clothopt compare samplers",
    _folder_of(_SAMPLER_FILES, lambda f: "samplers" in (_json_dict(f / "comparison.json") or {})),
    files=_SAMPLER_FILES,
)


# --------------------------------------------------------------------------- checks


def _absolute(path: PathLike, option: str) -> Path:
    # ".", "x/.." and "/" have no name to stage beside: their parent's view of them does
    out = Path(os.path.abspath(Path(path).expanduser()))
    if out == out.parent:
        raise OutputConflict(f"{option} {path} is the root folder: choose another")
    return out


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return _real(a) == _real(b)


def _clash(out: Path, inputs: Iterable[PathLike], inside: bool) -> Path | None:
    """The input ``out`` would write over: the same file, an input it holds, or (``inside``
    refused) an input folder it lies in."""
    real = _real(out)
    for given in inputs:
        path = Path(given).expanduser()
        if _same(out, path):
            return path
        rp = _real(path)
        if inside and path.is_dir() and real.is_relative_to(rp):
            return path  # a new folder in an input folder changes what it holds
        if rp.is_relative_to(real):
            return path  # replacing the output would take the input with it
    return None


_FOLDER_KINDS = (FINAL, EVALUATION, COMPARE_BACKBONES, COMPARE_SAMPLERS)


def _refuse_inside_another(out: Path, kind: Kind, option: str) -> None:
    """Refuse an output inside a folder another command writes whole (a ``final/``, an
    evaluation, a comparison): it would be lost, or block, when that folder is replaced.
    The one exception: an index beside the model, where ``index build`` puts it by default."""
    for folder in _real(out).parents:
        for owner in _FOLDER_KINDS:
            if owner is FINAL and kind is INDEX and out.name == "similar.npz":
                continue
            if owner.recognise(folder):
                raise OutputConflict(
                    f"{option} {out} lies inside {folder}, {owner.what} that {owner.command} "
                    "replaces whole: choose a place outside it"
                )


def _refuse_special(out: Path, option: str) -> None:
    if out.is_symlink():
        raise OutputConflict(
            f"{option} {out} is a symbolic link: give the path of a new file or of an output "
            "of this command itself"
        )
    try:
        mode = out.stat().st_mode
    except OSError:
        return  # not there (or a file on the way: check_writable says so)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OutputConflict(
            f"{option} {out} is a special file (a device, FIFO or socket), not one to write"
        )


def check_output_file(
    path: PathLike, kind: Kind, inputs: Iterable[PathLike], option: str = "--out"
) -> Path:
    """``path`` as an output file of ``kind``, checked (see the module); returns it, absolute."""
    out = _absolute(path, option)
    clash = _clash(out, inputs, inside=False)
    if clash is not None:
        raise OutputConflict(
            f"{option} {out} would write over {clash}, which this command reads: "
            "choose another name"
        )
    _refuse_special(out, option)
    _refuse_inside_another(out, kind, option)
    if out.is_dir():
        raise OutputConflict(f"{option} {out} is a folder: give a file name")
    if out.exists() and not kind.recognise(out):
        raise OutputConflict(
            f"{option} {out} exists and is not {kind.what} ({kind.command} writes those): "
            "move it away or choose another name"
        )
    suffix = out.suffix.lower()
    if not out.exists() and suffix in FOREIGN_SUFFIXES - kind.suffixes:
        raise OutputConflict(
            f"{option} {out}: a {suffix} name is for another kind of file, not {kind.what}"
        )
    check_writable(out.parent, out)
    return out


def check_output_dir(
    path: PathLike, kind: Kind, inputs: Iterable[PathLike], option: str = "--out"
) -> Path:
    """``path`` as an output folder of ``kind``, checked (see the module); returns it.

    A new or empty folder is fine; an existing one only when it is ``kind``'s, since it is
    replaced whole. Returns it, absolute.
    """
    out = _absolute(path, option)
    if Path.cwd().is_relative_to(_real(out)):
        raise OutputConflict(
            f"{option} {path} holds the working folder, which replacing it would pull from "
            "under this shell: choose another folder"
        )
    clash = _clash(out, inputs, inside=True)
    if clash is not None:
        raise OutputConflict(
            f"{option} {out} would write into or over {clash}, which this command reads: "
            "choose another folder"
        )
    _refuse_special(out, option)
    _refuse_inside_another(out, kind, option)
    if out.exists() and not out.is_dir():
        raise OutputConflict(f"{option} {out} is a file, not a folder: choose another folder")
    if out.is_dir() and any(out.iterdir()) and not kind.recognise(out):
        raise OutputConflict(
            f"{option} {out} holds files that are not {kind.what} ({kind.command} replaces "
            "its folder whole): choose a new or empty folder"
        )
    check_writable(out.parent, out)
    return out


def check_writable(folder: PathLike, output: PathLike | None = None) -> None:
    """A :class:`WriteFailed` naming ``output`` (else ``folder``) when a new file cannot be
    made in ``folder`` (or, when it does not exist yet, in its nearest existing parent):
    cheap, so run it before long work."""
    here = Path(folder).expanduser().absolute()
    named = output if output is not None else folder
    while not here.exists() and not here.is_symlink() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise WriteFailed(f"cannot write {named}: {here} is not a folder")
    with writing(named):
        fd, probe = tempfile.mkstemp(prefix=".clothopt-probe-", dir=here)
        os.close(fd)
        os.unlink(probe)
        vfs = os.statvfs(here)
    if vfs.f_bavail == 0:
        raise WriteFailed(f"cannot write {named}: No space left on device")


# --------------------------------------------------------------------------- folders as one unit


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


def _prefixes(dest: Path) -> tuple[str, str]:
    return f".{dest.name}.stage-", f".{dest.name}.old-"


def recover(dest: Path, tmp_prefix: str | None = None, old_prefix: str | None = None) -> None:
    """Tidy what a killed writer of ``dest`` left: its staging folder, or the previous result
    moved aside just before the swap (it comes back when nothing replaced it). Folders of a
    writer still running are its own."""
    default_tmp, default_old = _prefixes(dest)
    parent = dest.parent
    if not parent.is_dir():
        return
    for prefix in (old_prefix or default_old, tmp_prefix or default_tmp):
        found = []
        for folder in parent.glob(prefix + "*"):
            with contextlib.suppress(FileNotFoundError):
                found.append((folder.stat().st_mtime, folder))
        # newest first: the latest result moved aside is the one to bring back
        for _, folder in sorted(found, reverse=True):
            pid = _owner_pid(folder, prefix)
            if pid is None or pid == os.getpid() or _alive(pid):
                continue
            if prefix == (old_prefix or default_old) and not dest.exists():
                os.replace(folder, dest)
            else:
                shutil.rmtree(folder, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
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


def _readable(folder: Path) -> None:
    # mkdtemp makes a private folder; others read these files
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    folder.chmod(0o755)


def swap_in(tmp: Path, dest: Path, old_prefix: str | None = None) -> None:
    """Swap the finished folder ``tmp`` in as ``dest`` with SIGINT and SIGTERM held.

    Two renames: a kill between them leaves the previous result aside, which :func:`recover`
    brings back.
    """
    from clothopt.engine.interrupts import signals_held

    old = None
    with writing(dest):
        _readable(tmp)
        _fsync_tree(tmp)
        try:
            with signals_held():  # a held signal is raised at the end of the block
                if dest.exists():
                    aside = (
                        f"{old_prefix or _prefixes(dest)[1]}{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    )
                    old = dest.with_name(aside)
                    os.replace(dest, old)
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
        finally:
            if old is not None and not dest.exists():
                os.replace(old, dest)  # the second rename failed: the previous result stays
            elif old is not None:
                shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(dest: PathLike, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a new private folder beside ``dest`` to write the output into; when the block
    ends without an error it replaces ``dest`` whole (:func:`swap_in`), else ``dest`` is left
    as it was. ``check(dest)`` runs again just before the swap (the folder may have changed
    while the work ran). A refused write is a :class:`WriteFailed` naming ``dest``."""
    dest = Path(dest).expanduser()
    tmp_prefix = _prefixes(dest)[0]
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        recover(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f"{tmp_prefix}{os.getpid()}-", dir=dest.parent))
    try:
        with writing(dest):
            yield tmp
        if check is not None:
            check(dest)
        swap_in(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
