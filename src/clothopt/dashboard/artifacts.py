"""Artifacts in optuna-dashboard: the store, per-trial validation reports, attached files."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from clothopt._io import atomic_path
from clothopt.engine.optuna_private import (
    FINISHED_TRIAL_ARTIFACT_PREFIX,
    finished_trial_artifact_key,
    storage_of,
    study_id,
)
from clothopt.engine.storage import storage_url_of
from clothopt.errors import InvalidArgument, NotFound, UserError, WriteFailed
from clothopt.logging import get_logger
from clothopt.paths import ARTIFACTS_ENV, artifact_dir

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts import FileSystemArtifactStore
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial


__all__ = [
    "METRIC_NAME",
    "REPORT_NAME",
    "StudyStores",
    "artifact_ids",
    "artifact_store",
    "attach_files",
    "publish_finalized",
    "remove_artifacts",
    "store_url_of",
    "study_artifact_store",
    "upload_validation_report",
    "validation_metrics_of",
    "validation_report",
]

REPORT_NAME = "validation_report.json"
METRIC_NAME = "val_f1_macro"  # what every trial's value is
# what optuna.artifacts.upload_artifact calls a file whose type it cannot guess
DEFAULT_MIMETYPE = "application/octet-stream"

_log = get_logger(__name__)


# --------------------------------------------------------------------------- artifact store


def artifact_store(folder: str | os.PathLike[str]) -> FileSystemArtifactStore:
    """A file-system artifact store in ``folder`` (created) whose writes are atomic."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteFailed(f"cannot create the artifact folder {path}: {exc.strerror}") from None
    return _atomic_store_class()(path)


def _atomic_store_class() -> type:
    from optuna.artifacts import FileSystemArtifactStore

    class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
        # the dashboard may read an artifact while it is written: it sees all of it or nothing
        def __init__(self, base_path: str | os.PathLike[str]) -> None:
            super().__init__(base_path)
            self.folder = Path(base_path).resolve()

        def write(self, artifact_id: str, content_body: BinaryIO) -> None:
            dest = (self.folder / artifact_id).resolve()
            if self.folder not in dest.parents:  # as the base class: no id leaves the folder
                raise InvalidArgument(f"bad artifact id {artifact_id!r}")
            with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
                shutil.copyfileobj(content_body, fh)

    return AtomicFileSystemArtifactStore


def artifact_ids(study: optuna.Study) -> list[str]:
    """The ids of every artifact of a study and of its trials (none of any other study)."""
    from optuna.artifacts import get_all_artifact_meta

    storage = storage_of(study)
    metas = get_all_artifact_meta(study)
    for trial in study.get_trials(deepcopy=False):
        metas += get_all_artifact_meta(trial, storage=storage)
    ids = [m.artifact_id for m in metas]
    for key in storage.get_study_system_attrs(study_id(study)):  # finished trials' artifacts
        if key.startswith(FINISHED_TRIAL_ARTIFACT_PREFIX):
            ids.append(key.rsplit(":", 1)[-1])  # <prefix><trial id>:<id>
    return sorted(set(ids))


def remove_artifacts(
    study: optuna.Study, artifacts: str | os.PathLike[str] | None = None
) -> list[str]:
    """Delete a study's artifact files from its store (``study delete``'s hook): the
    dashboard's, and in a study's store also the files it published there (final model,
    index) with their checksums; returns what was removed, in words."""
    from clothopt.store import published_keys

    ids = artifact_ids(study)
    url = storage_url_of(storage_of(study))
    store_url = store_url_of(study.user_attrs)
    if store_url:
        from clothopt.store import open_store

        removed = _remove_from(study_artifact_store(store_url), ids, store_url)
        keys = [k for key in published_keys(study) for k in (key, f"{key}.sha256")]
        return removed + _remove_from(open_store(store_url), keys, store_url)
    if not ids or (url is None and not (artifacts or os.environ.get(ARTIFACTS_ENV))):
        return []
    folder = artifact_dir(url, artifacts)
    if not folder.is_dir():
        return []
    return _remove_from(_atomic_store_class()(folder), ids, str(folder))


def _remove_from(store: Any, ids: Sequence[str], where: str) -> list[str]:
    from optuna.artifacts.exceptions import ArtifactNotFound

    removed = 0
    for artifact_id in ids:
        with contextlib.suppress(ArtifactNotFound, FileNotFoundError):
            store.remove(artifact_id)
            removed += 1
    return [f"{removed} artifact file(s) from {where}"] if removed else []


def _store_for(
    storage: BaseStorage, override: str | os.PathLike[str] | None
) -> FileSystemArtifactStore:
    return artifact_store(artifact_dir(storage_url_of(storage), override))


def store_url_of(user_attrs: Mapping[str, Any]) -> str | None:
    """The store URL a study records (``study create --store``), or None."""
    from clothopt.config import CONFIG_ATTR

    raw = user_attrs.get(CONFIG_ATTR)
    try:
        return json.loads(raw).get("store") if raw else None
    except (ValueError, AttributeError):
        return None


def study_artifact_store(url: str) -> Any:
    """The artifacts of a study with a store: under ``artifacts/`` in it, seen by every host."""
    from clothopt.store import open_store, prefixed

    return prefixed(open_store(url), "artifacts")


def _artifacts_of(
    study: optuna.Study, storage_url: str | None, override: str | os.PathLike[str] | None
) -> Any:
    """Where a study's artifacts go: its store when it has one, else the artifact folder."""
    url = store_url_of(study.user_attrs)
    if url:
        return study_artifact_store(url)
    return artifact_store(artifact_dir(storage_url, override))


class StudyStores:
    """The dashboard's artifact store: the artifact folder first, then the store of every
    study that has one (read again when an id is found nowhere: a study created since)."""

    def __init__(self, local: Any, storage: BaseStorage) -> None:
        self.local, self.storage = local, storage
        self._stores: dict[str, Any] = {}

    def _refresh(self) -> None:
        for summary in self.storage.get_all_studies():
            url = store_url_of(summary.user_attrs)
            if url and url not in self._stores:
                try:
                    self._stores[url] = study_artifact_store(url)
                except UserError as exc:  # one store down: the others still show
                    _log.warning("store %s: %s", url, exc)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for attempt in range(2):
            for store in (self.local, *self._stores.values()):
                with contextlib.suppress(ArtifactNotFound, FileNotFoundError):
                    return store.open_reader(artifact_id)
            if attempt == 0:
                self._refresh()
        raise ArtifactNotFound(f"artifact {artifact_id} not found")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.local.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.local.remove(artifact_id)


# --------------------------------------------------------------------------- trial artifacts


def validation_report(
    metrics: Mapping[str, Any], *, study: str = "", trial: int | None = None, params: Any = None
) -> dict[str, Any]:
    """A trial's per-class validation report from ``classification_metrics``' output."""
    classes = list(metrics["per_class"])
    return {
        "study": study,
        "trial": trial,
        "params": dict(params or {}),
        "split": "validation",
        "classes": classes,
        "per_class": {c: dict(metrics["per_class"][c]) for c in classes},
        "precision_macro": metrics["precision_macro"],
        "recall_macro": metrics["recall_macro"],
        "f1_macro": metrics["f1_macro"],
        "accuracy": metrics["accuracy"],
        # rows: true class, columns: predicted class, both in the order of "classes"
        "confusion_matrix": metrics["confusion_matrix"],
    }


def validation_metrics_of(trial: FrozenTrial) -> dict[str, Any] | None:
    """What ``classification_metrics`` gave the objective, from the trial's user attributes
    (the objective records them; see ``clothopt.objective.Objective``); None if it did not."""
    a = trial.user_attrs
    if "val_per_class" not in a or "val_confusion_matrix" not in a:
        return None
    return {
        "per_class": a["val_per_class"],
        "precision_macro": a["val_precision_macro"],
        "recall_macro": a["val_recall_macro"],
        "f1_macro": a["val_f1_macro"],
        "accuracy": a["val_accuracy"],
        "confusion_matrix": a["val_confusion_matrix"],
    }


