"""optuna-dashboard on clothopt's studies: a note per study, artifacts per trial, one command.

What the dashboard shows, and where it comes from:

- the study's note (Markdown, optuna-dashboard's note API) and its metric's name: written by
  :func:`describe_study`, the creation hook ``clothopt study create`` passes to
  ``study.create``;
- each trial's figures: the user attributes the objective records;
- each trial's per-class validation report (``validation_report.json``): built from those
  attributes and uploaded when the trial ends by :func:`upload_validation_report`, a runner
  callback ``clothopt study optimize`` registers;
- files attached later (the finalized trial's confusion matrix, ``report.json``, the model):
  :func:`attach_files`.

Artifacts live in a ``FileSystemArtifactStore`` whose folder follows from the storage URL the
way ``paths.study_dir`` does (``<folder of the SQLite file>/artifacts``, else
``./studies/artifacts``), or ``$CLOTHOPT_ARTIFACTS``. Workers on several machines (PostgreSQL)
must share that folder (set ``$CLOTHOPT_ARTIFACTS`` to the same shared path everywhere).

Watching live: the dashboard reads the storage on every request (it caches a study's trials
for 2 s below 100 trials, longer above) and its pages poll it every 10 s while "Live Update"
is on (the switch in its side bar), so trials appear and change state while ``clothopt study
optimize`` runs, from any number of workers writing to the same database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from clothopt._io import atomic_path
from clothopt.engine import storage_of, storage_url_of, study_id, trial_id
from clothopt.engine.storage import artifact_file, default_artifact_mimetype
from clothopt.errors import UserError
from clothopt.paths import ARTIFACTS_ENV, DEFAULT_STORAGE, artifact_dir, masked_url
from clothopt.reports.render import markdown_table

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from clothopt.config import StudyConfig

__all__ = [
    "ARTIFACTS_ENV",
    "METRIC_NAME",
    "REPORT_NAME",
    "DashboardServer",
    "artifact_dir",
    "artifact_store",
    "attach_files",
    "describe_study",
    "serve",
    "study_note",
    "upload_validation_report",
    "validation_metrics_of",
    "validation_report",
]

REPORT_NAME = "validation_report.json"
METRIC_NAME = "val_f1_macro"  # what every trial's value is
# optuna-dashboard's own place for a trial's artifact metadata in the study's system attrs
# (optuna_dashboard.artifact._backend._dashboard_artifact_prefix); the only one it accepts for
# a trial that has already finished, whose own attributes the storage no longer changes
_FINISHED_TRIAL_ARTIFACT_PREFIX = "dashboard:artifacts:"

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- artifact store


def artifact_store(folder: str | os.PathLike[str]) -> ArtifactStore:
    """A file-system artifact store in ``folder`` (created) whose writes are atomic."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the artifact folder {path}: {exc.strerror}") from None
    return _atomic_store_class()(path)


def _atomic_store_class() -> type:
    from optuna.artifacts import FileSystemArtifactStore

    class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
        # the dashboard may read an artifact while it is written: it sees all of it or nothing
        def write(self, artifact_id: str, content_body: BinaryIO) -> None:
            dest = artifact_file(self, artifact_id)  # rejects ids that leave the folder
            with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
                shutil.copyfileobj(content_body, fh)

    return AtomicFileSystemArtifactStore


def _store_for(storage: BaseStorage, override: str | os.PathLike[str] | None) -> ArtifactStore:
    return artifact_store(artifact_dir(storage_url_of(storage), override))


# --------------------------------------------------------------------------- study note


def _cell(value: Any) -> str:
    """A value as inline code in a Markdown table cell (the renderer escapes its pipes)."""
    text = str(value).replace("\n", " ")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if text else "—"


def _table(header: tuple[str, str], rows: Sequence[tuple[str, Any]]) -> list[str]:
    cells = [{header[0]: key, header[1]: _cell(value)} for key, value in rows]
    return markdown_table(cells, header).splitlines()


def _fenced(text: str, lang: str = "") -> list[str]:
    # a fence longer than any run of backticks in the text, so the text cannot close it
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{lang}", text, fence]


def study_note(config: StudyConfig) -> str:
    """The study's note: what it searches, on what, with what, and how it was made."""
    space = config.space
    training = (
        f"cached features (cache {config.cache_dir})"
        if config.use_cache
        else "end to end (every epoch through the frozen base)"
    )
    lines = [
        f"# {config.name}",
        "",
        f"clothopt study: backbone **{config.backbone}**, search space **{space.name}**, "
        f"sampler **{config.sampler}**, {config.budget()} trials. Each trial trains the "
        "classification head and returns the validation macro-F1 (maximized); every trial's "
        f"figures are in its user attributes and its per-class report is the artifact "
        f"`{REPORT_NAME}`.",
        "",
        *_table(
            ("Study", "Value"),
            [
                ("Backbone", config.backbone),
                ("Weights", config.weights),
                ("Data set", config.data),
                ("Data fingerprint", config.data_fingerprint),
                (f"Classes ({len(config.classes)})", ", ".join(config.classes)),
                ("Training", training),
                ("Epochs per trial", config.epochs),
                ("Seed", config.seed),
                ("Resize", config.resize),
                ("Pruner", config.pruner),
                ("Retries of a dead worker's trial", config.max_retries),
            ],
        ),
        "",
        f"## Search space: {space.name}",
        "",
    ]
    if space.description:
        lines += [space.description, ""]
    lines += _table(
        ("Parameter", "Values"),
        [(name, p.describe()) for name, p in space.params.items()],
    )
    lines += ["", f"## Sampler: {config.sampler}", ""]
    args = sorted(config.sampler_args.items())
    lines += _table(("Argument", "Value"), args) if args else ["(no arguments)"]
    lines += ["", "## Versions", ""]
    lines += _table(("Package", "Version"), sorted(config.versions.items()))
    lines += ["", "## Created with", ""]
    lines += _fenced(config.command, "sh") if config.command else ["(the Python API)"]
    return "\n".join(lines) + "\n"


