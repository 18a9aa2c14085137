"""Exception type for dataset problems."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset folder or file is missing, corrupt or inconsistent.

    Subclasses :class:`ValueError` so callers that already catch ``ValueError`` keep working.
    The message always names the offending folder or file.
    """
