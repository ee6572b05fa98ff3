"""What every command shares: the base class and the argument helpers.

Every numeric option goes through one of the ``type=`` functions here, so a value out of range
is one argparse line and exit 2 before anything runs (never a numpy or TensorFlow traceback
from deep inside). The bounds are those the library checks again (epochs, retries) or those
the libraries underneath accept (a seed is what ``numpy.random.seed`` takes).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

__all__ = [
    "MAX_RESAMPLES",
    "MAX_SEED",
    "_Command",
    "_epochs",
    "_int_range",
    "_non_negative_int",
    "_positive_float",
    "_positive_int",
    "_seed",
    "_storage_arg",
    "_unit_interval",
]

MAX_SEED = 2**32 - 1  # numpy.random.seed (what keras.utils.set_random_seed calls) takes no more
MAX_RESAMPLES = 1_000_000  # bootstrap: resamples x images indices in memory (8 MB per 1,000 rows)
# int64 bound for counts handed to numpy, TensorFlow or Optuna: "a very large number" rather
# than an OverflowError traceback from C code
_MAX_COUNT = 2**63 - 1


def _whole(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _int_range(low: int, high: int = _MAX_COUNT) -> Callable[[str], int]:
    """A ``type=`` function for a whole number in ``[low, high]``."""

    def parse(text: str) -> int:
        value = _whole(text)
        if not low <= value <= high:
            if high == _MAX_COUNT:
                raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    parse.__name__ = f"whole number in [{low}, {high}]"  # argparse names the type in errors
    return parse


_positive_int = _int_range(1)
_non_negative_int = _int_range(0)
_seed = _int_range(0, MAX_SEED)
_epochs = _int_range(1, 1000)  # study.create and fine_tune.check hold the same bound


def _finite(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value:g}")
    return value


def _unit_interval(text: str) -> float:
    """A number in (0, 1): a learning rate, a share."""
    value = _finite(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), not {value:g}")
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
