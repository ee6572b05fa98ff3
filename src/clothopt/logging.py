"""clothopt's logging, as ``optuna.logging`` does it: one ``clothopt`` logger for the package.

Library modules log through ``get_logger(__name__)`` and never print; a caller configures the
``clothopt`` logger like any other (``logging.getLogger("clothopt")``), or calls
:func:`set_verbosity`, which also installs one plain stderr handler (the CLI does this). Until a
handler is installed, records propagate to the root logger as usual, so a notebook that set up
``logging.basicConfig`` sees them and one that did not sees warnings only.
"""

from __future__ import annotations

import logging
import sys
import threading

__all__ = [
    "DEBUG",
    "ERROR",
    "INFO",
    "WARNING",
    "disable_default_handler",
    "enable_default_handler",
    "get_logger",
    "get_verbosity",
    "set_verbosity",
]

DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR
_ROOT = "clothopt"
_lock = threading.Lock()
_handler: logging.Handler | None = None


def get_logger(name: str) -> logging.Logger:
    """The logger of a clothopt module (``name`` is its ``__name__``, under ``clothopt``)."""
    if name != _ROOT and not name.startswith(_ROOT + "."):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)


def enable_default_handler() -> None:
    """Messages of the ``clothopt`` logger go to stderr as plain lines (no level, no time;
    warnings begin with ``clothopt: warning: ``, errors with ``clothopt: error: ``)."""
    global _handler
    with _lock:
        if _handler is not None:
            return
        # stderr looked up at each record: tests and the CLI swap sys.stderr
        _handler = _StderrHandler()
        _handler.setFormatter(_Formatter())
        root = logging.getLogger(_ROOT)
        root.addHandler(_handler)
        root.propagate = False


def disable_default_handler() -> None:
    global _handler
    with _lock:
        if _handler is None:
            return
        root = logging.getLogger(_ROOT)
        root.removeHandler(_handler)
        root.propagate = True
        _handler = None


def set_verbosity(level: int) -> None:
    """Show the ``clothopt`` logger's messages from ``level`` up, on stderr."""
    enable_default_handler()
    logging.getLogger(_ROOT).setLevel(level)


def get_verbosity() -> int:
    return logging.getLogger(_ROOT).getEffectiveLevel()


class _Formatter(logging.Formatter):
    """Plain lines; a warning or an error says whose and what it is, as the CLI's own
    ``clothopt: error: ...`` line does."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= ERROR:
            return f"clothopt: error: {text}"
        return f"clothopt: warning: {text}" if record.levelno >= WARNING else text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ assigns it
        pass
