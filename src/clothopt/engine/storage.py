"""Opening a storage: heartbeats on, SQLite tuned for many small commits and serialized for
the exactly-once queue, and one line for each way a storage can fail.

The few Optuna internals the engine needs live in :mod:`clothopt.engine.optuna_private`.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothopt.engine.optuna_private import rdb_of, storage_of, study_id, trial_id
from clothopt.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    StorageUnavailable,
    WriteFailed,
)
from clothopt.paths import DEFAULT_STORAGE, masked_url

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "GRACE_PERIOD",
    "HEARTBEAT_INTERVAL",
    "open_storage",
    "rdb_of",
    "set_user_attrs",
    "sql_engine_of",
    "storage_errors",
    "storage_of",
    "storage_url_of",
    "study_id",
    "trial_id",
]

HEARTBEAT_INTERVAL = int(os.environ.get("CLOTHOPT_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("CLOTHOPT_GRACE_PERIOD", "30"))

StaleCallback = Callable[["optuna.Study", "FrozenTrial"], None]


def storage_url_of(storage: Any) -> str | None:
    """The URL of an RDB storage (also behind optuna's cache wrapper); None for others."""
    url = getattr(rdb_of(storage), "url", None)
    return url if isinstance(url, str) else None


def sql_engine_of(study: optuna.Study) -> Any:
    """The SQLAlchemy engine behind a study's storage; None for a storage without one."""
    return getattr(rdb_of(storage_of(study)), "engine", None)


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """``trial.set_user_attr`` for each of ``attrs``, in order (one commit each: on SQLite in
    WAL mode with ``synchronous=NORMAL`` a commit does not wait for the disk)."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


# --------------------------------------------------------------------------- open


def open_storage(
    url: str | None = None,
    *,
    stale_trial_callback: StaleCallback | None = None,
    create: bool = False,
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats on; one clear line for any URL or connection problem.

    ``create``: a SQLite file that does not exist yet is made (only commands that create
    studies pass it); otherwise its absence is :class:`NotFound` and nothing is written.
    ``stale_trial_callback`` runs for a trial Optuna fails because its heartbeat stopped.
    """
    import optuna
    import sqlalchemy
    from sqlalchemy.engine import make_url

    url = url or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise InvalidArgument(
            f"bad storage URL {url.split('@')[-1]!r} (e.g. {DEFAULT_STORAGE} or "
            "postgresql+psycopg://USER:PASS@HOST/DB)"
        ) from None
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise InvalidArgument(
                f"storage {masked_url(url)} names no file: use sqlite:///PATH/TO/FILE.db "
                "(an in-memory database would vanish with this command)"
            )
        path = Path(parsed.database).expanduser()
        if not path.is_file():
            if not create:
                raise NotFound(f"no storage at {path}: create a study first, or pass --storage")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WriteFailed(f"cannot create {path.parent}: {exc.strerror}") from None
        # local workers share the file: wait for its lock instead of failing
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif backend == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
        engine_kwargs["pool_pre_ping"] = True
    elif backend != "mysql":
        raise InvalidArgument(
            f"unsupported storage {backend!r}: use sqlite:/// or postgresql+psycopg://"
        )
    for attempt in range(5):
        try:
            storage = _rdb_storage(url, engine_kwargs, stale_trial_callback)
            break
        except sqlalchemy.exc.IntegrityError:
            # another process made the schema at the same moment (alembic_version): it is
            # there now, so opening again finds it
            if attempt == 4:
                raise StorageUnavailable(
                    f"cannot open storage {masked_url(url)}: schema race"
                ) from None
            time.sleep(0.2 * (attempt + 1))
        except ImportError as exc:
            driver = getattr(exc, "name", None) or str(exc)
            raise InvalidArgument(
                f"storage {masked_url(url)} needs the driver {driver}: "
                + (
                    "pip install 'clothopt[postgres]'"
                    if backend == "postgresql"
                    else "install it, or use sqlite:/// or postgresql+psycopg://"
                )
            ) from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            if parsed.password:
                reason = reason.replace(str(parsed.password), "***")
            raise StorageUnavailable(f"cannot open storage {masked_url(url)}: {reason}") from None
    if backend == "sqlite":
        _serialize_sqlite_transactions(storage.engine)
    return storage


def _rdb_storage(
    url: str, engine_kwargs: dict[str, Any], stale_trial_callback: StaleCallback | None
) -> optuna.storages.RDBStorage:
    from clothopt.engine.held_storage import HeldRDBStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat arguments are flagged experimental
        return HeldRDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            grace_period=GRACE_PERIOD,
            heartbeat_stale_trial_callback=stale_trial_callback,
        )


# Optuna's RDB storage says a study or trial is gone with this message (KeyError/ValueError)
_NOT_FOUND = "Record does not exist."


@contextlib.contextmanager
def storage_errors(study_name: str | None = None) -> Iterator[None]:
    """THE place where a storage's exceptions become typed one-line errors
    (:class:`AlreadyExists`, :class:`NotFound`, :class:`StorageUnavailable`).

    A study deleted under a running command, a study created twice at the same moment, a
    database that went away: each is a state of the world, not a bug, so it gets a sentence.
    """
    import sqlalchemy
    from optuna.exceptions import DuplicatedStudyError, StorageInternalError

    what = f"study {study_name!r}" if study_name else "the study"
    try:
        yield
    except DuplicatedStudyError:
        raise AlreadyExists(f"{what} already exists (pick another --name, or delete it)") from None
    except (KeyError, ValueError) as exc:
        if not (exc.args and exc.args[0] == _NOT_FOUND):
            raise
        raise NotFound(f"{what} was deleted while this command used it") from None
    except (sqlalchemy.exc.OperationalError, StorageInternalError) as exc:
        # optuna wraps a failed commit (a read-only or locked SQLite file) in its own error
        cause = exc.__cause__ if isinstance(exc.__cause__, sqlalchemy.exc.DBAPIError) else exc
        reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
        raise StorageUnavailable(f"lost the storage: {reason}") from None


def _serialize_sqlite_transactions(engine: Any) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``, and commits cheap.

    pysqlite starts a transaction only at the first write, so two workers can both read a
    trial as WAITING and both switch it to RUNNING: the check-and-set that makes a queue pop
    atomic is not atomic on SQLite by default. Taking the write lock at BEGIN (SQLAlchemy's
    documented recipe) serializes those transactions; waiting workers queue on the lock
    (timeout 60 s) instead of failing with "database is locked".

    Optuna commits each parameter and attribute of a trial on its own (~50 a trial). In
    SQLite's default rollback journal each commit waits for the disk (fsyncs); in WAL mode
    with ``synchronous=NORMAL`` a commit appends to the log and only checkpoints wait, so
    a trial's writes cost milliseconds. The database stays consistent after a crash; a power
    loss may lose the last commits (a trial then reruns). Readers no longer block writers.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit transactions
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # stored in the file: once suffices
            cursor.execute("PRAGMA synchronous=NORMAL")  # per connection
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the hooks (schema checks) are not reused
