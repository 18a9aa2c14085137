"""``anode bench frontier``: peak memory against time of every exact method on one ODE block
(workloads W1–W3, :mod:`anode_workbench.bench.frontier`), with ``torch.utils.checkpoint`` per step and
torchdiffeq ``odeint_adjoint`` as peers. Writes ``frontier_results.{md,csv}`` and
``frontier.png`` into ``--out`` and prints the targets as ratios from the one run.

Exit status: 0; 1 when an exact method's gradient differs from ``direct``'s; 2 on bad
arguments; 3 when a measurement failed. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._arguments import name_list


def register(sub, process_arguments, threads_and_clock, clock_text) -> None:
    """Add ``bench frontier`` to the ``bench`` subcommands ``sub``; the other three arguments
    are ``anode bench``'s shared process options and their readers."""
    f = sub.add_parser("frontier", help="memory against time of every exact method on W1-W3, with peers",
                       description="Peak memory, time, evaluations and gradient difference of direct, "
                                   "anode's schedules (whole steps and stage by stage), Auto at torchdiffeq "
                                   "odeint_adjoint's peak, torch.utils.checkpoint per step and "
                                   "odeint_adjoint.")
    f.add_argument("--out", type=Path, default=Path("runs/bench"),
                   help="output folder for frontier_results.{md,csv} and frontier.png (default: %(default)s)")
    f.add_argument("--quick", action="store_true", help="tiny sizes, one repeat; no target is judged")
    f.add_argument("--workloads", type=name_list, default=("W1", "W2", "W3"),
                   help="comma-separated among W1, W2, W3 (default: all)")
    f.add_argument("--repeats", type=int, default=9, help="timed rounds, interleaved (default: %(default)s)")
    f.add_argument("--tol", type=float, default=1e-5,
                   help="relative gradient difference up to which an exact method equals direct "
                        "(default: %(default)s)")
    f.add_argument("--seed", type=int, default=0, help="seed of weights and data (default: %(default)s)")
    f.add_argument("--device", default="cpu", help="cpu only (default: %(default)s)")
    process_arguments(f)
    f.set_defaults(run=lambda args: run(args, threads_and_clock, clock_text), command_line=None)


def run(args: argparse.Namespace, threads_and_clock, clock_text) -> int:
    """Measure, print the targets and the table, write the files; the exit status as above."""
    from ..bench import frontier, frontier_workloads
    from ..bench.environment import machine
    from ..bench.report import targets_table

    unknown = sorted(set(args.workloads) - set(frontier_workloads.WORKLOADS))
    problems = ([f"unknown workload(s) {', '.join(unknown)}; choose among "
                 f"{', '.join(sorted(frontier_workloads.WORKLOADS))}"] if unknown else []) + \
        ([f"--repeats must be at least 1, got {args.repeats}"] if args.repeats < 1 else []) + \
        ([f"--device {args.device}: the frontier benchmark runs on cpu only"] if args.device != "cpu" else [])
    if problems:
        for problem in problems:
            print(f"anode bench frontier: error: {problem}", file=sys.stderr)
        return 2
    if args.quick:
        args.repeats = 1
    threads, clock = threads_and_clock(args)
    rows = frontier.run(list(args.workloads), quick=args.quick, repeats=args.repeats, threads=threads,
                        clock=clock, isolation=args.isolation, tol=args.tol, seed=args.seed,
                        log=lambda s: print(s, flush=True))
    found = frontier.evaluate(rows, quick=args.quick)
    sizes = frontier_workloads.QUICK if args.quick else frontier_workloads.WORKLOADS
    header = (
        "## Memory against time on one block (W1-W3)\n\n"
        f"Command: `{args.command_line or 'anode bench frontier'}`  \nMachine: {machine('cpu')}; "
        f"{threads or 'torch default'} thread(s) per measurement.  \nSizes: "
        + "; ".join(f"{w}: {sizes[w]}" for w in args.workloads) + ".  \n"
        "Peak = extra peak resident memory of one forward+backward, a fresh process per method; time = "
        f"median {clock_text(clock)} of {args.repeats} rounds after warm-up, methods interleaved, in a "
        "new interpreter per workload whose heap glibc never trimmed (MALLOC_TRIM_THRESHOLD_, "
        "MALLOC_MMAP_THRESHOLD_); "
        "store against checkpoint: the median of the per-round ratios.")
    frontier.write(rows, found, args.out, header)
    png = frontier.plot(rows, args.out / "frontier.png", title="peak memory against time, one block, cpu")
    print()
    print(targets_table(found))
    print()
    print(frontier.results_table(rows))
    print(f"\nwrote {args.out}/frontier_results.{{md,csv}}" + (f" and {png.name}" if png else ""))
    failed = [r for r in rows if "error" in r]
    inexact = [r for r in rows if r["exact"] and "error" not in r and "equal" in r and not r["equal"]]
    for r in failed:
        print(f"error: {r['workload']} {r['method']} failed: {r['error']}", file=sys.stderr)
    for r in inexact:
        print(f"error: {r['workload']} {r['method']} differs from direct ({r['grad_rel_diff']:.2e})",
              file=sys.stderr)
    return 3 if failed else (1 if inexact else 0)
