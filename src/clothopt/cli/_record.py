"""What a command line leaves behind: the command recorded with a study and the "run it"
line, both shell-quoted and never with a password."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

__all__ = ["recorded_command", "run_it_line"]


def _has_password(text: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return bool(make_url(text).password)
    except Exception:
        return "@" in text and "://" in text  # not a URL SQLAlchemy reads: assume the worst


def recorded_command(argv: Sequence[str]) -> str:
    """The command line as stored with a study: shell-quoted, every URL's password masked."""
    from clothopt.paths import masked_url

    words = ["clothopt"]
    for word in argv:
        flag, eq, value = word.partition("=")
        if eq and flag.startswith("--") and _has_password(value):
            word = f"{flag}={masked_url(value)}"
        elif _has_password(word):
            word = masked_url(word)
        words.append(word)
    return shlex.join(words)


def run_it_line(name: str, storage: str | None) -> str:
    """``run it: clothopt study optimize NAME ...``, shell-quoted, never with a password.

    A storage URL with a password is left to ``$CLOTHOPT_STORAGE`` (or ~/.pgpass/PGPASSWORD).
    """
    from clothopt.paths import masked_url

    line = f"run it: {shlex.join(['clothopt', 'study', 'optimize', name])}"
    if not storage or storage == os.environ.get("CLOTHOPT_STORAGE"):
        return line  # the storage comes from $CLOTHOPT_STORAGE (or the default) again
    if not _has_password(storage):
        return f"{line} --storage {shlex.quote(storage)}"
    without = masked_url(storage).replace(":***@", "@")
    return (
        f'{line} --storage "$CLOTHOPT_STORAGE"  (export CLOTHOPT_STORAGE=<the URL with its '
        f"password>, or keep the password in ~/.pgpass or $PGPASSWORD and pass --storage "
        f"{shlex.quote(without)})"
    )
