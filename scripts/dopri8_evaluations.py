"""Function evaluations and errors of dopri8: anode.dropin.odeint against torchdiffeq.odeint
on the problems of torchdiffeq 0.2.5's test suite.

The problems (``constant``, ``linear``, ``sine`` on t in [1, 8], 10 output times, float64,
forwards and reversed) are imported from the suite's ``problems.py`` (``--suite DIR``, by
default ``../shared/peer/torchdiffeq-0.2.5-tests``); they are never part of this project.
Prints a markdown table: evaluations in both libraries (counted by wrapping ``func``), their
ratio, and each library's largest error against the problem's exact solution. Run:
``python scripts/dopri8_evaluations.py [--suite DIR]`` (about 10 s; needs torchdiffeq).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

DEFAULT_SUITE = Path(__file__).resolve().parents[1].parent / "shared" / "peer" / "torchdiffeq-0.2.5-tests"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="torchdiffeq's tests/ folder")
    parser.add_argument("--method", default="dopri8")
    args = parser.parse_args(argv)
    if not (args.suite / "problems.py").is_file():
        print(f"no problems.py in {args.suite}; give --suite DIR (torchdiffeq 0.2.5's tests/ folder)")
        return 2
    sys.path.insert(0, str(args.suite))
    import torchdiffeq

    import anode.dropin
    from problems import PROBLEMS, construct_problem

    print("| problem | t | rtol | anode | torchdiffeq | ratio | anode error | torchdiffeq error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for ode in PROBLEMS:
        for reverse in (False, True):
            for rtol in (1e-5, 1e-9):
                f, y0, t, exact = construct_problem("cpu", ode=ode, reverse=reverse, dtype=torch.float64)
                counts, errors = [], []
                for solve in (anode.dropin.odeint, torchdiffeq.odeint):
                    calls = [0]

                    def func(tt, y, calls=calls, f=f):
                        calls[0] += 1
                        return f(tt, y)

                    with torch.no_grad():
                        y = solve(func, y0.detach(), t.detach(), method=args.method, rtol=rtol, atol=rtol)
                    counts.append(calls[0])
                    errors.append((y - exact).abs().max().item())
                direction = "8 → 1" if reverse else "1 → 8"
                print(f"| {ode} | {direction} | {rtol:g} | {counts[0]} | {counts[1]} | "
                      f"{counts[0] / counts[1]:.2f} | {errors[0]:.1e} | {errors[1]:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
