"""The documentation site builds without a warning, and its API reference covers every public name.

``mkdocs build --strict`` turns every warning into a failure: a broken link or anchor in the
user guides, a guide left out of the navigation, a docstring griffe cannot parse (two
parameters in one ``Args`` entry), a documented parameter the signature lacks, or an API page
naming an object that no longer exists.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import anode
import anode.dropin
import anode.models

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocs and mkdocstrings[python] are not installed (pip install -e '.[docs]'; the test extra "
           "includes them)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and not warnings, (
        f"mkdocs build --strict failed (exit {result.returncode}):\n{output}")
    return out


def test_site_builds_without_warnings(site):
    assert (site / "index.html").is_file()
    assert (site / "api" / "index.html").is_file()


def _public_names() -> list[str]:
    names = [f"anode.{n}" for n in anode.__all__]
    names += [f"anode.models.{n}" for n in anode.models.__all__]
    names += [f"anode.dropin.{n}" for n in anode.dropin.__all__]
    return names


def test_api_reference_has_an_entry_for_every_public_name(site):
    anchors = set()
    for page in (site / "api").rglob("*.html"):
        anchors.update(re.findall(r'id="(anode[\w.]*)"', page.read_text(encoding="utf-8")))
    missing = [name for name in _public_names() if name not in anchors]
    assert not missing, (f"public names without an entry in the API reference: {missing}; add "
                         "'::: <name>' to a page in docs/api/ (and a docstring if it has none)")
