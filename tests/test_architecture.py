"""The shape of the package: no import cycles, a generic engine, trial code free of the web UI."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import clothopt

SRC = Path(clothopt.__file__).parent
MODULES = sorted(
    m.name for m in pkgutil.walk_packages([str(SRC)], "clothopt.") if "space_files" not in m.name
)
# what the engine must not know: clothopt's specific parts
SPECIFIC = ("model", "backbones", "features", "objective", "dashboard", "config", "spaces", "data")


def _imported_after(module: str) -> list[str]:
    """The clothopt modules loaded by importing ``module`` alone, in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('clothopt'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"importing {module} alone fails:\n{done.stderr[-2000:]}"
    return json.loads(done.stdout.splitlines()[-1])


def test_the_module_list_is_complete() -> None:
    assert {"clothopt.engine", "clothopt.engine.runner", "clothopt.study"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_alone(module: str) -> None:
    assert module in _imported_after(module)


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("clothopt.engine")])
def test_the_engine_knows_nothing_of_clothopt_specifics(module: str) -> None:
    loaded = _imported_after(module)
    specific = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in SPECIFIC]
    assert specific == [], f"{module} loads {specific}"


def test_trial_code_does_not_import_the_dashboard() -> None:
    for module in ("clothopt.objective", "clothopt.study", "clothopt.compare"):
        assert "clothopt.dashboard" not in _imported_after(module), module
    # nor lazily, inside a function: only the command line wires the dashboard in
    for name in ("objective.py", "study.py", "compare.py", "runs.py"):
        assert "clothopt.dashboard" not in (SRC / name).read_text(), name
    for path in (SRC / "engine").glob("*.py"):
        assert "clothopt.dashboard" not in path.read_text(), path.name


def test_no_module_exceeds_500_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}
