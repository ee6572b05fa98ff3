"""THE adapter to names Optuna and optuna-dashboard keep private; nothing else in clothopt
uses one (``tests/test_imports.py`` checks), and CI runs the tests that exercise it against
the newest releases of both (``.ci/run``).

Each is here because the public API has no equivalent:

- a study's storage and id, a trial's id: the exactly-once queue pops WAITING trials and
  fails dead workers' trials through the storage (``BaseStorage``'s public methods), which
  take ids; ``optuna.load_study`` wraps an RDB storage in a private cache (``_backend``);
- the parameters a trial was enqueued with (``study.enqueue_trial`` keeps them in a system
  attribute; ``trial.params`` holds only those the trial suggested before it stopped);
- the study system attribute under which optuna-dashboard lists an artifact of a FINISHED
  trial (``optuna.artifacts.upload_artifact`` refuses those: their attributes are frozen).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

__all__ = [
    "FINISHED_TRIAL_ARTIFACT_PREFIX",
    "enqueued_params",
    "finished_trial_artifact_key",
    "rdb_of",
    "storage_of",
    "study_id",
    "trial_id",
]

# optuna_dashboard.artifact._backend._dashboard_artifact_prefix (a study system attr):
# the dashboard lists and serves an artifact of trial <id> stored under this key
FINISHED_TRIAL_ARTIFACT_PREFIX = "dashboard:artifacts:"


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes."""
    return study._storage


def study_id(study: Any) -> int:
    """The storage's id of a ``Study`` or a ``FrozenStudy`` (a summary from get_all_studies)."""
    return int(study._study_id)


def trial_id(trial: Any) -> int:
    """The storage's id of a ``Trial`` or a ``FrozenTrial`` (not its number)."""
    return int(trial._trial_id)


def rdb_of(storage: Any) -> Any:
    """The storage itself: ``optuna.load_study`` wraps an RDBStorage in a cache."""
    return getattr(storage, "_backend", storage)


def enqueued_params(trial: FrozenTrial) -> dict[str, Any] | None:
    """The parameters ``study.enqueue_trial`` gave ``trial``; None if it was not enqueued."""
    fixed = trial.system_attrs.get("fixed_params")
    return dict(fixed) if fixed else None


def finished_trial_artifact_key(trial: Any, artifact_id: str) -> str:
    """The study system attr that lists ``artifact_id`` as an artifact of finished ``trial``."""
    return f"{FINISHED_TRIAL_ARTIFACT_PREFIX}{trial_id(trial)}:{artifact_id}"
