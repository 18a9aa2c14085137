"""Argument types shared by the subcommands (not a subcommand: :mod:`anode.cli` skips
modules whose names start with an underscore)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_list(minimum: int = 0) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated integers, at least one, each >= ``minimum``
    (``"1,2,4"`` → ``(1, 2, 4)``)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one integer")
        if min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, got {text!r}")
        return values

    return parse


def name_list(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated names, at least one (``"a, b"`` → ``("a", "b")``)."""
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values
