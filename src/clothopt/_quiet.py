"""Keep native libraries' start-up chatter off the user's terminal, never a real error.

TensorFlow's C++ runtime writes to file descriptor 2 while it loads (absl, oneDNN, "Could not
find cuda drivers", cuInit) before any Python logging setting applies, and its graph optimizer
logs ``Not handling type DT_DOUBLE`` when the exported model runs. Those lines are captured in a
temporary file; if the wrapped code raises, they are written out after all, so nothing that
explains a failure is lost. ``--verbose`` (or ``CLOTHOPT_VERBOSE=1``) turns the capture off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["VERBOSE_ENV", "native_stderr_captured", "quiet_import_keras", "verbose"]

VERBOSE_ENV = "CLOTHOPT_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Route fd 2 to a temporary file for the block; replay it if the block raises an error
    (not on Ctrl-C or SIGTERM: the lines explain nothing then)."""
    if verbose():
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep quiet
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        failed = False
        try:
            yield
        except Exception:
            failed = True  # an error: the lines may explain it (an interrupt needs none)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                tmp.seek(0)
                sys.stderr.write(tmp.read().decode("utf-8", "replace"))
                sys.stderr.flush()


def quiet_import_keras() -> None:
    """Import keras (and its backend) once, without the native start-up lines."""
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" in sys.modules:
        return
    with native_stderr_captured():
        import keras  # noqa: F401
