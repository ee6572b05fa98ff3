"""A generic study engine on Optuna: storage, an exactly-once trial queue, a resilient runner.

It knows nothing of clothopt's models, data or search spaces (only ``clothopt.errors``,
``clothopt.logging``, ``clothopt.paths`` and ``clothopt._io``): callers pass plain values (a
budget, whether the sampler may be asked) and callbacks. Optuna's private names it needs live
in :mod:`clothopt.engine.optuna_private`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clothopt.engine import storage as _storage
from clothopt.engine.queue import (
    DIED,
    HEARTBEAT_LOST,
    INTERRUPTED,
    MAX_RETRIES_ATTR,
    OWNER_ATTR,
    TERMINATED,
    max_retries,
    recover,
    requeue,
    requeue_stale,
    set_max_retries,
    trial_params,
)
from clothopt.engine.runner import RunSummary, TrialCallback, optimize
from clothopt.engine.storage import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    storage_errors,
    storage_of,
    storage_url_of,
    study_id,
    trial_id,
)

if TYPE_CHECKING:
    import optuna

__all__ = [
    "DIED",
    "GRACE_PERIOD",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_LOST",
    "INTERRUPTED",
    "MAX_RETRIES_ATTR",
    "OWNER_ATTR",
    "TERMINATED",
    "RunSummary",
    "TrialCallback",
    "max_retries",
    "open_storage",
    "optimize",
    "recover",
    "requeue",
    "set_max_retries",
    "storage_errors",
    "storage_of",
    "storage_url_of",
    "study_id",
    "trial_id",
    "trial_params",
]


def open_storage(url: str | None = None, *, create: bool = False) -> optuna.storages.RDBStorage:
    """:func:`clothopt.engine.storage.open_storage` whose stale-heartbeat trials are requeued;
    ``create``: make a SQLite file that does not exist (else it is a UserError)."""
    return _storage.open_storage(url, stale_trial_callback=requeue_stale, create=create)
