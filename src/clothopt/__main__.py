"""``clothopt`` and ``python -m clothopt``: a SIGTERM or Ctrl-C from the first moment on ends
with one line and 143/130, including during the seconds of imports before the CLI's own
handlers take over."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

from clothopt.errors import Terminated


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def run() -> NoReturn:
    """The console script's entry point (``[project.scripts]``)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from clothopt.cli import main
    except KeyboardInterrupt:
        print("clothopt: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("clothopt: terminated", file=sys.stderr)
        sys.exit(143)
    sys.exit(main())


if __name__ == "__main__":
    run()
