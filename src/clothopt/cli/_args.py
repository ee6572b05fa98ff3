"""What every command shares: the base class and the argument helpers."""

from __future__ import annotations

import argparse
import os

__all__ = ["_Command", "_positive_float", "_positive_int", "_storage_arg"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        default=os.environ.get("CLOTHOPT_STORAGE"),
        help="SQLAlchemy URL (default sqlite:///studies/clothopt.db, or $CLOTHOPT_STORAGE)",
    )


class _Command:
    """Base: subclasses set ``add_arguments`` and ``run``; the docstring is the help text."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError
