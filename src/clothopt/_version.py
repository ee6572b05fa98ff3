"""clothopt's installed version, read from the package metadata (a leaf module: the package's
``__version__`` and the modules that record it share it without importing the package)."""

from __future__ import annotations

import functools

__all__ = ["version"]


@functools.cache
def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("clothopt")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0+unknown"
