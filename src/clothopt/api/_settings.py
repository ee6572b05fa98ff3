"""How the Python API's arguments become what a study records: a sampler or pruner by name,
the call that made it, a space object told from a path, the studies a storage holds."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from clothopt.api._common import is_path
from clothopt.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    import optuna

__all__ = [
    "PRUNER_NAMES",
    "SAMPLER_NAMES",
    "call_line",
    "is_space",
    "named",
    "override",
    "study_names",
]

# the sampler and pruner classes a study can record by name (every worker rebuilds them from it)
SAMPLER_NAMES = {
    "TPESampler": "tpe",
    "RandomSampler": "random",
    "QMCSampler": "qmc",
    "GPSampler": "gp",
    "CmaEsSampler": "cmaes",
}
PRUNER_NAMES = {"MedianPruner": "median", "NopPruner": "none"}


def is_space(value: object) -> bool:
    from clothopt.spaces import SearchSpace

    return isinstance(value, SearchSpace)


def study_names(url: str) -> set[str]:
    from clothopt.engine import open_storage

    try:
        store = open_storage(url)
    except NotFound:  # no SQLite file yet: no study either
        return set()
    return {s.study_name for s in store.get_all_studies()}


def named(value: Any, names: dict[str, str], what: str) -> tuple[str | None, Any]:
    """(the recorded name, the object to use) for a sampler or pruner given by name or object."""
    if value is None or isinstance(value, str):
        return value, None
    for cls in type(value).__mro__:
        if cls.__module__.startswith("optuna") and cls.__name__ in names:
            return names[cls.__name__], value
    kinds = ", ".join(names)
    hint = " (the grid sampler is given by name: clothopt enqueues the space's grid)"
    raise InvalidArgument(
        f"a study records its {what} to rebuild it in every worker: pass a name or one of "
        f"{kinds}, not {type(value).__name__}"
        + (hint if type(value).__name__ == "GridSampler" else "")
        + "; any other works with create_objective() on your own optuna.create_study"
    )


def override(study: optuna.Study, sampler: Any, pruner: Any) -> optuna.Study:
    if sampler is not None:
        study.sampler = sampler
    if pruner is not None:
        study.pruner = pruner
    return study


def call_line(function: str, **kwargs: Any) -> str:
    """How the study was made, to record with it as the CLI records its command line (the
    storage URL's password masked)."""
    from clothopt.paths import masked_url

    def shown(key: str, value: Any) -> str:
        if key == "storage":
            return repr(masked_url(value))
        if value is not None and not isinstance(value, (str, int, float, bool, list, tuple)):
            return type(value).__name__ + "(...)" if not is_path(value) else repr(os.fspath(value))
        return repr(value)

    args = ", ".join(f"{k}={shown(k, v)}" for k, v in kwargs.items() if v is not None)
    return f"clothopt.{function}({args})"