def describe_study(study: optuna.Study, config: StudyConfig) -> None:
    """What optuna-dashboard shows about the study: :func:`study_note` and its metric's name."""
    import warnings

    from optuna_dashboard import save_note

    save_note(study, study_note(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is flagged experimental
        study.set_metric_names([METRIC_NAME])  # plots say "val_f1_macro", not "Objective 0"


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
    if storage_url_of(storage) is None and not (artifacts or os.environ.get(ARTIFACTS_ENV)):
        return None
    report = validation_report(
        metrics, study=study.study_name, trial=trial.number, params=trial.params
    )
    try:
        store = _store_for(storage, artifacts)
        with tempfile.TemporaryDirectory(prefix="clothopt-report-") as tmp:
            path = Path(tmp) / REPORT_NAME  # the file name is the artifact's name
            path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
            return _attach_to_finished(study, trial, store, path)
    except (OSError, UserError) as exc:
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
        raise UserError(f"cannot attach {', '.join(missing)}: no such file")
    storage = storage_of(study)
    store = artifact_store(artifact_dir(storage_url or storage_url_of(storage), artifacts))
    if trial_number is None:
        return [
            upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=study)
            for p in files
        ]
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == trial_number), None)
    if trial is None:
        raise UserError(f"study {study.study_name!r} has no trial {trial_number}")
    if not trial.state.is_finished():
        return [
            upload_artifact(
                artifact_store=store, file_path=str(p), study_or_trial=trial, storage=storage
            )
            for p in files
        ]
    return [_attach_to_finished(study, trial, store, path) for path in files]


def _attach_to_finished(
    study: optuna.Study, trial: FrozenTrial, store: ArtifactStore, path: Path
) -> str:
    """Upload ``path`` as an artifact of a finished trial; returns its id.

    A finished trial's attributes are frozen: its metadata goes where optuna-dashboard looks
    for it too (the study's system attrs); the file first, so a listed one exists.
    """
    meta = _meta_for(path)
    with open(path, "rb") as fh:
        store.write(meta.artifact_id, fh)
    key = f"{_FINISHED_TRIAL_ARTIFACT_PREFIX}{trial_id(trial)}:{meta.artifact_id}"
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
        mimetype=mimetype or default_artifact_mimetype(),
        encoding=encoding,
    )


# --------------------------------------------------------------------------- server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DashboardServer:
    """optuna-dashboard's WSGI app on a threaded wsgiref server that this process controls.

    ``port=0`` picks a free port (see :attr:`port`). Use :meth:`serve_forever` in the
    foreground, or ``with server.running():`` to serve from a thread and stop cleanly.
    """

    def __init__(
        self,
        storage_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        artifacts: str | os.PathLike[str] | None = None,
    ) -> None:
        from optuna_dashboard import wsgi

        from clothopt.engine import open_storage

        self.storage_url = storage_url or DEFAULT_STORAGE
        _check_sqlite_exists(self.storage_url)
        self.storage = open_storage(self.storage_url)
        self.artifact_dir = artifact_dir(self.storage_url, artifacts)
        app = wsgi(self.storage, artifact_store=artifact_store(self.artifact_dir))
        self._httpd = _make_server(host, port, app)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()  # all interfaces: the name others reach it by
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/dashboard/"

    @property
    def exposed(self) -> bool:
        """Reachable from other machines (the dashboard has no authentication)."""
        return not _is_loopback(self.host)

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    @contextlib.contextmanager
    def running(self) -> Iterator[DashboardServer]:
        self._thread = threading.Thread(
            target=self.serve_forever, daemon=True, name="clothopt-dashboard"
        )
        self._thread.start()
        try:
            yield self
        finally:
            self.shutdown()


def _check_sqlite_exists(url: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return  # a bad URL: open_storage says what is wrong with it
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        if not path.is_file():  # opening it would create an empty database
            raise UserError(
                f"no studies at {path} (create one with clothopt study create, or pass --storage)"
            )


def _make_server(host: str, port: int, app: Any) -> Any:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a browser's open request must not keep the process alive
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per poll of every open page is noise

    try:
        return make_server(host, port, app, server_class=Server, handler_class=Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (pick another --port)") from None
        reason = exc.strerror or str(exc)
        raise UserError(f"cannot listen on {host}:{port}: {reason}") from None


def serve(
    storage_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifacts: str | os.PathLike[str] | None = None,
    out: IO[str] | None = None,
) -> int:
    """``clothopt dashboard``: serve until Ctrl-C (exit 0) and say where."""
    out = out or sys.stdout
    server = DashboardServer(storage_url, host, port, artifacts)
    if server.exposed:
        print(
            f"clothopt: warning: the dashboard has no authentication; anyone who can reach "
            f"{host}:{server.port} can read, change and delete these studies",
            file=sys.stderr,
            flush=True,
        )
    print(f"optuna-dashboard on {masked_url(server.storage_url)}", file=out)
    print(f"artifacts in {server.artifact_dir}", file=out)
    print(f"open {server.url}  (Ctrl-C stops it)", file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=out, flush=True)
    finally:
        server.shutdown()
    return 0
