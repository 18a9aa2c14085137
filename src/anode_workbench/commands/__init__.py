"""Subcommands of the ``anode`` command, one module each.

A module here defines ``register(subparsers)``, which adds its parser(s) and sets
``run=function(args) -> int`` as a default; :mod:`anode_workbench.cli` discovers them.
"""
