"""Studies: one Optuna study per backbone and search, persisted through SQLAlchemy.

How a grid ends with every point COMPLETE exactly once, whatever number of workers run it and
whatever happens to them:

1. ``create`` enqueues every grid point as a WAITING trial; no worker ever asks the sampler for
   a grid point, so two workers can never draw the same one (GridSampler alone can).
2. A worker takes a WAITING trial by switching it to RUNNING in one storage transaction; only one
   worker can win that switch, so each queued trial runs at most once.
3. A trial whose worker died stays RUNNING. It is detected (its process is gone on this host, or
   its heartbeat is older than the grace period), switched to FAIL (again one transaction: one
   detector wins) and a copy with the same parameters is enqueued, up to ``max_retries``.
4. A worker whose trial was failed behind its back (a false alarm) loses its ``tell``: the
   storage refuses to finish a finished trial, so the copy's result is the only one.
5. A worker stops when nothing is WAITING and nothing is RUNNING elsewhere; while other
   workers still run trials it waits, so a point orphaned late is still picked up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt._io import atomic_write_json, file_lock
from clothopt.config import CONFIG_ATTR, PRUNERS, StudyConfig
from clothopt.errors import Terminated, UserError
from clothopt.paths import DEFAULT_STORAGE, default_cache_dir, masked_url, study_dir

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "RunSummary",
    "create",
    "delete",
    "grid_status",
    "list_studies",
    "load",
    "open_storage",
    "optimize",
    "requeue",
    "trial_rows",
]

OWNER_ATTR = "clothopt:owner"  # trial system attr: which process runs it
HEARTBEAT_INTERVAL = int(os.environ.get("CLOTHOPT_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("CLOTHOPT_GRACE_PERIOD", "30"))
POLL_SECONDS = float(os.environ.get("CLOTHOPT_POLL_SECONDS", "2"))

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- storage


def _masked(url: Any) -> str:
    return url.render_as_string(hide_password=True)


def open_storage(url: str | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats on; one clear line for any URL or connection problem."""
    import optuna
    import sqlalchemy
    from sqlalchemy.engine import make_url

    url = url or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(
            f"bad storage URL {url.split('@')[-1]!r} (e.g. {DEFAULT_STORAGE} or "
            "postgresql+psycopg://USER:PASS@HOST/DB)"
        ) from None
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # local workers share the file: wait for its lock instead of failing
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif backend == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
        engine_kwargs["pool_pre_ping"] = True
    elif backend not in ("mysql",):
        raise UserError(f"unsupported storage {backend!r}: use sqlite:/// or postgresql+psycopg://")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat arguments are flagged experimental
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                grace_period=GRACE_PERIOD,
                heartbeat_stale_trial_callback=_stale_callback,
            )
        except ModuleNotFoundError as exc:
            raise UserError(
                f"storage {_masked(parsed)} needs the driver {exc.name}: "
                "pip install 'clothopt[postgres]'"
            ) from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            if parsed.password:
                reason = reason.replace(str(parsed.password), "***")
            raise UserError(f"cannot open storage {_masked(parsed)}: {reason}") from None
    if backend == "sqlite":
        _serialize_sqlite_transactions(storage.engine)
    return storage


def _serialize_sqlite_transactions(engine: Any) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``.

    pysqlite starts a transaction only at the first write, so two workers can both read a
    trial as WAITING and both switch it to RUNNING: the check-and-set that makes a queue pop
    atomic is not atomic on SQLite by default. Taking the write lock at BEGIN (SQLAlchemy's
    documented recipe) serializes those transactions; waiting workers queue on the lock
    (timeout 60 s) instead of failing with "database is locked".
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the hooks (schema checks) are not reused


