"""The trial queue: pop a WAITING trial atomically, put back the trials of dead workers.

How a queue of enqueued trials ends with every one COMPLETE exactly once, whatever number of
workers run it and whatever happens to them:

1. A worker takes a WAITING trial by switching it to RUNNING in one storage transaction; only
   one worker can win that switch, so each queued trial runs at most once.
2. A trial whose worker died stays RUNNING. It is detected (its process is gone on this host,
   or its heartbeat is older than the grace period), switched to FAIL (again one transaction:
   one detector wins) and a copy with the same parameters is enqueued, up to the study's
   max retries (:func:`set_max_retries`).
3. A worker whose trial was failed behind its back (a false alarm) loses its ``tell``: the
   storage refuses to finish a finished trial, so the copy's result is the only one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt._io import file_lock
from clothopt.engine.optuna_private import enqueued_params, storage_of, study_id, trial_id
from clothopt.engine.storage import GRACE_PERIOD, sql_engine_of
from clothopt.logging import get_logger

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DIED",
    "HEARTBEAT_LOST",
    "INTERRUPTED",
    "MAX_RETRIES_ATTR",
    "OWNER_ATTR",
    "TERMINATED",
    "defer",
    "max_retries",
    "owner",
    "pop_waiting",
    "recover",
    "requeue",
    "requeue_stale",
    "set_max_retries",
    "trial_params",
]

OWNER_ATTR = "clothopt:owner"  # trial system attr: which process runs it
MAX_RETRIES_ATTR = "clothopt:max_retries"  # study user attr: reruns of a dead worker's trial
DEFAULT_MAX_RETRIES = 3

# Reasons a trial is put back in the queue: its worker is gone, not its configuration at fault
DIED, INTERRUPTED, TERMINATED = "worker process died", "interrupted", "terminated"
HEARTBEAT_LOST = "heartbeat lost (worker died or lost the database)"
_REQUEUE_REASONS = (DIED, INTERRUPTED, TERMINATED)
# a clean stop (Ctrl-C, SIGTERM) is not the trial's fault: its copy does not use up a retry
_UNCOUNTED_REASONS = (INTERRUPTED, TERMINATED)

_log = get_logger(__name__)


# --------------------------------------------------------------------------- owner, retries


def _process_token(pid: int) -> str | None:
    """pid plus its start time, so a reused pid is not mistaken for the original process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"


def owner() -> dict[str, Any]:
    """Who runs a trial: this host and process (stored as the trial's ``OWNER_ATTR``)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": _process_token(os.getpid())}


def _owner_dead(who: dict[str, Any]) -> bool:
    if who.get("host") != socket.gethostname():
        return False  # another machine: its heartbeat decides
    return _process_token(int(who["pid"])) != who.get("token")


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters a trial runs with: those it was enqueued with, else those it chose."""
    return enqueued_params(trial) or dict(trial.params)


def set_max_retries(study: optuna.Study, n: int) -> None:
    """Record how many times a dead worker's trial is run again (a study user attr)."""
    study.set_user_attr(MAX_RETRIES_ATTR, int(n))


def max_retries(study: optuna.Study) -> int:
    return int(study.user_attrs.get(MAX_RETRIES_ATTR, DEFAULT_MAX_RETRIES))


def _retry_key(trial: FrozenTrial) -> tuple[int, int]:
    """(original trial number, attempt) of a trial; its successor has attempt + 1."""
    return int(trial.user_attrs.get("retry_of", trial.number)), int(
        trial.user_attrs.get("retries", 0)
    )


# --------------------------------------------------------------------------- lock, requeue


