"""The ``anode`` command. Each subcommand lives in its own module under ``anode_workbench.commands``
and registers itself through ``register(subparsers)``; this module only assembles them
(modules whose names start with an underscore hold what the subcommands share)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import shlex
import sys

WORKBENCH_REQUIRES = ("numpy", "tqdm", "matplotlib")


def _missing_requirements() -> list[str]:
    """The workbench's own requirements that this environment lacks (``pip install anode``
    alone installs the library, which needs none of them)."""
    return [name for name in WORKBENCH_REQUIRES if importlib.util.find_spec(name) is None]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand found in ``anode_workbench.commands``."""
    from . import commands

    parser = argparse.ArgumentParser(
        prog="anode", description="Train, evaluate, diagnose and benchmark neural ODEs (ANODE)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``anode`` console script; returns the exit status.

    A subcommand that declares a ``command_line`` default gets the command as typed there
    (``"anode bench --quick"``), for the records it writes.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    missing = _missing_requirements()
    if missing:
        print(f"anode: the command needs the workbench's requirements ({', '.join(missing)} missing); "
              "install them with: pip install 'anode[workbench]'", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if hasattr(args, "command_line"):
        args.command_line = shlex.join(["anode", *argv])
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
