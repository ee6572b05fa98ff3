"""clothopt: find the best backbone and hyperparameters for a clothing catalogue, on Optuna."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # Read on first use, not on import: `python -m clothopt` imports this package before its
    # SIGTERM handler is installed, and a metadata scan of every installed package is that
    # window's widest part.
    if name != "__version__":
        raise AttributeError(f"module 'clothopt' has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("clothopt")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        version = "0.0.0+unknown"
    globals()["__version__"] = version
    return version
