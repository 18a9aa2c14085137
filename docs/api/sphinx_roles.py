"""A griffe extension for the API reference: Sphinx roles in the docstrings as inline code.

The docstrings are Google style but name other objects with Sphinx roles
(``:class:`anode.Adaptive```, ``:func:`odeint```), which Markdown would show
verbatim. This rewrites each role as inline code of its target (the last component for a
``~`` target, as Sphinx shows it) and a reStructuredText ``::`` before a literal block as
``:``, before mkdocstrings parses the docstring. Loaded by mkdocs.yml; not part of the site.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)


def _role(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles of every docstring as Markdown inline code."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _LITERAL.sub(r"\1:", _ROLE.sub(_role, obj.docstring.value))
