"""clothopt: find the best backbone and hyperparameters for a clothing catalogue, on Optuna.

The Python API (README "Python API"; each function's docstring says what it raises)::

    study = clothopt.create_study("data", backbone="mobilenet_025", space="quick",
                                  storage="sqlite:///studies/clothopt.db")
    clothopt.optimize(study)              # or study.optimize(clothopt.create_objective(study))
    report = clothopt.finalize(study)
    model = clothopt.load_model(study)
    predictions = clothopt.predict_images(model, "photo.jpg")

Its names load on first use (:mod:`clothopt.api`): ``import clothopt`` imports neither
TensorFlow nor Optuna. Errors are :mod:`clothopt.errors` types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clothopt.api import (
        build_index,
        create_objective,
        create_study,
        delete_study,
        finalize,
        find_similar,
        load_model,
        load_study,
        optimize,
        predict_images,
    )

__all__ = [
    "__version__",
    "build_index",
    "create_objective",
    "create_study",
    "delete_study",
    "finalize",
    "find_similar",
    "load_model",
    "load_study",
    "optimize",
    "predict_images",
]

_API = frozenset(__all__) - {"__version__"}
_SUBMODULES = frozenset({"api", "errors", "logging"})  # light: `clothopt.errors.NotFound` works


def __getattr__(name: str) -> Any:
    # Read on first use, not on import: `python -m clothopt` imports this package before its
    # SIGTERM handler is installed, and a metadata scan of every installed package (or the
    # API's imports) would widen that window.
    if name in _API:
        from clothopt import api

        value = getattr(api, name)
    elif name in _SUBMODULES:
        import importlib

        value = importlib.import_module(f"clothopt.{name}")
    elif name == "__version__":
        from clothopt._version import version

        value = version()
    else:
        raise AttributeError(f"module 'clothopt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
