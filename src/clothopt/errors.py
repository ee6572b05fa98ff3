"""The one exception type for mistakes a user can make (shown as one line, no traceback)."""

from __future__ import annotations

__all__ = ["ClothoptError"]


class ClothoptError(Exception):
    """A user-facing error: the CLI prints ``clothopt: error: <message>`` and exits non-zero."""

    exit_code: int = 2
