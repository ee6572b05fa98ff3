"""The one place that turns (storage URL, study name) into folders, and masks URLs for display.

Every file clothopt writes for a study lives under the storage's folder: the SQLite file's
folder, else ``./studies``. Study names are checked against :data:`NAME_RULE` so a name can
never point a path outside that folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clothopt.errors import InvalidArgument

__all__ = [
    "ARTIFACTS_ENV",
    "DEFAULT_STORAGE",
    "NAME_RULE",
    "artifact_dir",
    "check_name",
    "default_cache_dir",
    "masked_url",
    "report_dir",
    "studies_root",
    "study_dir",
]

DEFAULT_STORAGE = "sqlite:///studies/clothopt.db"
ARTIFACTS_ENV = "CLOTHOPT_ARTIFACTS"
NAME_RULE = "1-100 characters of letters, digits, '.', '_' and '-', not starting with '.' or '-'"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def check_name(name: str) -> str:
    """``name`` if it is a valid study name (:data:`NAME_RULE`); else :class:`InvalidArgument`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = name if len(str(name)) <= 40 else f"{str(name)[:40]}..."
        raise InvalidArgument(f"bad study name {shown!r}: use {NAME_RULE}")
    return name


def masked_url(url: str | None) -> str:
    """A storage URL with its password replaced by ``***``, fit to print or store."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url or DEFAULT_STORAGE).render_as_string(hide_password=True)
    except ArgumentError:
        # not a URL at all: keep only what follows the credentials
        return str(url).rsplit("@", 1)[-1]


def studies_root(storage_url: str | None) -> Path:
    """The folder of a storage's files (runs/, features/, artifacts/, reports/): the SQLite
    file's folder, else ./studies."""
    from sqlalchemy.engine import make_url

    url = make_url(storage_url or DEFAULT_STORAGE)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).expanduser().parent.absolute()
    return Path("studies").absolute()


def _inside(root: Path, *parts: str) -> Path:
    """``root / parts``, proven to stay inside ``root`` once resolved (no ``..``, no links out)."""
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise InvalidArgument(f"refusing to use {path}: it lies outside {root}")
    return path


def study_dir(storage_url: str | None, name: str) -> Path:
    """Where a study's files go: ``studies_root(storage_url) / "runs" / name``."""
    return _inside(studies_root(storage_url), "runs", check_name(name))


def report_dir(storage_url: str | None, name: str) -> Path:
    """The default folder of a comparison report: ``studies_root / "reports" / name``."""
    return _inside(studies_root(storage_url), "reports", check_name(name))


def default_cache_dir(storage_url: str | None) -> Path:
    return studies_root(storage_url) / "features"


def artifact_dir(storage_url: str | None, override: str | os.PathLike[str] | None = None) -> Path:
    """The artifact folder: ``override``, else ``$CLOTHOPT_ARTIFACTS``, else beside the studies."""
    chosen = override or os.environ.get(ARTIFACTS_ENV)
    if chosen:
        return Path(chosen).expanduser().absolute()
    return studies_root(storage_url) / "artifacts"  # beside runs/ and features/
