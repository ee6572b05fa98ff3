"""The optimize loop: pop or ask a trial, run it under a heartbeat, tell, call back, repeat.

A worker stops when nothing is WAITING and nothing is RUNNING elsewhere; while other workers
still run trials it waits, so a trial orphaned late is still picked up.

How a trial ends, by what its objective raised:

- nothing: COMPLETE; ``optuna.TrialPruned``: PRUNED;
- :class:`~clothopt.errors.TrialFailed`, ``MemoryError`` or an out-of-memory error: FAIL with
  that reason, and the run goes on with the next trial;
- :class:`~clothopt.errors.NotReady` (another worker is computing what it needs): back to
  WAITING as it is, uncounted; this worker takes another trial and sleeps briefly only when
  every WAITING trial is one it deferred;
- :class:`~clothopt.errors.UserError` or :class:`~clothopt.errors.StorageUnavailable`: the
  trial goes back in the queue (not counted as a retry) and the error is raised: every other
  trial would hit it too. A refused write (a full disk, a file-size limit, no permission:
  an ``OSError`` of :data:`clothopt._io.WRITE_ERRNOS`) is such an error, raised as a
  :class:`~clothopt.errors.WriteFailed`;
- ``KeyboardInterrupt`` or :class:`~clothopt.errors.Terminated` (SIGTERM), at any moment
  from taking the trial to telling it: back in the queue (not counted as a retry), then raised;
  so is any other exception raised after such a signal arrived (a library may turn the
  interrupt into its own error), and a trial that ends normally after one (a library
  swallowed it: raised in a finalizer, Python only prints it; the hooks keep that off stderr).
  Taking a trial and putting one back run with those signals held, so neither is cut in half
  (as does every storage call: :mod:`clothopt.engine.held_storage`);
- anything else (a bug): FAIL with its repr, then raised.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt._io import write_failed
from clothopt.engine.interrupts import interrupt_since, interrupts_raise, received, signals_held
from clothopt.engine.leases import allow_deferral
from clothopt.engine.queue import (
    INTERRUPTED,
    OWNER_ATTR,
    TERMINATED,
    defer,
    owner,
    pop_waiting,
    recover,
    requeue,
)
from clothopt.engine.storage import HEARTBEAT_INTERVAL, storage_of, trial_id
from clothopt.errors import NotReady, StorageUnavailable, Terminated, TrialFailed, UserError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "POLL_SECONDS",
    "RunSummary",
    "TrialCallback",
    "optimize",
    "rss_mb",
]

POLL_SECONDS = float(os.environ.get("CLOTHOPT_POLL_SECONDS", "2"))

TrialCallback = Callable[["optuna.Study", "FrozenTrial"], None]


@dataclass
class RunSummary:
    ran: int = 0
    complete: int = 0
    failed: int = 0
    pruned: int = 0
    recovered: int = 0
    seconds: float = 0.0
    best_value: float | None = None
    best_params: dict[str, Any] | None = None


class _Heartbeat:
    def __init__(self, storage: Any, trial_id: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(storage, trial_id), daemon=True, name="clothopt-heartbeat"
        )

    def _run(self, storage: Any, trial_id: int) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat must not kill the trial
                storage.record_heartbeat(trial_id)
            if self._stop.wait(HEARTBEAT_INTERVAL):
                return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _fault_reason(exc: BaseException) -> str | None:
    """A fault that ends one trial (the study goes on), or None for an error to raise."""
    name = type(exc).__name__
    if isinstance(exc, TrialFailed):
        return str(exc)
    if isinstance(exc, MemoryError) or name in ("ResourceExhaustedError", "OutOfMemoryError"):
        return f"out of memory: {str(exc).strip().splitlines()[0] if str(exc).strip() else name}"
    if "out of memory" in str(exc).lower() or "RESOURCE_EXHAUSTED" in str(exc):
        return f"out of memory: {str(exc).strip().splitlines()[0]}"
    return None


def _storage_failure(exc: BaseException) -> bool:
    import optuna
    import sqlalchemy

    return isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.DBAPIError))


def _run_one(
    study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]
) -> tuple[str, FrozenTrial]:
    """Run one trial and tell it; returns how it ended and the trial as stored now."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = storage_of(study)
    tid = trial_id(trial)
    mark = received()
    with _Heartbeat(storage, tid):
        try:
            with allow_deferral():
                value, state = objective(trial), TrialState.COMPLETE
            if (interrupt := interrupt_since(mark)) is not None:
                raise interrupt  # a library swallowed it: the trial goes back all the same
            # resident memory after each trial: a long study must stay flat (benchmarks read it)
            storage.set_trial_user_attr(tid, "rss_mb", rss_mb())
        except optuna.TrialPruned:
            state, value = TrialState.PRUNED, None
        except NotReady:
            if (interrupt := interrupt_since(mark)) is not None:
                raise interrupt from None
            defer(study, tid)  # it waits for the other worker; this one runs another
            return "deferred", storage.get_trial(tid)
        except (UserError, StorageUnavailable) as exc:
            # a mistake every trial would make: this one waits in the queue for the fix
            requeue(study, storage.get_trial(tid), f"stopped: {exc}"[:500], counted=False)
            raise
        except Exception as exc:
            if (interrupt := interrupt_since(mark)) is not None:
                raise interrupt from exc  # put back uncounted by the loop, as any interrupt
            if (failed := write_failed(exc)) is not None:
                # the disk, not the trial: it waits in the queue until there is room
                requeue(study, storage.get_trial(tid), f"stopped: {failed}"[:500], counted=False)
                raise failed from None
            if _storage_failure(exc):
                # the database, not the trial (read-only, locked): back uncounted if it can
                # still take that; the CLI words the error (engine.storage.storage_errors)
                with contextlib.suppress(Exception):
                    requeue(study, storage.get_trial(tid), "stopped: storage", counted=False)
                raise
            reason = _fault_reason(exc)
            if reason is None:
                with contextlib.suppress(Exception):
                    storage.set_trial_user_attr(tid, "fail_reason", repr(exc)[:500])
                    storage.set_trial_state_values(tid, state=TrialState.FAIL)
                raise
            storage.set_trial_user_attr(tid, "fail_reason", reason)
            state, value = TrialState.FAIL, None
        try:
            if state == TrialState.COMPLETE:
                study.tell(trial, value)
            else:
                study.tell(trial, state=state)
        except UpdateFinishedTrialError:
            # declared dead meanwhile; its copy will run (or has run) instead
            return "lost", storage.get_trial(tid)
        except ValueError as exc:
            if "finished" not in str(exc):
                raise
            return "lost", storage.get_trial(tid)
    frozen = storage.get_trial(tid)
    outcome = {TrialState.COMPLETE: "complete", TrialState.FAIL: "failed"}.get(
        frozen.state, "pruned"
    )
    return outcome, frozen