# --------------------------------------------------------------------------- create / load


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("clothopt", "optuna", "keras", "tensorflow", "numpy", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    out["keras_backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    return out


def _study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def create(
    *,
    backbone: str,
    space: str = "paper",
    sampler: str | None = None,
    n_trials: int | None = None,
    name: str | None = None,
    storage: str | None = None,
    data: str = "data",
    weights: str = "imagenet",
    epochs: int | None = None,
    seed: int = 0,
    resize: str = "nearest",
    pruner: str = "none",
    use_cache: bool = True,
    cache_dir: str | None = None,
    max_retries: int = 3,
    command: str = "",
    grid_order_seed: int | None = None,
) -> tuple[optuna.Study, StudyConfig]:
    """Validate everything, then create the study and enqueue its grid; on error change nothing.

    ``grid_order_seed``: enqueue the grid in a random order drawn from this seed (recorded as the
    study user attr ``grid_order_seed``) instead of image size outermost; a sampler comparison
    needs it, or "trials until the grid's best" would only measure where the best point sits.
    """
    import optuna

    from clothopt.dashboard import describe_study
    from clothopt.data import RESIZE_METHODS, open_dataset
    from clothopt.model.backbones import get_backbone, weights_id
    from clothopt.spaces import load_space, sampler_args

    spec = get_backbone(backbone)
    space_obj = load_space(space).with_sampler(sampler, n_trials)
    spec.check_size(space_obj.min_image_size())
    if resize not in RESIZE_METHODS:
        raise UserError(f"unknown resize {resize!r} (choose from {', '.join(RESIZE_METHODS)})")
    if pruner not in PRUNERS:
        raise UserError(f"unknown pruner {pruner!r} (choose from {', '.join(PRUNERS)})")
    if epochs is not None and not 1 <= epochs <= 1000:
        raise UserError(f"--epochs must be between 1 and 1000, not {epochs}")
    if not 0 <= max_retries <= 100:
        raise UserError(f"--max-retries must be between 0 and 100, not {max_retries}")
    if weights not in ("imagenet", "none"):
        weights_id(weights)  # a missing file is a clear error now, not at the first trial
        weights = str(Path(weights).expanduser().absolute())
    dataset = open_dataset(data)
    name = name or f"{spec.name}-{space_obj.name}-{space_obj.sampler}"
    store = open_storage(storage)
    if name in _study_names(store):
        raise UserError(f"study {name!r} already exists (pick another --name, or delete it)")
    config = StudyConfig(
        name=name,
        backbone=spec.name,
        data=str(dataset.root.absolute()),
        data_fingerprint=dataset.fingerprint,
        classes=dataset.classes,
        space=space_obj,
        sampler=space_obj.sampler,
        sampler_args=sampler_args(space_obj.sampler, seed, space_obj),
        weights=weights,
        epochs=epochs or space_obj.epochs,
        seed=seed,
        resize=resize,
        pruner=pruner,
        use_cache=use_cache,
        cache_dir=str(Path(cache_dir).absolute() if cache_dir else default_cache_dir(storage)),
        max_retries=max_retries,
        command=command,
        versions=_versions(),
    )
    study = optuna.create_study(
        study_name=name,
        storage=store,
        direction="maximize",
        sampler=_sampler(config),
        pruner=_pruner(config),
    )
    try:
        study.set_user_attr(CONFIG_ATTR, config.to_json())
        for key in ("backbone", "weights", "sampler", "epochs", "seed", "data_fingerprint"):
            study.set_user_attr(key, getattr(config, key))
        study.set_user_attr("space", space_obj.name)
        describe_study(study, config)  # its note and metric name in optuna-dashboard
        if config.sampler == "grid":
            points = space_obj.grid()
            if grid_order_seed is not None:
                import numpy as np

                order = np.random.default_rng(grid_order_seed).permutation(len(points))
                points = [points[i] for i in order]
                study.set_user_attr("grid_order_seed", grid_order_seed)
            for params in points:
                study.enqueue_trial(params, skip_if_exists=False)
        folder = study_dir(storage, name)
        atomic_write_json(folder / "config.json", config.to_dict())
    except BaseException:
        optuna.delete_study(study_name=name, storage=store)
        raise
    return study, config


def _sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    from clothopt.spaces import make_sampler

    return make_sampler(config.sampler, config.sampler_args, config.space)


def _pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    import optuna

    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def load(name: str, storage: str | None = None) -> tuple[optuna.Study, StudyConfig]:
    import optuna

    store = open_storage(storage)
    if name not in _study_names(store):
        known = ", ".join(_study_names(store)) or "none"
        raise UserError(f"no study named {name!r} in {masked_url(storage)} (studies: {known})")
    study = optuna.load_study(study_name=name, storage=store)
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise UserError(f"study {name!r} was not created by clothopt (no config stored)")
    config = StudyConfig.from_json(raw)
    study.sampler = _sampler(config)
    study.pruner = _pruner(config)
    return study, config


def delete(name: str, storage: str | None = None) -> None:
    import optuna

    store = open_storage(storage)
    if name not in _study_names(store):
        raise UserError(f"no study named {name!r} in {masked_url(storage)}")
    optuna.delete_study(study_name=name, storage=store)


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    from optuna.trial import TrialState

    store = open_storage(storage)
    rows = []
    for summary in store.get_all_studies():
        trials = store.get_all_trials(summary._study_id, deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in TrialState}
        best = max(
            (t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
            default=None,
        )
        rows.append(
            {
                "name": summary.study_name,
                "backbone": summary.user_attrs.get("backbone", "?"),
                "sampler": summary.user_attrs.get("sampler", "?"),
                "complete": counts[TrialState.COMPLETE],
                "running": counts[TrialState.RUNNING],
                "waiting": counts[TrialState.WAITING],
                "failed": counts[TrialState.FAIL],
                "best_f1": best,
            }
        )
    return rows


# --------------------------------------------------------------------------- workers


def _process_token(pid: int) -> str | None:
    """pid plus its start time, so a reused pid is not mistaken for the original process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": _process_token(os.getpid())}


def _owner_dead(owner: dict[str, Any]) -> bool:
    if owner.get("host") != socket.gethostname():
        return False  # another machine: its heartbeat decides
    return _process_token(int(owner["pid"])) != owner.get("token")


def _trial_params(trial: FrozenTrial) -> dict[str, Any]:
    return dict(trial.system_attrs.get("fixed_params") or trial.params)


# Reasons a trial is put back in the queue: its worker is gone, not its configuration at fault
DIED, INTERRUPTED, TERMINATED = "worker process died", "interrupted", "terminated"
HEARTBEAT_LOST = "heartbeat lost (worker died or lost the database)"
_REQUEUE_REASONS = (DIED, INTERRUPTED, TERMINATED)


def _rdb(storage: Any) -> Any:
    return getattr(storage, "_backend", storage)  # optuna wraps RDBStorage in a cache


@contextlib.contextmanager
def _queue_lock(study: optuna.Study) -> Iterator[None]:
    """One process at a time re-enqueues trials of a study (check-then-enqueue is two steps).

    SQLite lives on one host: a file lock beside it. PostgreSQL: a session advisory lock,
    released by the server when a holder's connection dies.
    """
    engine = getattr(_rdb(study._storage), "engine", None)
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


def _retry_key(trial: FrozenTrial) -> tuple[int, int]:
    """(original trial number, attempt) of a trial; its successor has attempt + 1."""
    return int(trial.user_attrs.get("retry_of", trial.number)), int(
        trial.user_attrs.get("retries", 0)
    )


def _max_retries(study: optuna.Study) -> int:
    raw = study.user_attrs.get(CONFIG_ATTR)
    return StudyConfig.from_json(raw).max_retries if raw else 3


def _orphans(study: optuna.Study) -> list[FrozenTrial]:
    """FAILed trials whose worker died and whose copy is not (yet) in the queue.

    A worker killed between failing a dead trial and enqueueing its copy leaves one; so does a
    stale-heartbeat trial failed by Optuna whose callback never ran. Faults inside a trial
    (with their own reason) are not orphans: running them again would fail again.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    copies = {_retry_key(t) for t in trials if "retry_of" in t.user_attrs}
    limit = _max_retries(study)
    out = []
    for t in trials:
        if (
            t.state != TrialState.FAIL
            or t.user_attrs.get("fail_reason", DIED) not in _REQUEUE_REASONS
        ):
            continue
        root, attempt = _retry_key(t)
        if (root, attempt + 1) not in copies and attempt < limit and _trial_params(t):
            out.append(t)
    return out


def _enqueue_copy(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Queue a copy of ``trial`` unless one exists or its retries are spent (hold the lock)."""
    root, attempt = _retry_key(trial)
    params = _trial_params(trial)
    if not params:
        return  # killed before choosing parameters: nothing to run again
    if attempt >= _max_retries(study):
        _log.warning("trial %d failed %d times; not retried again", trial.number, attempt + 1)
        return
    if any(
        _retry_key(t) == (root, attempt + 1)
        for t in study.get_trials(deepcopy=False)
        if "retry_of" in t.user_attrs
    ):
        return
    study.enqueue_trial(
        params,
        user_attrs={"retries": attempt + 1, "retry_of": root, "retry_reason": reason},
        skip_if_exists=False,
    )


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str, *, failed: bool = False) -> bool:
    """Fail a trial whose worker is gone and queue its parameters again (up to max_retries).

    Returns False when another process got there first (it failed or finished the trial).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    with _queue_lock(study):
        if not failed:
            try:
                storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
                if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    return False
            except UpdateFinishedTrialError:
                return False
        _enqueue_copy(study, trial, reason)
    return True


def _stale_callback(study: optuna.Study, trial: FrozenTrial) -> None:
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
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.system_attrs.get(OWNER_ATTR)
        if owner is not None:
            dead = _owner_dead(owner)
        else:  # popped, then killed before it could say who it is
            start = trial.datetime_start.timestamp() if trial.datetime_start else now
            dead = now - start > GRACE_PERIOD
        if dead and requeue(study, trial, DIED):
            count += 1
    if _orphans(study):  # rare: look again under the lock, where no one else enqueues
        with _queue_lock(study):
            for trial in _orphans(study):
                _enqueue_copy(study, trial, trial.user_attrs.get("fail_reason", HEARTBEAT_LOST))
                count += 1
    return count


def _pop_waiting(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial; the WAITING->RUNNING switch is atomic in the storage."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    for frozen in storage.get_all_trials(
        study._study_id, deepcopy=False, states=(TrialState.WAITING,)
    ):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def grid_status(study: optuna.Study, config: StudyConfig) -> dict[str, Any]:
    """Per grid point: how many COMPLETE trials; the exactly-once check."""
    from optuna.trial import TrialState

    def key(p: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(p[n] for n in config.space.params)

    complete: dict[tuple[Any, ...], int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        complete[key(t.params)] = complete.get(key(t.params), 0) + 1
    points = [key(p) for p in config.space.grid()] if config.space.is_grid else list(complete)
    return {
        "points": len(points),
        "complete_once": sum(complete.get(p, 0) == 1 for p in points),
        "duplicates": {str(p): n for p, n in complete.items() if n > 1},
        "missing": [str(p) for p in points if complete.get(p, 0) == 0],
    }


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


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _fault_reason(exc: BaseException) -> str | None:
    """A fault that ends one trial (the study goes on), or None for a bug to raise."""
    name = type(exc).__name__
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MemoryError) or name in ("ResourceExhaustedError", "OutOfMemoryError"):
        return f"out of memory: {str(exc).strip().splitlines()[0] if str(exc).strip() else name}"
    if "out of memory" in str(exc).lower() or "RESOURCE_EXHAUSTED" in str(exc):
        return f"out of memory: {str(exc).strip().splitlines()[0]}"
    return None


def _run_one(
    study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]
) -> str:
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    with _Heartbeat(storage, trial._trial_id):
        storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, _owner())
        try:
            value, state = objective(trial), TrialState.COMPLETE
            # resident memory after each trial: a long study must stay flat (benchmarks read it)
            storage.set_trial_user_attr(trial._trial_id, "rss_mb", _rss_mb())
        except optuna.TrialPruned:
            state, value = TrialState.PRUNED, None
        except (KeyboardInterrupt, Terminated) as exc:
            frozen = storage.get_trial(trial._trial_id)
            requeue(
                study, frozen, INTERRUPTED if isinstance(exc, KeyboardInterrupt) else TERMINATED
            )
            raise
        except Exception as exc:
            reason = _fault_reason(exc)
            if reason is None:
                frozen = storage.get_trial(trial._trial_id)
                with contextlib.suppress(Exception):
                    storage.set_trial_user_attr(trial._trial_id, "fail_reason", repr(exc)[:500])
                    storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)
                raise
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            state, value = TrialState.FAIL, None
        try:
            if state == TrialState.COMPLETE:
                study.tell(trial, value)
            else:
                study.tell(trial, state=state)
        except UpdateFinishedTrialError:
            return "lost"  # declared dead meanwhile; its copy will run (or has run) instead
        except ValueError as exc:
            if "finished" not in str(exc):
                raise
            return "lost"
    return {TrialState.COMPLETE: "complete", TrialState.FAIL: "failed"}.get(
        storage.get_trial(trial._trial_id).state, "pruned"
    )


def _next_trial(study: optuna.Study, config: StudyConfig) -> optuna.Trial | None:
    from optuna.trial import TrialState

    trial = _pop_waiting(study)
    if trial is not None or config.sampler == "grid":
        return trial
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    if len(study.get_trials(deepcopy=False, states=counted)) >= config.budget():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are ours (see _Heartbeat), not optimize's
        return study.ask()


def optimize(
    study: optuna.Study,
    config: StudyConfig,
    objective: Callable[[optuna.Trial], float],
    n_trials: int | None = None,
    timeout: float | None = None,
    progress: bool = True,
    on_trial: Callable[[FrozenTrial], None] | None = None,
) -> RunSummary:
    """Run trials until the study's budget is done (or ``n_trials`` / ``timeout`` here)."""
    import gc

    from optuna.trial import TrialState

    # Objects alive now (libraries, data set, config) live for the whole run: moving them out
    # of the collector's reach makes the per-trial gc.collect() cheap (bench: 1.65 s -> 0.26 s
    # outside training per trial, same memory).
    gc.collect()
    gc.freeze()
    summary = RunSummary()
    start = time.perf_counter()
    bar = _progress_bar(study, config, n_trials) if progress else None
    try:
        with _sigterm_raises():
            while n_trials is None or summary.ran < n_trials:
                if timeout is not None and time.perf_counter() - start >= timeout:
                    break
                summary.recovered += recover(study)
                trial = _next_trial(study, config)
                if trial is None:
                    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                        break
                    time.sleep(POLL_SECONDS)  # others are running trials that may come back
                    continue
                outcome = _run_one(study, trial, objective)
                summary.ran += 1
                if outcome == "complete":
                    summary.complete += 1
                elif outcome == "failed":
                    summary.failed += 1
                elif outcome == "pruned":
                    summary.pruned += 1
                frozen = study._storage.get_trial(trial._trial_id)
                if bar is not None:
                    _advance(bar, study, frozen)
                if on_trial is not None:
                    on_trial(frozen)
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - start
    with contextlib.suppress(ValueError):
        best = study.best_trial
        summary.best_value, summary.best_params = best.value, best.params
    return summary


def _progress_bar(study: optuna.Study, config: StudyConfig, n_trials: int | None) -> Any:
    from optuna.trial import TrialState
    from tqdm import tqdm

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    total = config.budget()
    return tqdm(
        total=total,
        initial=min(done, total),
        desc=config.name,
        unit="trial",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None,
    )


def _advance(bar: Any, study: optuna.Study, trial: FrozenTrial) -> None:
    bar.update(1)
    if trial.state.name == "COMPLETE":
        p = trial.params
        bar.set_postfix_str(
            f"#{trial.number} {p.get('image_size')}px b{p.get('batch_size')} "
            f"lr{p.get('learning_rate'):g} F1 {trial.value:.4f}"
        )
    else:
        bar.write(
            f"trial {trial.number} {trial.state.name}: {trial.user_attrs.get('fail_reason', '')}"
        )


# --------------------------------------------------------------------------- show


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Trials for ``study show``: COMPLETE ones best first, then the rest by number."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: (-(t.value or 0.0), t.number),
    )
    rest = [t for t in trials if t.state != TrialState.COMPLETE]
    rows = []
    for t in done + rest:
        params = _trial_params(t) if not t.params else t.params
        a = t.user_attrs
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "image_size": params.get("image_size"),
                "batch_size": params.get("batch_size"),
                "learning_rate": params.get("learning_rate"),
                "val_f1": t.value,
                "val_precision": a.get("val_precision_macro"),
                "val_recall": a.get("val_recall_macro"),
                "val_accuracy": a.get("val_accuracy"),
                "extract_s": a.get("extract_seconds"),
                "train_s": a.get("train_seconds"),
                "note": a.get("fail_reason")
                or ("loss diverged" if a.get("loss_diverged") else "")
                or (f"retry of #{a['retry_of']}" if "retry_of" in a else ""),
            }
        )
    return rows
