"""The three ways a run can end badly, each with its own type (as KerasTuner separates them).

- :class:`UserError`: a mistake the user can fix (a bad flag, a missing file, a corrupt
  config). The CLI prints ``clothopt: error: <message>`` and exits 2; raised inside a trial it
  stops the whole run, since every other trial would hit it too.
- :class:`TrialFailed`: this trial cannot finish (an image that does not decode, out of
  memory); the trial is marked FAIL with the message as its reason and the study goes on.
- :class:`Terminated`: SIGTERM, raised in the main thread so the running trial is put back in
  the queue; a ``BaseException`` like ``KeyboardInterrupt`` so no ``except Exception`` eats it.
"""

from __future__ import annotations

__all__ = ["Terminated", "TrialFailed", "UserError"]


class UserError(Exception):
    """A user-facing error: the CLI prints ``clothopt: error: <message>`` and exits non-zero."""

    exit_code: int = 2


class TrialFailed(Exception):
    """This trial failed (its reason is the message); the study carries on with the others."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the running trial is put back cleanly."""