def _next_trial(
    study: optuna.Study, budget: int, ask_sampler: bool, skip: set[int]
) -> optuna.Trial | None:
    from optuna.trial import TrialState

    trials: list[FrozenTrial] = []
    trial = pop_waiting(study, trials, skip)
    if trial is not None or not ask_sampler:
        return trial
    # nothing was WAITING: the trials pop_waiting just read are the ones to count
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    if sum(t.state in counted for t in trials) >= budget:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are ours (see _Heartbeat), not optimize's
        return study.ask()


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    budget: int,
    ask_sampler: bool = True,
    n_trials: int | None = None,
    timeout: float | None = None,
    progress: bool = True,
    describe: Callable[[FrozenTrial], str] | None = None,
    callbacks: Sequence[TrialCallback] = (),
) -> RunSummary:
    """Run trials until the study's ``budget`` is done (or ``n_trials`` / ``timeout`` here).

    Trials come from the queue first; with ``ask_sampler`` the sampler proposes more while
    fewer than ``budget`` trials are counted (a grid's trials are all enqueued: no asking).
    ``describe`` words a COMPLETE trial for the progress bar. Each of ``callbacks`` is called
    with the study and the finished trial, after it is told.
    """
    import gc

    from optuna.trial import TrialState

    # Objects alive now (libraries, data set, config) live for the whole run: moving them out
    # of the collector's reach makes the per-trial gc.collect() cheap (bench: 1.65 s -> 0.26 s
    # outside training per trial, same memory).
    gc.collect()
    gc.freeze()
    summary = RunSummary()
    deferred: set[int] = set()  # trials put back for lack of what another worker computes
    start = time.perf_counter()
    bar = _progress_bar(study, budget) if progress else None
    try:
        with interrupts_raise():
            while n_trials is None or summary.ran < n_trials:
                if timeout is not None and time.perf_counter() - start >= timeout:
                    break
                trial = None
                try:
                    with signals_held():
                        summary.recovered += recover(study)
                        trial = _next_trial(study, budget, ask_sampler, deferred)
                        if trial is not None:
                            storage_of(study).set_trial_system_attr(
                                trial_id(trial), OWNER_ATTR, owner()
                            )
                    if trial is None and deferred:
                        time.sleep(POLL_SECONDS)  # nothing else to run: give them a moment
                        deferred.clear()
                        continue
                    if trial is None:
                        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                            break
                        time.sleep(POLL_SECONDS)  # others are running trials that may come back
                        continue
                    outcome, frozen = _run_one(study, trial, objective)
                except (KeyboardInterrupt, Terminated) as exc:
                    if trial is not None:
                        _put_back(study, trial, exc)
                    raise
                if outcome == "deferred":
                    deferred.add(trial_id(trial))
                    continue
                summary.ran += 1
                if outcome == "complete":
                    summary.complete += 1
                elif outcome == "failed":
                    summary.failed += 1
                elif outcome == "pruned":
                    summary.pruned += 1
                if bar is not None:
                    _advance(bar, frozen, describe)
                for callback in callbacks:
                    callback(study, frozen)
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - start
    with contextlib.suppress(ValueError):
        best = study.best_trial
        summary.best_value, summary.best_params = best.value, best.params
    return summary


def _put_back(study: optuna.Study, trial: optuna.Trial, exc: BaseException) -> None:
    """A run stopped by Ctrl-C or SIGTERM: its trial goes back in the queue, uncounted."""
    reason = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else TERMINATED
    with signals_held():  # a second Ctrl-C must not leave it half put back
        requeue(study, storage_of(study).get_trial(trial_id(trial)), reason, counted=False)


def _progress_bar(study: optuna.Study, total: int) -> Any:
    from optuna.trial import TrialState
    from tqdm import tqdm

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return tqdm(
        total=total,
        initial=min(done, total),
        desc=study.study_name,
        unit="trial",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None,
    )


def _advance(bar: Any, trial: FrozenTrial, describe: Callable[[FrozenTrial], str] | None) -> None:
    bar.update(1)
    if trial.state.name == "COMPLETE":
        if describe is not None:
            bar.set_postfix_str(describe(trial))
        else:
            bar.set_postfix_str(f"#{trial.number} {trial.params} value {trial.value:.4g}")
    else:
        bar.write(
            f"trial {trial.number} {trial.state.name}: {trial.user_attrs.get('fail_reason', '')}"
        )
