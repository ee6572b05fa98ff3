"""Numeric options: every one is range-checked by argparse, out of range is one line and exit 2.

The table below is the specification: each numeric option of each command and the whole
numbers (or reals) it accepts. A numeric option added without an entry (or with a plain
``type=int``) fails the first test; hypothesis then feeds every option values around and far
beyond its bounds, and words that are no numbers, through ``clothopt.cli.main``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clothopt.cli import _build_parser, main

INT64 = 2**63 - 1
SEED = 2**32 - 1

# (command, option) -> (lowest, highest) accepted
INTS: dict[tuple[str, str], tuple[int, int]] = {
    ("study create", "--n-trials"): (1, INT64),
    ("study create", "--epochs"): (1, 1000),
    ("study create", "--seed"): (0, SEED),
    ("study create", "--max-retries"): (0, 100),
    ("study optimize", "--n-trials"): (1, INT64),
    ("study finalize", "--epochs"): (1, 1000),
    ("study finalize", "--trial"): (0, INT64),
    ("study finalize", "--resamples"): (1000, 1_000_000),
    ("study finalize", "--bootstrap-seed"): (0, SEED),
    ("study finalize", "--fine-tune"): (0, INT64),
    ("study finalize", "--race-top"): (0, 1000),
    ("study finalize", "--race-repeats"): (1, 100),
    ("study finalize", "--blend"): (0, 1000),
    ("study finalize", "--fine-tune-epochs"): (1, 1000),
    ("predict", "--top-k"): (1, INT64),
    ("evaluate", "--resamples"): (1000, 1_000_000),
    ("evaluate", "--bootstrap-seed"): (0, SEED),
    ("index build", "--nlist"): (1, INT64),
    ("index build", "--nprobe"): (1, INT64),
    ("similar", "-k"): (1, INT64),
    ("similar", "--nprobe"): (1, INT64),
    ("compare samplers", "--seeds"): (1, 1000),
    ("compare samplers", "--budget"): (1, INT64),
    ("compare samplers", "--epochs"): (1, 1000),
    ("dashboard", "--port"): (0, 65535),
}
# real-valued: (lowest, highest, whether the bounds themselves are accepted)
FLOATS: dict[tuple[str, str], tuple[float, float, bool]] = {
    ("study optimize", "--timeout"): (0.0, math.inf, False),
    ("study finalize", "--fine-tune-lr"): (0.0, 1.0, False),
}


def _commands(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))
    if words:
        yield " ".join(words), parser


COMMANDS = dict(_commands(_build_parser()))


def _numeric_options() -> dict[tuple[str, str], argparse.Action]:
    found = {}
    for command, parser in COMMANDS.items():
        for action in parser._actions:
            default = action.default
            numeric_default = isinstance(default, int | float) and not isinstance(default, bool)
            if action.option_strings and (action.type is not None or numeric_default):
                found[command, action.option_strings[0]] = action
    return found


def _argv(command: str, option: str, value: str) -> list[str]:
    """The command with its required arguments filled in, then ``option value``."""
    argv = command.split()
    for action in COMMANDS[command]._actions:
        if not action.option_strings and action.dest != "help":
            argv.append("x")  # a positional: never read, parsing stops at the bad option
        elif action.required:
            argv += [action.option_strings[0], "x"]
    return [*argv, f"{option}={value}"]


def _parse_error(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's exit, as the console script ends
            code = int(exc.code or 0)
    return code, err.getvalue()


def test_every_numeric_option_is_range_checked() -> None:
    options = _numeric_options()
    assert set(options) == set(INTS) | set(FLOATS)
    for key, action in options.items():
        assert action.type not in (int, float, None), f"{key}: a plain {action.type}"


def _accepts(command: str, option: str, text: str) -> bool:
    action = _numeric_options()[command, option]
    try:
        action.type(text)  # type: ignore[misc]
    except argparse.ArgumentTypeError:
        return False
    return True


def _expected(key: tuple[str, str], value: float) -> bool:
    if key in INTS:
        low, high = INTS[key]
        return low <= value <= high
    low, high, closed = FLOATS[key]
    return (low <= value <= high if closed else low < value < high) and math.isfinite(value)


def _around_bounds(key: tuple[str, str]) -> st.SearchStrategy[int]:
    low, high = INTS[key]
    edges = [low - 1, low, low + 1, high - 1, high, high + 1, -(2**64), 2**64, 10**30]
    return st.one_of(st.sampled_from(edges), st.integers(-(10**20), 10**20))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_whole_number_options_accept_exactly_their_range(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(INTS)))
    value = data.draw(_around_bounds(key))
    assert _accepts(*key, str(value)) == _expected(key, value)
    if not _expected(key, value):
        code, err = _parse_error(_argv(*key, str(value)))
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and key[1] in err, err
        assert "Traceback" not in err


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_real_options_accept_exactly_their_range(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(FLOATS)))
    value = data.draw(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from([0.0, -0.0, 1.0, 1e-300, -1e-300, 1e308, math.inf, math.nan]),
        )
    )
    text = repr(value)
    assert _accepts(*key, text) == _expected(key, value), text
    if not _expected(key, value):
        code, err = _parse_error(_argv(*key, text))
        assert code == 2 and len(err.strip().splitlines()) == 1 and key[1] in err, err


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(sorted(INTS) + sorted(FLOATS)),
    text=st.one_of(
        st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "0x10", "1_0_", "3.5", "five"]),
        st.text(max_size=12),
    ),
)
def test_words_that_are_no_numbers_are_one_line(key: tuple[str, str], text: str) -> None:
    if _accepts(*key, text):
        value = float(text)  # accepted: it must be a number in range after all
        assert _expected(key, value), text
        return
    code, err = _parse_error(_argv(*key, text))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["study", "create", "--backbone", "x", "--seed", "-1"], "--seed: must be between 0"),
        (["study", "create", "--backbone", "x", "--seed", str(2**32)], "4294967295"),
        (["study", "create", "--backbone", "x", "--max-retries", "-1"], "between 0 and 100"),
        (["evaluate", "m", "d", "--bootstrap-seed", "-5"], "--bootstrap-seed"),
        (["evaluate", "m", "d", "--resamples", "10"], "between 1000 and 1000000"),
        (["study", "finalize", "s", "--fine-tune-lr", "nan"], "finite"),
        (["study", "finalize", "s", "--fine-tune-lr", "2"], "--fine-tune-lr: must be in (0, 1)"),
        (["study", "optimize", "s", "--timeout", "inf"], "finite"),
        (["similar", "i", "q", "-k", "0"], "at least 1"),
        (["compare", "samplers", "--backbone", "x", "--seeds", "100000"], "between 1 and 1000"),
    ],
)
def test_out_of_range_examples(argv: list[str], message: str) -> None:
    code, err = _parse_error(argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
