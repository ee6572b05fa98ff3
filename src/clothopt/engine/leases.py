"""Leases in the study's storage: one worker at a time computes a shared piece of work.

A lease is a row (key, holder, expiry, done) in a table beside Optuna's, in the database every
worker already shares. :meth:`LeaseTable.claim` is one conditional ``UPDATE`` (after an insert
that does nothing when the row exists), inside one transaction: on SQLite the storage's
transactions are ``BEGIN IMMEDIATE`` (:mod:`clothopt.engine.storage`), on PostgreSQL the
``UPDATE`` locks the row and re-checks its condition, so exactly one claimant wins. A holder
renews its lease while it works (:meth:`LeaseTable.holding`); a holder that died stops renewing
and its lease expires after its TTL, when the next claimant takes it over. Expiry is measured
on the database's clock, so machines with skewed clocks agree on it. A completed lease stays
done for good: the work's result lives elsewhere (a store), the lease only says who computes it.

A caller that cannot use a result yet may either wait for it or, where it has other work to do,
raise :class:`~clothopt.errors.NotReady`; :func:`deferral_allowed` says which (the runner allows
deferral while it runs a trial, so the trial goes back in the queue and another one runs).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from clothopt.engine.optuna_private import rdb_of
from clothopt.errors import InvalidArgument
from clothopt.logging import get_logger

__all__ = [
    "TABLE",
    "Lease",
    "LeaseTable",
    "allow_deferral",
    "deferral_allowed",
    "new_holder",
]

TABLE = "clothopt_leases"

_log = get_logger(__name__)
_DEFER: contextvars.ContextVar[bool] = contextvars.ContextVar("clothopt_defer", default=False)

# seconds since the epoch on the database's own clock
_NOW = {
    "sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0",
    "postgresql": "SELECT extract(epoch from clock_timestamp())",
    "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))",
}


def deferral_allowed() -> bool:
    """True where the caller may raise NotReady instead of waiting for another's lease."""
    return _DEFER.get()


@contextlib.contextmanager
def allow_deferral(allowed: bool = True) -> Iterator[None]:
    """Within the block (this thread/context), :func:`deferral_allowed` returns ``allowed``."""
    token = _DEFER.set(allowed)
    try:
        yield
    finally:
        _DEFER.reset(token)