def upload_validation_report(
    study: optuna.Study, trial: FrozenTrial, artifacts: str | None = None
) -> str | None:
    """Upload a finished trial's per-class report as the artifact ``validation_report.json``.

    An on-trial-end callback of the engine's runner (``callbacks=[upload_validation_report]``).
    The store follows from the study's storage URL (or ``$CLOTHOPT_ARTIFACTS``); a storage
    without a URL and no ``$CLOTHOPT_ARTIFACTS`` (in memory) has nowhere to put it, and a trial
    without recorded metrics (failed, pruned) has nothing to put: None. A failed upload does
    not fail the trial, whose figures are already in its user attributes: it is logged.
    """
    storage = storage_of(study)
    metrics = validation_metrics_of(trial)
    if metrics is None:
        return None
    has_store = bool(store_url_of(study.user_attrs))
    if (
        not has_store
        and storage_url_of(storage) is None
        and not (artifacts or os.environ.get(ARTIFACTS_ENV))
    ):
        return None
    report = validation_report(
        metrics, study=study.study_name, trial=trial.number, params=trial.params
    )
    body = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
    try:
        store = _artifacts_of(study, storage_url_of(storage), artifacts)
        # written from memory, named as the file it is (no temporary file on the way)
        return _attach_to_finished(study, trial, store, Path(REPORT_NAME), io.BytesIO(body))
    except (OSError, UserError, ConnectionError) as exc:
        _log.warning("trial %d: validation report not uploaded: %s", trial.number, exc)
        return None


def attach_files(
    study: optuna.Study,
    trial_number: int | None,
    storage_url: str | None,
    paths: Sequence[str | os.PathLike[str]],
    *,
    artifacts: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Upload files as artifacts of trial ``trial_number`` (None: of the study itself).

    Works for finished trials too (what ``study finalize`` needs). ``storage_url`` picks the
    artifact folder (see :func:`artifact_dir`; ``artifacts`` overrides it); pass the URL the
    study was opened with. Every path is checked before anything is uploaded. Each file is
    downloadable from the dashboard under its own name. Returns the artifact ids, in order.
    """
    from optuna.artifacts import upload_artifact

    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise NotFound(f"cannot attach {', '.join(missing)}: no such file")
    storage = storage_of(study)
    store = _artifacts_of(study, storage_url or storage_url_of(storage), artifacts)
    if trial_number is None:
        return [
            upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=study)
            for p in files
        ]
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == trial_number), None)
    if trial is None:
        raise NotFound(f"study {study.study_name!r} has no trial {trial_number}")
    if not trial.state.is_finished():
        return [
            upload_artifact(
                artifact_store=store, file_path=str(p), study_or_trial=trial, storage=storage
            )
            for p in files
        ]
    return [_attach_to_finished(study, trial, store, path) for path in files]


def publish_finalized(storage_url: str | None) -> Any:
    """A finalize ``on_finalized`` callback: upload the final files to the study's store (when
    it has one: the model is then usable by name from any machine, ``clothopt.store``) and show
    them under the trial in optuna-dashboard. Both are best effort: ``final/`` is in place
    either way, so a failure is logged, not raised."""

    def publish(study: optuna.Study, number: int, files: list[Path]) -> None:
        from clothopt.store import publish_final

        try:
            record = publish_final(study, storage_url, number, files)
            if record is not None:
                _log.info("uploaded the final model to %s", record["store"])
        except (UserError, OSError, ConnectionError) as exc:
            _log.warning("finalize: final model not uploaded to the store: %s", exc)
        try:
            attach_files(study, number, storage_url, files)
        except (UserError, OSError, ConnectionError) as exc:
            _log.warning("finalize: not attached to the dashboard: %s", exc)

    return publish


def _attach_to_finished(
    study: optuna.Study,
    trial: FrozenTrial,
    store: FileSystemArtifactStore,
    path: Path,
    body: BinaryIO | None = None,
) -> str:
    """Upload ``path`` (or ``body``, named ``path``) as an artifact of a finished trial;
    returns its id.

    A finished trial's attributes are frozen: its metadata goes where optuna-dashboard looks
    for it too (the study's system attrs); the file first, so a listed one exists.
    """
    meta = _meta_for(path)
    if body is not None:
        store.write(meta.artifact_id, body)
    else:
        with open(path, "rb") as fh:
            store.write(meta.artifact_id, fh)
    key = finished_trial_artifact_key(trial, meta.artifact_id)
    storage_of(study).set_study_system_attr(
        study_id(study), key, json.dumps(dataclasses.asdict(meta))
    )
    return meta.artifact_id


def _meta_for(path: Path) -> optuna.artifacts.ArtifactMeta:
    """Metadata as optuna.artifacts.upload_artifact makes it (a new id, type from the name)."""
    import mimetypes
    import uuid

    from optuna.artifacts import ArtifactMeta

    mimetype, encoding = mimetypes.guess_type(path.name)
    return ArtifactMeta(
        artifact_id=str(uuid.uuid4()),
        filename=path.name,
        mimetype=mimetype or DEFAULT_MIMETYPE,
        encoding=encoding,
    )
