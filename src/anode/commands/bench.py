"""``anode bench``: memory and speed of gradient methods for a stack of ODE blocks (and
``anode bench models``: one training step of every registered model).

``anode bench`` sweeps N_t and L for a stack of L blocks of the ANODE paper's ResNet ODE
function on CIFAR-sized input, measuring every gradient method available (this library's,
``torch.utils.checkpoint`` around each block, torchdiffeq's ``odeint`` and
``odeint_adjoint``) in fresh processes, and writes into ``--out``:

* ``bench_results.csv`` and ``bench_results.md`` (targets, growth of memory, every
  measurement, with ratios to ``direct`` and to torchdiffeq's ``odeint_adjoint``);
* ``bench_memory_vs_nt.png``, ``bench_memory_vs_layers.png``, ``bench_time_ratio.png``;
* ``bench_results.json`` (the rows and the run's settings).

Exit status: 0; 1 when an exact method's output or gradient differs from ``direct``'s; 2 on
bad arguments; 3 when a measurement failed (its row says why).
See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


QUICK = dict(steps=[1, 2], layers=[1, 2], fixed_layers=1, fixed_steps=2, batch=2, channels=4, size=8,
             repeats=1, snapshots=[1])


def register(subparsers) -> None:
    """Add the ``bench`` subcommand (and ``bench models``)."""
    p = subparsers.add_parser(
        "bench", help="memory and speed of gradient methods (ANODE, direct, checkpointing, torchdiffeq)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench"),
                   help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: N_t in {1, 2}, L in {1, 2}, 2 images of 4x8x8, one repeat, "
                        "time and memory in the same process")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--steps", type=_ints, default=[1, 2, 4, 8, 16, 32],
                   help="N_t values (default: 1,2,4,8,16,32)")
    p.add_argument("--layers", type=_ints, default=[1, 2, 4, 8], help="L values (default: 1,2,4,8)")
    p.add_argument("--grid", choices=("cross", "full"), default="cross",
                   help="full: every (N_t, L); cross: every N_t at --fixed-layers and every L at "
                        "--fixed-steps (default: %(default)s)")
    p.add_argument("--fixed-layers", type=int, default=2, help="L of the N_t sweep (default: %(default)s)")
    p.add_argument("--fixed-steps", type=int, default=16, help="N_t of the L sweep (default: %(default)s)")
    p.add_argument("--method", default="euler", choices=("euler", "midpoint"),
                   help="Runge–Kutta method, defined identically by torchdiffeq (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    p.add_argument("--channels", type=int, default=32, help="channels C of the state (default: %(default)s)")
    p.add_argument("--size", type=int, default=32, help="height = width of the state (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds, all methods interleaved (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per measurement (default: 1 on cpu, torch's default on cuda)")
    p.add_argument("--snapshots", type=_ints, default=[2, 4],
                   help="snapshot counts of anode/revolve (default: 2,4)")
    p.add_argument("--methods", default=None,
                   help="comma-separated method names to run (default: all available; direct is always run)")
    p.add_argument("--tol", type=float, default=1e-5,
                   help="relative difference up to which an exact method equals direct "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and input (default: %(default)s)")
    p.add_argument("--isolation", choices=("fork", "spawn"), default="fork",
                   help="fresh process per configuration: forked from a server that imported torch "
                        "once, or a new interpreter each (default: %(default)s)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="time compared: wall, or the measurement process's CPU time (default: cpu "
                        "with one thread on the cpu, where other work may share the cores; else wall)")
    p.set_defaults(run=run)
    sub = p.add_subparsers(dest="bench_command", metavar="{models}")
    from ..bench import models

    models.register(sub)


def command_line() -> str:
    """The ``anode bench ...`` command line of this process, for the head of the tables (from
    ``sys.argv``; generic when the benchmark was called from Python)."""
    argv = sys.argv
    if "bench" in argv:
        return "anode " + " ".join(shlex.quote(a) for a in argv[argv.index("bench"):])
    if argv and argv[0].endswith("models.py"):
        return "python -m anode.bench.models " + " ".join(shlex.quote(a) for a in argv[1:])
    return "anode bench (called from Python)"


def run(args: argparse.Namespace) -> int:
    """Run the sweep and write the files; the exit status as in the module docstring."""
    from ..bench import plots, report, suite, targets
    from ..bench.environment import machine

    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if min(args.batch, args.channels, args.size, args.repeats) < 1:
        print("error: --batch, --channels, --size and --repeats must be positive", file=sys.stderr)
        return 2
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    methods = suite.available_methods(tuple(args.snapshots))
    if args.methods:
        wanted = {m.strip() for m in args.methods.split(",")} | {"direct"}
        unknown = wanted - {m.name for m in methods}
        if unknown:
            print(f"error: unknown or unavailable methods {sorted(unknown)}; available: "
                  f"{[m.name for m in methods]}", file=sys.stderr)
            return 2
        methods = [m for m in methods if m.name in wanted]
    pairs = suite.configurations(args.steps, args.layers, args.grid, args.fixed_layers, args.fixed_steps)
    workload = dict(method=args.method, channels=args.channels, batch=args.batch, size=args.size,
                    device=args.device, repeats=args.repeats, threads=threads, seed=args.seed)
    print(f"{len(pairs)} configurations x {len(methods)} methods: {[m.name for m in methods]}", flush=True)
    clock = args.clock or ("cpu" if args.device == "cpu" and threads == 1 else "wall")
    rows = suite.run_sweep(pairs, methods, tol=args.tol, log=lambda s: print(s, flush=True),
                           isolation=args.isolation, clock=clock,
                           separate_timing=False if args.quick else None, **workload)

    args.out.mkdir(parents=True, exist_ok=True)
    command = command_line()
    threads_text = threads or "torch's default"
    peak_text = "CUDA allocator peak" if args.device != "cpu" else "peak resident size minus the baseline"
    header = (
        f"## ODE-block stack: {args.method}, input [{args.batch}, {args.channels}, {args.size}, {args.size}] "
        f"float32, device {args.device}\n\n"
        f"Command: `{command}`  \nMachine: {machine(args.device)}; {threads_text} thread(s) per "
        f"measurement.  \n"
        f"Peak = extra peak memory of one forward+backward, a fresh process per configuration and "
        f"method ({peak_text}); "
        f"time = median {'CPU time of the measurement process' if clock == 'cpu' else 'wall time'} "
        f"of {args.repeats} rounds after warm-up, a fresh process per configuration with the methods "
        f"interleaved. Exact methods equal direct when output and "
        f"parameter gradient agree to a relative difference of {args.tol:g}."
    )
    found = targets.evaluate(rows)
    (args.out / "bench_results.md").write_text(report.markdown(rows, found, header))
    report.write_csv(rows, args.out / "bench_results.csv")
    (args.out / "bench_results.json").write_text(json.dumps(
        {"command": command, "machine": machine(args.device), "workload": workload, "clock": clock,
         "configurations": pairs, "rows": rows}, indent=1))
    plots.plot_all(rows, args.out, title=f"{args.method}, [{args.batch}, {args.channels}, {args.size}, "
                   f"{args.size}], {args.device}")
    print()
    print(report.targets_table(found))
    print(f"\nwrote {args.out}/bench_results.{{md,csv,json}} and bench_*.png")
    inexact = [r for r in rows if r["exact_method"] and "error" not in r and not r.get("equal")]
    failed = [r for r in rows if "error" in r]
    for r in inexact:
        print(f"error: {r['method']} at N_t={r['n_steps']}, L={r['layers']} differs from direct "
              f"(gradient {r.get('grad_rel_diff', float('nan')):.2e})", file=sys.stderr)
    for r in failed:
        print(f"error: {r['method']} at N_t={r['n_steps']}, L={r['layers']} failed: {r['error']}",
              file=sys.stderr)
    return 3 if failed else (1 if inexact else 0)
