"""clothopt: find the best backbone and hyperparameters for a clothing catalogue, on Optuna."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("clothopt")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
