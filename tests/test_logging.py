"""clothopt.logging: the package's one logger, configured as optuna.logging does."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import clothopt.logging as clog


@pytest.fixture
def restored() -> Iterator[None]:
    root = logging.getLogger("clothopt")
    level, propagate = root.level, root.propagate
    yield
    clog.disable_default_handler()
    root.setLevel(level)
    root.propagate = propagate


def test_module_loggers_live_under_the_package_logger() -> None:
    package = logging.getLogger("clothopt")
    assert clog.get_logger("clothopt.features").parent is package
    assert clog.get_logger("notebook").name == "clothopt.notebook"


def test_set_verbosity_shows_plain_lines_on_stderr_and_hides_what_is_below(
    restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    clog.set_verbosity(clog.INFO)
    log = clog.get_logger("clothopt.final.evaluate")
    log.debug("not shown")
    log.info("extracted %d images", 3)
    log.warning("skipped %d files", 2)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["extracted 3 images", "clothopt: warning: skipped 2 files"]
    assert clog.get_verbosity() == clog.INFO
    clog.set_verbosity(clog.WARNING)
    log.info("quiet now")
    assert capsys.readouterr().err == ""


def test_one_handler_however_often_it_is_enabled_and_none_after_disable(
    restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    clog.set_verbosity(clog.INFO)
    clog.enable_default_handler()
    clog.get_logger("x").info("once")
    assert capsys.readouterr().err == "once\n"
    clog.disable_default_handler()
    package = logging.getLogger("clothopt")
    assert package.propagate  # a caller's own configuration applies again
    assert not [h for h in package.handlers if isinstance(h, clog._StderrHandler)]
    clog.get_logger("x").info("no longer here")
    assert capsys.readouterr().err == ""
