"""Ctrl-C and SIGTERM as exceptions, and the places they must not land.

- :func:`interrupts_raise`: for a command or a run, SIGTERM raises
  :class:`~clothopt.errors.Terminated` and SIGINT ``KeyboardInterrupt`` at any moment.
- :func:`signals_held`: a block that must not be cut in half (a storage call, a swap of
  folders) takes them only when it is done.
- A library may swallow the exception: raised in a finalizer, Python prints "Exception
  ignored" and goes on; TensorFlow turned one into a ``SystemError``. :func:`interrupt_since`
  still says what was received, and :func:`raise_swallowed` raises a swallowed one at the next
  safe point (an epoch, a trial's end, a step of finalize).

Signals reach Python's handlers in the main thread only: elsewhere all of this does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from clothopt.errors import Terminated

__all__ = [
    "interrupt_since",
    "interrupts_raise",
    "raise_swallowed",
    "received",
    "signals_held",
]

# The signals interrupts_raise turned into exceptions, newest last: what was received still
# says "interrupted" when a library raised its own error in place of the interrupt.
_RECEIVED: list[int] = []
# Interrupts a library swallowed and reported (sys.unraisablehook, sys.excepthook), kept off
# stderr by interrupts_raise's hooks until raise_swallowed raises them.
_SWALLOWED: list[BaseException] = []
_RAISING: list[int] = []  # interrupts_raise blocks open now (they nest: the CLI's, the runner's)
_HOLDING: list[int] = []  # signals_held blocks open now (an inner one changes nothing)


def _interrupt(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _interrupt_in(exc: BaseException | None) -> BaseException | None:
    """The interrupt ``exc`` is, or was raised from or during (a few links deep), else None."""
    for _ in range(8):
        if exc is None or isinstance(exc, (KeyboardInterrupt, Terminated)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def received() -> int:
    """How many interrupts have been received so far (a mark for :func:`interrupt_since`)."""
    return len(_RECEIVED)


def interrupt_since(mark: int) -> BaseException | None:
    """The interrupt to raise in place of another exception (or of a normal end) when one
    was received after ``mark`` (:func:`received` then), else None."""
    return _interrupt(_RECEIVED[-1]) if len(_RECEIVED) > mark else None


def raise_swallowed() -> None:
    """Raise the newest interrupt a library swallowed since the last call, if any: a safe
    point in long work."""
    if _SWALLOWED:
        exc = _SWALLOWED[-1]
        _SWALLOWED.clear()
        raise type(exc)()


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """In the main thread for the block, SIGTERM raises :class:`Terminated` and SIGINT
    ``KeyboardInterrupt`` (unless SIGINT is ignored), each recorded for
    :func:`interrupt_since`; one a library swallows and reports is kept off stderr for
    :func:`raise_swallowed`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _RECEIVED.append(signum)
        raise _interrupt(signum)

    def swallowed(exc: BaseException | None) -> bool:
        if (interrupt := _interrupt_in(exc)) is None:
            return False
        _SWALLOWED.append(interrupt)
        return True

    def unraisable(info: Any) -> None:
        if not swallowed(info.exc_value):
            hooks[0](info)

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if not swallowed(exc):
            hooks[1](kind, exc, tb)

    sigs = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored, not ours
        sigs.append(signal.SIGINT)
    if not _RAISING:
        _SWALLOWED.clear()  # the outermost block: none left from an earlier one
    hooks = (sys.unraisablehook, sys.excepthook)
    previous = {s: signal.signal(s, handler) for s in sigs}
    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    _RAISING.append(1)
    try:
        yield
    finally:
        _RAISING.pop()
        sys.unraisablehook, sys.excepthook = hooks
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then go to the handlers that were
    there (which raise as they would have).

    For the steps that must not be cut in half: every storage call (SQLAlchemy left a SQLite
    write lock behind when an interrupt landed inside one), taking a trial and naming its
    owner, putting one back, swapping folders. Only signals a Python handler takes are held
    (a default SIGTERM still ends the process at once); if the block itself raises, that
    exception wins; inside another held block this one changes nothing.
    """
    if threading.current_thread() is not threading.main_thread() or _HOLDING:
        yield
        return
    got: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        got.append(signum)

    previous: dict[int, Callable[[int, Any], Any]] = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        if callable(h := signal.getsignal(s)):
            previous[s] = h
            signal.signal(s, hold)
    _HOLDING.append(1)
    try:
        yield
    finally:
        _HOLDING.pop()
        for s, h in previous.items():
            signal.signal(s, h)
    if got:
        previous[got[0]](got[0], None)
