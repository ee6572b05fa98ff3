"""Command line: a table of small commands; each one's docstring is its help.

``main(argv) -> int`` never shows a traceback for a mistake a user can make: it prints one
line and returns non-zero. TensorFlow is imported only by commands that train or predict.
The commands live by area (``data``, ``study``, ``model``, ``compare``); their base class and
the shared argument helpers in ``_args``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import clothopt.logging as clothopt_logging
from clothopt._io import write_failed
from clothopt._quiet import VERBOSE_ENV, verbose
from clothopt._version import version
from clothopt.cli._args import _Command
from clothopt.cli._record import recorded_command, run_it_line
from clothopt.cli.compare import CompareBackbones, CompareSamplers, Dashboard
from clothopt.cli.data import Backbones, DataCheck, DataFetch
from clothopt.cli.model import Evaluate, IndexBuild, Predict, Similar
from clothopt.cli.study import (
    StudyCreate,
    StudyDelete,
    StudyFinalize,
    StudyList,
    StudyOptimize,
    StudyReport,
    StudyShow,
)
from clothopt.engine.interrupts import interrupt_since, interrupts_raise, received
from clothopt.engine.storage import storage_errors
from clothopt.errors import ClothoptError, Terminated

__all__ = ["COMMANDS", "main", "recorded_command", "run_it_line"]


# --------------------------------------------------------------------------- the table

COMMANDS: dict[str, type[_Command]] = {
    "data fetch": DataFetch,
    "data check": DataCheck,
    "backbones": Backbones,
    "study create": StudyCreate,
    "study optimize": StudyOptimize,
    "study list": StudyList,
    "study show": StudyShow,
    "study delete": StudyDelete,
    "study finalize": StudyFinalize,
    "study report": StudyReport,
    "predict": Predict,
    "evaluate": Evaluate,
    "index build": IndexBuild,
    "similar": Similar,
    "compare backbones": CompareBackbones,
    "compare samplers": CompareSamplers,
    "dashboard": Dashboard,
}

_GROUPS = {"data": "data sets", "study": "studies", "compare": "compare studies"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every other user error
        self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clothopt",
        description="Backbone and hyperparameter search for clothing classifiers, on Optuna.",
    )
    parser.add_argument("--version", action="version", version=f"clothopt {version()}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the native libraries' start-up lines (TensorFlow's), hidden by default",
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction[Any]] = {}
    for name, cls in COMMANDS.items():
        words = name.split()
        help_text = (cls.__doc__ or "").strip().splitlines()[0]
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_text, description=help_text)
        else:
            if words[0] not in groups:
                g = top.add_parser(words[0], help=_GROUPS.get(words[0], words[0]))
                groups[words[0]] = g.add_subparsers(
                    dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser, required=True
                )
            sub = groups[words[0]].add_parser(words[1], help=help_text, description=help_text)
        cls.add_arguments(sub)
        sub.set_defaults(_command=cls)
    return parser


def _quiet_libraries() -> None:
    # TensorFlow's C++ start-up chatter (no CUDA here, oneDNN notes) is not the user's business
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the library's progress and notes (clothopt.logging) are the command's own output
    clothopt_logging.set_verbosity(clothopt_logging.DEBUG if verbose() else clothopt_logging.INFO)
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


# the commands that run trials: an interrupt puts the running one back in the queue
_TRIAL_COMMANDS: tuple[type[_Command], ...] = (StudyOptimize, CompareSamplers)
# the commands that only read, or write their outputs whole at the end (stage, then swap)
_UNCHANGED: tuple[type[_Command], ...] = (
    *(Backbones, DataCheck, StudyList, StudyShow, StudyReport),
    *(Predict, Evaluate, IndexBuild, Similar, CompareBackbones),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (2: a user error, 130/143: interrupted)."""
    mark = received()
    running: list[type[_Command]] = []  # the command, once the line is parsed
    try:
        # SIGTERM at any moment (imports included) ends the command as cleanly as Ctrl-C
        with interrupts_raise():
            return _main(list(sys.argv[1:] if argv is None else argv), running)
    except ClothoptError as exc:
        print(f"clothopt: error: {exc}", file=sys.stderr)
        return 2  # every error raised on purpose, as argparse does for a bad flag
    except (KeyboardInterrupt, Terminated) as exc:
        return _interrupted(exc, running)
    except Exception as exc:
        # an interrupt a library turned into its own error is still an interrupt
        if (interrupt := interrupt_since(mark)) is not None:
            return _interrupted(interrupt, running)
        # a refused write the command did not foresee (a full disk, ulimit -f): one line
        if (failed := write_failed(exc)) is None:
            raise
        print(f"clothopt: error: {failed}", file=sys.stderr)
        return 2


def _interrupted(exc: BaseException, running: Sequence[type[_Command]]) -> int:
    """One line: interrupted (130) or terminated (143), and what it means for this command:
    the note the command put on ``exc`` (what it kept), else its kind's."""
    word, code = ("interrupted", 130) if isinstance(exc, KeyboardInterrupt) else ("terminated", 143)
    note = getattr(exc, "clothopt_note", None)
    if note is None and running:
        if issubclass(running[0], _TRIAL_COMMANDS):
            note = "the running trial was put back in the queue"
        elif issubclass(running[0], _UNCHANGED):
            note = "nothing was changed"
    print(f"clothopt: {word}" + (f"; {note}" if note else ""), file=sys.stderr)
    return code


def _main(argv: list[str], running: list[type[_Command]]) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_command", None) is None:
        parser.print_help()
        return 2
    running.append(args._command)
    args._argv = argv  # the command line as given, for the study's record
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    _quiet_libraries()
    with storage_errors(getattr(args, "name", None)):
        return args._command().run(args)
