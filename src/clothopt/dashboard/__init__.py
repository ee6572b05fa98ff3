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
  :func:`attach_files`; :func:`publish_finalized` (finalize's callback) also uploads them to
  the study's store.

Artifacts live in a ``FileSystemArtifactStore`` whose folder follows from the storage URL the
way ``paths.study_dir`` does (``<folder of the SQLite file>/artifacts``, else
``./studies/artifacts``), or ``$CLOTHOPT_ARTIFACTS``. Workers on several machines (PostgreSQL)
must share that folder (set ``$CLOTHOPT_ARTIFACTS`` to the same shared path everywhere), or
the study has a store (``study create --store``): its artifacts are then written under
``artifacts/`` in the store, and the server reads the folder first, then every study's store.

Watching live: the dashboard reads the storage on every request (it caches a study's trials
for 2 s below 100 trials, longer above) and its pages poll it every 10 s while "Live Update"
is on (the switch in its side bar), so trials appear and change state while ``clothopt study
optimize`` runs, from any number of workers writing to the same database.
"""

from __future__ import annotations

from clothopt.dashboard.artifacts import (
    METRIC_NAME,
    REPORT_NAME,
    artifact_ids,
    artifact_store,
    attach_files,
    publish_finalized,
    remove_artifacts,
    upload_validation_report,
    validation_metrics_of,
    validation_report,
)
from clothopt.dashboard.note import describe_study, study_note
from clothopt.dashboard.server import DashboardServer, serve
from clothopt.paths import ARTIFACTS_ENV, artifact_dir

__all__ = [
    "ARTIFACTS_ENV",
    "METRIC_NAME",
    "REPORT_NAME",
    "DashboardServer",
    "artifact_dir",
    "artifact_ids",
    "artifact_store",
    "attach_files",
    "describe_study",
    "publish_finalized",
    "remove_artifacts",
    "serve",
    "study_note",
    "upload_validation_report",
    "validation_metrics_of",
    "validation_report",
]
