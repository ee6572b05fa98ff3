from __future__ import annotations

import signal
import sys

from clothopt.errors import Terminated


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


if __name__ == "__main__":
    # SIGTERM (and Ctrl-C) during the imports below ends as cleanly as during the command
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
