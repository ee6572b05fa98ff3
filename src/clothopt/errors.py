"""Every error clothopt raises on purpose, under one base class (as KerasTuner separates them).

A caller catches what it means: ``except clothopt.errors.NotFound`` (also a
``FileNotFoundError``), ``except ValueError`` for a bad argument, ``except StorageUnavailable``
for a lost database. Exit codes are the CLI's business (``clothopt.cli``), not the errors'.

- :class:`UserError` and its subclasses: something the user can fix (a bad value, a missing
  file, an output that would overwrite an input, a write that failed). Raised inside a trial it
  stops the whole run, since every other trial would hit it too; the trial goes back in the queue.
- :class:`StorageUnavailable`: the study's database cannot be reached or was lost.
- :class:`TrialFailed`: this trial cannot finish (an image that does not decode, out of
  memory); the trial is marked FAIL with the message as its reason and the study goes on.
- :class:`NotReady`: something this trial needs is being computed by another worker; the
  trial goes back in the queue (uncounted) and the worker runs another one meanwhile.
- :class:`Terminated`: SIGTERM, raised in the main thread so the running trial is put back in
  the queue; a ``BaseException`` like ``KeyboardInterrupt`` so no ``except Exception`` eats it.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "ClothoptError",
    "DataError",
    "InvalidArgument",
    "ModelError",
    "NotFound",
    "NotReady",
    "OutputConflict",
    "StorageUnavailable",
    "Terminated",
    "TrialFailed",
    "UserError",
    "WriteFailed",
]


class ClothoptError(Exception):
    """The base of every error clothopt raises on purpose."""


class UserError(ClothoptError):
    """Something the user can fix; prefer one of the subclasses, which say what kind."""


class InvalidArgument(UserError, ValueError):
    """A bad value: an option, a parameter, a study name, a search space, a configuration."""


class NotFound(UserError, FileNotFoundError):
    """A file, folder, split, study or weights file that is not there."""


class AlreadyExists(UserError, FileExistsError):
    """A name or folder that exists already (a study name, a final model not ours to replace)."""


class OutputConflict(UserError, FileExistsError):
    """An output path that is one of the command's inputs, or a file of another kind."""


class WriteFailed(UserError, OSError):
    """A write that failed (permissions, a full disk, a file-size limit); nothing was replaced."""


class DataError(UserError, ValueError):
    """A data set, image or catalogue that cannot be used as it is."""


class ModelError(UserError, ValueError):
    """A model file clothopt cannot use (not one it made, or with outputs that are not finite)."""


class StorageUnavailable(ClothoptError, ConnectionError):
    """The study's storage cannot be reached, or was lost while a command used it."""


class TrialFailed(ClothoptError):
    """This trial failed (its reason is the message); the study carries on with the others."""


class NotReady(ClothoptError):
    """Another worker is computing what this needs (a shared feature entry): try again later."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the running trial is put back cleanly."""
