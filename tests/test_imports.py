"""The package's import structure, read statically from the source (nothing is imported):

- no import cycle among clothopt's modules, counting every import: top-level, under
  ``if TYPE_CHECKING:`` and inside functions (a lazy import still ties two modules together);
- no private name of Optuna or optuna-dashboard outside ``clothopt.engine.optuna_private``.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "clothopt"
ADAPTER = "clothopt.engine.optuna_private"
OPTUNA_PACKAGES = ("optuna", "optuna_dashboard")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.AST, name: str, is_package: bool) -> Iterator[tuple[str, str | None]]:
    """(module, name imported from it or None) for every import anywhere in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                yield base, alias.name


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the clothopt modules it imports (``from pkg import sub``: the submodule)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for base, item in imported(tree, name, path.name == "__init__.py"):
            if item is not None and f"{base}.{item}" in mods:
                target = f"{base}.{item}"
            elif base in mods:
                target = base
            else:
                # `import clothopt.a.b` of a missing module, or not clothopt: no edge
                continue
            if target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_cycle(graph: dict[str, set[str]], component: Iterable[str]) -> list[str]:
    """One cycle through ``component``, as a path that ends where it starts."""
    members = set(component)
    start = min(members)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w in seen]
        if back:
            return [*path[path.index(back[0]) :], back[0]]
        path.append(nxt[0])
        seen.add(nxt[0])


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import clothopt.b\n"
        "from clothopt import c\n"
        "from . import d\n"
        "if TYPE_CHECKING:\n"
        "    from clothopt.e import Thing\n"
        "def f():\n"
        "    from .f import g\n"
    )
    mods = {f"clothopt.{m}": tmp_path / f"{m}.py" for m in "abcdef"}
    for m, path in mods.items():
        path.write_text(source if m == "clothopt.a" else "")
    graph = import_graph(mods)
    assert graph["clothopt.a"] == {f"clothopt.{m}" for m in "bcdef"}


def test_cycles_are_found_and_shown() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_type_only_ones_included() -> None:
    graph = import_graph(modules())
    assert len(graph) > 50 and graph["clothopt.engine.queue"] >= {"clothopt.engine.storage"}
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(a_cycle(graph, c)) for c in found)


# --------------------------------------------------------------------------- Optuna privates


def _privates_defined(root: Path) -> set[str]:
    """Every ``_name`` a package defines (functions, classes, attributes, module globals)."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def optuna_private_uses(path: Path, theirs: set[str], ours: set[str]) -> list[str]:
    """Where ``path`` imports a private Optuna module or name, or reads an attribute named as
    one of Optuna's private ones (``theirs``) that clothopt does not define itself (``ours``)."""
    tree = ast.parse(path.read_text(), str(path))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for mod in mods:
                parts = (mod or "").split(".")
                if parts[0] in OPTUNA_PACKAGES and (
                    any(p.startswith("_") for p in parts)
                    or any(n.startswith("_") and not n.startswith("__") for n in names)
                ):
                    hits.append(f"{path.name}:{node.lineno} imports {mod} {names}")
        attr = None
        if isinstance(node, ast.Attribute):
            attr = node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            attr = node.args[1].value
        if attr in theirs and attr not in ours:
            hits.append(f"{path.name}:{node.lineno} uses {attr}")
    return hits


def test_optuna_private_names_only_in_the_adapter() -> None:
    theirs: set[str] = set()
    for package in OPTUNA_PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None
        theirs |= _privates_defined(Path(spec.origin).parent)
    mods = modules()
    ours = _privates_defined(PACKAGE)
    # the adapter does use them (else the check would not see what it checks for)
    assert optuna_private_uses(mods[ADAPTER], theirs, ours)
    hits = [
        h for m, p in mods.items() if m != ADAPTER for h in optuna_private_uses(p, theirs, ours)
    ]
    assert not hits, f"Optuna private names outside {ADAPTER}: {hits}"


@pytest.mark.parametrize(
    "line",
    [
        "from optuna.storages._rdb import models",
        "from optuna.artifacts import _upload",
        "import optuna_dashboard._app",
        "x = study._storage",
        "x = getattr(storage, '_backend', storage)",
    ],
)
def test_the_private_name_check_sees(tmp_path: Path, line: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(line + "\n")
    assert optuna_private_uses(path, {"_storage", "_backend"}, set())
