"""Finalize's progress lines, one logger for all its steps: at INFO when the caller shows
progress (the CLI without ``--quiet``), else at DEBUG (shown with ``--verbose``). Each line
is also where an interrupt a library swallowed (in a finalizer, say) stops finalize."""

from __future__ import annotations

from clothopt.engine.interrupts import raise_swallowed
from clothopt.logging import DEBUG, INFO, get_logger

__all__ = ["say"]

logger = get_logger("clothopt.final")


def say(progress: bool, message: str) -> None:
    """One step of finalize, as a log line."""
    raise_swallowed()
    logger.log(INFO if progress else DEBUG, "finalize: %s", message)
