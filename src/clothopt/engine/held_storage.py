"""Optuna's RDB storage with every public call finished before Ctrl-C or SIGTERM is taken.

SQLAlchemy is not written for an exception at any bytecode: an interrupt that landed inside a
storage call once left that process's SQLite write lock behind, and putting the trial back
then failed with "database is locked". Each call runs under
:func:`~clothopt.engine.interrupts.signals_held` (milliseconds; longer only while it waits
for another worker's lock). Imported when a storage is opened (it imports Optuna).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import optuna

from clothopt.engine.interrupts import signals_held

__all__ = ["HeldRDBStorage"]


def _held(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with signals_held():
            return method(self, *args, **kwargs)

    return call


class HeldRDBStorage(optuna.storages.RDBStorage):
    """``optuna.storages.RDBStorage`` whose public methods hold SIGINT and SIGTERM."""


for _name, _method in inspect.getmembers(optuna.storages.RDBStorage, inspect.isfunction):
    if not _name.startswith("_"):
        setattr(HeldRDBStorage, _name, _held(_method))
