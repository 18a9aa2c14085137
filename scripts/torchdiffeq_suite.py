"""Run torchdiffeq 0.2.5's own test suite against ``anode.dropin``.

A package named ``torchdiffeq`` is put first on the path: its public ``odeint``,
``odeint_adjoint`` (and ``odeint_event``, ``odeint_dense`` where anode.dropin has them) are
anode's, while ``torchdiffeq._impl`` stays the installed torchdiffeq, whose internals the
suite uses for reference solutions. The suite itself is read from
``../shared/peer/torchdiffeq-0.2.5-tests`` (or ``--suite DIR``) and copied into a temporary
folder; it is never part of this project.

Usage::

    python scripts/torchdiffeq_suite.py [--suite DIR] [-- PYTEST ARGS]

Prints pytest's report and, last, one line ``subtests passed: P of 637`` from pytest's
summary (each test method loops over cases with ``subTest``; pytest counts each case as a
subtest). Exit code 0 when the suite ran (failures are counted, not fatal), 2 when the suite
or torchdiffeq is missing (with the reason).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_SUITE = Path(__file__).resolve().parents[1].parent / "shared" / "peer" / "torchdiffeq-0.2.5-tests"
FILES = ["api_tests.py", "event_tests.py", "gradient_tests.py", "norm_tests.py", "odeint_tests.py"]

SHIM = '''\
"""torchdiffeq with anode's public functions: the real torchdiffeq's internals stay."""
__path__.append({real!r})  # torchdiffeq._impl resolves to the installed package's

import anode.dropin as _dropin

odeint = _dropin.odeint
odeint_adjoint = _dropin.odeint_adjoint
if hasattr(_dropin, "odeint_event"):
    odeint_event = _dropin.odeint_event
if hasattr(_dropin, "odeint_dense"):
    odeint_dense = _dropin.odeint_dense
'''


def real_torchdiffeq() -> Path:
    where = "import os, torchdiffeq; print(os.path.dirname(torchdiffeq.__file__))"
    out = subprocess.run([sys.executable, "-c", where], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit("torchdiffeq is not installed (pip install torchdiffeq==0.2.5): the suite "
                         "needs its internals for reference solutions")
    return Path(out.stdout.strip())


TOTAL = 637  # subtests of the five files with torchdiffeq 0.2.5 itself (see the suite's README)


def subtests_passed(summary: str) -> int:
    """The number in pytest's "N subtests passed" summary (0 when none passed)."""
    found = re.findall(r"(\d+) subtests passed", summary)
    return int(found[-1]) if found else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="torchdiffeq's tests/ folder")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if not (args.suite / "api_tests.py").is_file():
        print(f"torchdiffeq's test suite is not at {args.suite}: nothing to run "
              "(give --suite DIR, the tests/ folder of torchdiffeq 0.2.5)")
        return 2
    real = real_torchdiffeq()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shim = tmp / "shim" / "torchdiffeq"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text(SHIM.format(real=str(real)))
        suite = tmp / "suite"
        shutil.copytree(args.suite, suite)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(tmp / "shim"), *filter(None, [os.environ.get("PYTHONPATH")])]), OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               *FILES, *args.pytest_args]
        run = subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True)
    print(run.stdout + run.stderr, end="")
    print(f"subtests passed: {subtests_passed(run.stdout)} of {TOTAL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