@contextlib.contextmanager
def _queue_lock(study: optuna.Study) -> Iterator[None]:
    """One process at a time re-enqueues trials of a study (check-then-enqueue is two steps).

    SQLite lives on one host: a file lock beside it. PostgreSQL: a session advisory lock,
    released by the server when a holder's connection dies.
    """
    engine = sql_engine_of(study)
    backend = engine.url.get_backend_name() if engine is not None else None
    if backend == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with file_lock(f"{engine.url.database}.clothopt-lock"):
            yield
    elif backend == "postgresql":
        from sqlalchemy import text

        digest = hashlib.sha256(f"clothopt-queue:{study.study_name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    else:
        yield


def _orphans(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """FAILed trials whose worker died and whose copy is not (yet) in the queue.

    A worker killed between failing a dead trial and enqueueing its copy leaves one; so does a
    stale-heartbeat trial failed by Optuna whose callback never ran. Faults inside a trial
    (with their own reason) are not orphans: running them again would fail again.
    ``trials``: the study's trials as just read (else they are read).
    """
    from optuna.trial import TrialState

    if trials is None:
        trials = study.get_trials(deepcopy=False)
    copied = {t.user_attrs["copy_of"] for t in trials if "copy_of" in t.user_attrs}
    keys = {_retry_key(t) for t in trials if "retry_of" in t.user_attrs}
    limit = max_retries(study)
    out = []
    for t in trials:
        reason = t.user_attrs.get("fail_reason", DIED)
        if t.state != TrialState.FAIL or reason not in _REQUEUE_REASONS or t.number in copied:
            continue
        if not trial_params(t):
            continue
        root, attempt = _retry_key(t)
        # (root, attempt + 1) present: copied before copies named their original
        if (root, attempt + 1) not in keys and (reason in _UNCOUNTED_REASONS or attempt < limit):
            out.append(t)
    return out


def _enqueue_copy(
    study: optuna.Study, trial: FrozenTrial, reason: str, *, counted: bool = True
) -> None:
    """Queue a copy of ``trial`` unless one exists or its retries are spent (hold the lock).

    ``counted=False``: the copy is the same attempt again (the run stopped, the trial did not
    fail), so it neither uses up a retry nor is refused for lack of one. Each copy names the
    trial it copies (``copy_of``), so a trial is copied once however often it is looked at.
    """
    root, attempt = _retry_key(trial)
    params = trial_params(trial)
    if not params:
        return  # killed before choosing parameters: nothing to run again
    nxt = attempt + 1 if counted else attempt
    if counted and attempt >= max_retries(study):
        _log.warning("trial %d failed %d times; not retried again", trial.number, attempt + 1)
        return
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("copy_of") == trial.number:
            return
        # a copy made before copies named their original
        old_style = counted and "copy_of" not in t.user_attrs and "retry_of" in t.user_attrs
        if old_style and _retry_key(t) == (root, nxt) and t.number != trial.number:
            return
    study.enqueue_trial(
        params,
        user_attrs={
            "retries": nxt,
            "retry_of": root,
            "retry_reason": reason,
            "copy_of": trial.number,
        },
        skip_if_exists=False,
    )


def requeue(
    study: optuna.Study,
    trial: FrozenTrial,
    reason: str,
    *,
    failed: bool = False,
    counted: bool = True,
) -> bool:
    """Fail a trial whose worker is gone and queue its parameters again (up to max retries).

    ``counted=False`` puts it back without using up a retry (a run stopped by an error).
    Returns False when another process got there first (it failed or finished the trial).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = storage_of(study)
    with _queue_lock(study):
        if not failed:
            try:
                storage.set_trial_user_attr(trial_id(trial), "fail_reason", reason)
                if not storage.set_trial_state_values(trial_id(trial), state=TrialState.FAIL):
                    return False
            except UpdateFinishedTrialError:
                return False
        _enqueue_copy(study, trial, reason, counted=counted)
    return True


def requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's stale-heartbeat callback: the trial it just failed is queued again."""
    requeue(study, trial, HEARTBEAT_LOST, failed=True)


def recover(study: optuna.Study) -> int:
    """Put back trials of dead workers: same-host processes at once, others by heartbeat."""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    now = time.time()
    count = 0
    # one read for the running trials and the orphans; again only if a trial was put back
    trials = study.get_trials(deepcopy=False)
    for trial in [t for t in trials if t.state == TrialState.RUNNING]:
        who = trial.system_attrs.get(OWNER_ATTR)
        if who is not None:
            dead = _owner_dead(who)
        else:  # popped, then killed before it could say who it is
            start = trial.datetime_start.timestamp() if trial.datetime_start else now
            dead = now - start > GRACE_PERIOD
        if dead and requeue(study, trial, DIED):
            count += 1
    if _orphans(study, None if count else trials):  # rare: look again under the lock
        with _queue_lock(study):
            for trial in _orphans(study):
                reason = trial.user_attrs.get("fail_reason", HEARTBEAT_LOST)
                _enqueue_copy(study, trial, reason, counted=reason not in _UNCOUNTED_REASONS)
                count += 1
    return count


def defer(study: optuna.Study, tid: int) -> bool:
    """Put this worker's RUNNING trial back to WAITING as it is (no copy, no retry used):
    it could not start yet. False when it was finished meanwhile (declared dead)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        return bool(storage_of(study).set_trial_state_values(tid, state=TrialState.WAITING))
    except UpdateFinishedTrialError:
        return False


def pop_waiting(
    study: optuna.Study,
    trials: list[FrozenTrial] | None = None,
    skip: Collection[int] = (),
) -> optuna.Trial | None:
    """Take one WAITING trial; the WAITING->RUNNING switch is atomic in the storage.

    ``trials``: a list to fill with the study's trials as read to find it (their states as
    before the switch), so that the caller need not read them again. ``skip``: trial ids not
    to take (ones this worker just deferred)."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = storage_of(study)
    read = storage.get_all_trials(study_id(study), deepcopy=False)
    if trials is not None:
        trials[:] = read
    for frozen in (t for t in read if t.state == TrialState.WAITING):
        if trial_id(frozen) in skip:
            continue
        try:
            if storage.set_trial_state_values(trial_id(frozen), state=TrialState.RUNNING):
                return optuna.Trial(study, trial_id(frozen))
        except UpdateFinishedTrialError:
            continue
    return None
