"""``clothopt`` and ``python -m clothopt``: a SIGTERM or Ctrl-C from the first moment on ends
with one line and 143/130, including during the seconds of imports before the CLI's own
handlers take over."""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import NoReturn

from clothopt.errors import Terminated


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def exit_with(code: int) -> NoReturn:
    """``sys.exit(code)``, also after a Ctrl-C that escaped code a library ran through
    ``PyRun_String`` (seen about once in 100 interrupted trials). CPython then remembers an
    "unhandled" KeyboardInterrupt although the CLI handled it, and under ``python -m`` ends the
    process by SIGINT (-2) instead of with the code; every ``PyRun_*`` call clears that mark."""
    import ctypes

    with contextlib.suppress(Exception):  # a Python without the C API at hand exits as before
        run_string = ctypes.pythonapi.PyRun_String
        run_string.restype = ctypes.py_object
        run_string.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
        run_string(b"0", 258, {}, {})  # 258: Py_eval_input
    sys.exit(code)


def run() -> NoReturn:
    """The console script's entry point (``[project.scripts]``)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from clothopt.cli import main
    except KeyboardInterrupt:
        print("clothopt: interrupted", file=sys.stderr)
        exit_with(130)
    except Terminated:
        print("clothopt: terminated", file=sys.stderr)
        exit_with(143)
    exit_with(main())


if __name__ == "__main__":
    run()
