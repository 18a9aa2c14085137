"""Argument types shared by the subcommands (not a subcommand: :mod:`anode_workbench.cli` skips
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


class _RecipeAction(argparse.Action):
    """``--recipe NAME``: checks the name; ``--recipe list`` prints the recipes and exits."""

    def __call__(self, parser, namespace, value, option_string=None):
        from ..train.recipes import RECIPES, describe_recipes

        if value == "list":
            print(describe_recipes())
            parser.exit(0)
        if value not in RECIPES:
            parser.error(f"argument {option_string}: unknown recipe {value!r}; choose one of "
                         f"{sorted(RECIPES)} (--recipe list describes them)")
        setattr(namespace, self.dest, value)


def add_recipe_argument(parser, help_text: str) -> None:
    """Add ``--recipe NAME`` (``--recipe list`` prints the recipes of
    :mod:`anode_workbench.train.recipes` and exits; an unknown name is a usage error, status 2).
    Unset, the option is absent from the parsed namespace."""
    parser.add_argument("--recipe", metavar="NAME", action=_RecipeAction, default=argparse.SUPPRESS,
                        help=help_text)