def new_holder() -> str:
    """A holder name unique to this process and call: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Lease:
    key: str
    holder: str | None
    expires_in: float  # seconds left (negative: expired), on the database's clock
    done: bool

    @property
    def held(self) -> bool:
        """Held by someone alive (not done, not expired)."""
        return not self.done and self.holder is not None and self.expires_in > 0


class LeaseTable:
    """The lease table on ``engine`` (a SQLAlchemy engine); created if missing."""

    def __init__(self, engine: Any, table: str = TABLE) -> None:
        import sqlalchemy as sa

        self._engine = engine
        self._dialect = engine.url.get_backend_name()
        if self._dialect not in _NOW:
            raise InvalidArgument(f"leases need SQLite, PostgreSQL or MySQL, not {self._dialect}")
        meta = sa.MetaData()
        self._t = sa.Table(
            table,
            meta,
            sa.Column("key", sa.String(255), primary_key=True),
            sa.Column("holder", sa.String(255), nullable=True),
            sa.Column("expires", sa.Double, nullable=False),
            sa.Column("done", sa.Boolean, nullable=False),
            sa.Column("updated", sa.Double, nullable=False),
        )
        try:
            meta.create_all(engine, checkfirst=True)
        except sa.exc.SQLAlchemyError:
            # another worker created it at the same moment (PostgreSQL's catalog race)
            if not sa.inspect(engine).has_table(table):
                raise

    @classmethod
    def of_storage(cls, storage: Any) -> LeaseTable:
        """The lease table in an Optuna RDB storage's database."""
        engine = getattr(rdb_of(storage), "engine", None)
        if engine is None:
            raise InvalidArgument("leases need a database storage (sqlite:/// or postgresql://)")
        return cls(engine)

    def _now(self, conn: Any) -> float:
        import sqlalchemy as sa

        return float(conn.execute(sa.text(_NOW[self._dialect])).scalar_one())

    def _insert_absent(self, conn: Any, key: str, now: float) -> None:
        values = {"key": key, "holder": None, "expires": 0.0, "done": False, "updated": now}
        if self._dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            conn.execute(self._t.insert().prefix_with("IGNORE").values(**values))
            return
        conn.execute(insert(self._t).values(**values).on_conflict_do_nothing())

    def claim(self, key: str, holder: str, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds: True for exactly one claimant while it is free
        (never claimed, released, or expired); True again for its holder (a renewal); False
        when another holds it or it is done."""
        import sqlalchemy as sa

        t = self._t
        with self._engine.begin() as conn:
            now = self._now(conn)
            self._insert_absent(conn, key, now)
            free = sa.or_(t.c.holder == holder, t.c.holder.is_(None), t.c.expires <= now)
            done = conn.execute(
                t.update()
                .where(t.c.key == key, t.c.done.is_(False), free)
                .values(holder=holder, expires=now + ttl, updated=now)
            )
            return bool(done.rowcount == 1)

    def renew(self, key: str, holder: str, ttl: float) -> bool:
        """Extend ``holder``'s lease by ``ttl`` from now; False when it is no longer theirs."""
        return self._update(key, holder, lambda now: {"expires": now + ttl})

    def release(self, key: str, holder: str) -> bool:
        """Give the lease up unfinished (the next claimant takes it at once)."""
        return self._update(key, holder, lambda now: {"holder": None, "expires": 0.0})

    def complete(self, key: str, holder: str) -> bool:
        """Mark the work done (for good); False when the lease was taken over meanwhile."""
        return self._update(key, holder, lambda now: {"done": True})

    def _update(self, key: str, holder: str, values: Any) -> bool:
        t = self._t
        with self._engine.begin() as conn:
            now = self._now(conn)
            changed = conn.execute(
                t.update()
                .where(t.c.key == key, t.c.holder == holder, t.c.done.is_(False))
                .values(updated=now, **values(now))
            )
            return bool(changed.rowcount == 1)

    def reopen(self, key: str) -> bool:
        """A done lease whose result was lost: free again (one caller gets True)."""
        t = self._t
        with self._engine.begin() as conn:
            now = self._now(conn)
            changed = conn.execute(
                t.update()
                .where(t.c.key == key, t.c.done.is_(True))
                .values(done=False, holder=None, expires=0.0, updated=now)
            )
            return bool(changed.rowcount == 1)

    def state(self, key: str) -> Lease | None:
        """The lease on ``key`` now, or None if nobody ever claimed it."""
        t = self._t
        with self._engine.begin() as conn:
            now = self._now(conn)
            row = conn.execute(t.select().where(t.c.key == key)).first()
        if row is None:
            return None
        return Lease(row.key, row.holder, float(row.expires) - now, bool(row.done))

    def keys(self, prefix: str = "") -> list[Lease]:
        """Every lease whose key starts with ``prefix``, by key."""
        t = self._t
        with self._engine.begin() as conn:
            now = self._now(conn)
            rows = conn.execute(
                t.select().where(t.c.key.startswith(prefix, autoescape=True)).order_by(t.c.key)
            ).all()
        return [Lease(r.key, r.holder, float(r.expires) - now, bool(r.done)) for r in rows]

    @contextlib.contextmanager
    def holding(self, keys: Sequence[str], holder: str, ttl: float) -> Iterator[None]:
        """Renew ``keys`` (claimed by ``holder``) every ``ttl / 3`` s during the block; an
        exception (an interrupt included) releases them, so others need not wait for the TTL."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(ttl / 3):
                for key in keys:
                    try:
                        if not self.renew(key, holder, ttl):
                            _log.warning("lease %s was taken over by another worker", key)
                    except Exception as exc:  # a missed renewal must not kill the work
                        _log.warning("could not renew lease %s: %s", key, exc)

        thread = threading.Thread(target=beat, daemon=True, name="clothopt-lease")
        thread.start()
        try:
            yield
        except BaseException:
            stop.set()
            thread.join()
            for key in keys:
                with contextlib.suppress(Exception):
                    self.release(key, holder)
            raise
        stop.set()
        thread.join()
