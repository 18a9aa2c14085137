"""``anode bench``: memory and speed of gradient methods for a stack of ODE blocks (and
``anode bench models``: one training step of every registered model; ``anode bench revolve``:
revolve(s) against store and recompute in one block; ``anode bench adaptive``: gradients of
adaptive dopri5 solves against torchdiffeq, see ``docs/adaptive.md``; ``anode bench
frontier``: memory against time of every exact method on one block, W1–W3).

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
See ``docs/benchmarks.md`` and ``docs/revolve.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..accel import PRECISIONS
from . import _bench_frontier
from ._arguments import int_list, name_list

QUICK = dict(steps=[1, 2], layers=[1, 2], fixed_layers=1, fixed_steps=2, batch=2, channels=4, size=8,
             repeats=1, snapshots=[1])


def register(subparsers) -> None:
    """Add the ``bench`` subcommand (and ``bench models``, ``bench revolve``)."""
    p = subparsers.add_parser(
        "bench", help="memory and speed of gradient methods (ANODE, direct, checkpointing, torchdiffeq)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench"),
                   help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: N_t in {1, 2}, L in {1, 2}, 2 images of 4x8x8, one repeat, "
                        "time and memory in the same process; no target is judged")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--steps", type=int_list(1), default=[1, 2, 4, 8, 16, 32],
                   help="N_t values (default: 1,2,4,8,16,32)")
    p.add_argument("--layers", type=int_list(1), default=[1, 2, 4, 8], help="L values (default: 1,2,4,8)")
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
    p.add_argument("--snapshots", type=int_list(1), default=[2, 4],
                   help="snapshot counts of anode/revolve (default: 2,4)")
    p.add_argument("--methods", type=name_list, default=None,
                   help="comma-separated method names to run (default: all available; direct is always run)")
    p.add_argument("--tol", type=float, default=1e-5,
                   help="relative difference up to which an exact method equals direct "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and input (default: %(default)s)")
    _process_arguments(p)
    p.set_defaults(run=run, command_line=None)
    sub = p.add_subparsers(dest="bench_command", metavar="{models,revolve,adaptive,frontier}")

    m = sub.add_parser("models", help="training-step memory and images/s of every registered model",
                       description="Training-step memory and throughput of every registered model, "
                                   "by gradient method.")
    m.add_argument("--out", type=Path, default=Path("runs/bench"),
                   help="output folder (default: %(default)s)")
    m.add_argument("--quick", action="store_true", help="small models only, batch 4, 16x16, one repeat")
    m.add_argument("--models", type=name_list, default=("*",), help="shell pattern(s) of model names, "
                   "comma-separated (default: all registered)")
    m.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    m.add_argument("--batch", type=int, default=32, help="batch size (default: %(default)s)")
    m.add_argument("--size", type=int, default=32, help="image side in pixels (default: %(default)s)")
    m.add_argument("--repeats", type=int, default=3, help="timed repeats (default: %(default)s)")
    m.add_argument("--method", default=None,
                   help="Runge–Kutta method of the ODE blocks (default: the models')")
    m.add_argument("--n-steps", type=int, default=None, help="N_t of every ODE block (default: the models')")
    m.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="bf16: forward under bfloat16 autocast, loss in float32 (default: bf16 on cuda, "
                        "fp32 elsewhere)")
    m.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on for cuda, off elsewhere)")
    m.add_argument("--compile", action="store_true",
                   help="torch.compile the networks and their ODE functions")
    m.add_argument("--deterministic", action="store_true",
                   help="deterministic cuDNN algorithms, TF32 off: in float32, anode's gradient "
                        "equals direct's bit for bit")
    m.add_argument("--tol", type=float, default=1e-5,
                   help="relative difference up to which an exact method equals direct "
                        "(default: %(default)s)")
    _process_arguments(m)
    m.set_defaults(run=run_models, command_line=None)

    r = sub.add_parser("revolve", help="revolve(s) against direct, store and recompute in one block",
                       description="Peak memory, function evaluations and time of revolve(s) against "
                                   "direct, store and recompute, in one ODE block.")
    r.add_argument("--quick", action="store_true", help="N_t = 8, tiny input, s in {1, 2, 4, 8}")
    r.add_argument("--out", type=Path, default=None,
                   help="folder; results go to OUT/img/revolve_* (default: print only)")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    r.add_argument("--repeats", type=int, default=3, help="timed repeats (median) (default: %(default)s)")
    r.set_defaults(run=run_revolve)

    a = sub.add_parser("adaptive",
                       help="adaptive dopri5 solves: anode against torchdiffeq odeint/odeint_adjoint",
                       description="Peak memory, time, function evaluations and gradient error of adaptive "
                                   "dopri5 solves (an MLP field, CNFs), anode against torchdiffeq.")
    a.add_argument("--out", type=Path, default=Path("runs/bench"),
                   help="output folder for adaptive_results.{md,csv} (default: %(default)s)")
    a.add_argument("--quick", action="store_true", help="tiny sizes, one repeat; no target is judged")
    a.add_argument("--fields", type=name_list, default=("mlp", "cnf"),
                   help="workloads, comma-separated: mlp, cnf, ffjord (the CNF as FFJORD writes it; "
                        "its forward is measured alone too) (default: mlp,cnf)")
    a.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default: %(default)s)")
    a.add_argument("--atol", type=float, default=1e-7, help="absolute tolerance (default: %(default)s)")
    a.add_argument("--repeats", type=int, default=3, help="timed rounds, interleaved (default: %(default)s)")
    a.add_argument("--solver", default="dopri5", choices=("dopri5", "explicit_adams", "implicit_adams"),
                   help="dopri5 (adaptive) or an Adams method on a fixed grid of --step-size, whose "
                        "corrector (implicit_adams) takes --rtol/--atol (default: %(default)s)")
    a.add_argument("--step-size", type=float, default=None,
                   help="an Adams solver's step size (default: 0.05 for Adams; dopri5 takes none)")
    a.add_argument("--max-order", type=int, default=None,
                   help="an Adams solver's max_order, 2 to 12 (default: 12; dopri5 takes none)")
    a.add_argument("--tol", type=float, default=1e-5,
                   help="relative difference up to which an anode gradient equals direct's "
                        "(default: %(default)s)")
    a.add_argument("--seed", type=int, default=0, help="seed of weights and data (default: %(default)s)")
    a.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    _process_arguments(a)
    a.set_defaults(run=run_adaptive, command_line=None)
    _bench_frontier.register(sub, _process_arguments, _threads_and_clock, _clock_text)


def _process_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per measurement (default: 1 on cpu, torch's default on cuda)")
    p.add_argument("--isolation", choices=("fork", "spawn"), default="fork",
                   help="fresh process per measurement: forked from a server that imported torch "
                        "once, or a new interpreter each (default: %(default)s)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="time compared: wall, or the measurement process's CPU time (default: cpu "
                        "with one thread on the cpu, where other work may share the cores; else wall)")


def _threads_and_clock(args: argparse.Namespace) -> tuple[int, str]:
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    clock = args.clock or ("cpu" if args.device == "cpu" and threads == 1 else "wall")
    return threads, clock


def _clock_text(clock: str) -> str:
    return "CPU time of the measurement process" if clock == "cpu" else "wall time"


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
    threads, clock = _threads_and_clock(args)
    methods = suite.available_methods(tuple(args.snapshots))
    missing = None
    if not any(m.options.get("library") == "torchdiffeq" for m in methods):
        missing = "torchdiffeq not installed (pip install anode[compare]); its solvers are not measured"
        print(missing, flush=True)
    if args.methods:
        wanted = set(args.methods) | {"direct"}
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
    rows = suite.run_sweep(pairs, methods, tol=args.tol, log=lambda s: print(s, flush=True),
                           isolation=args.isolation, clock=clock,
                           separate_timing=False if args.quick else None, **workload)

    args.out.mkdir(parents=True, exist_ok=True)
    command = args.command_line or "anode bench"
    threads_text = threads or "torch's default"
    peak_text = "CUDA allocator peak" if args.device != "cpu" else "peak resident size minus the baseline"
    header = (
        f"## ODE-block stack: {args.method}, input [{args.batch}, {args.channels}, {args.size}, {args.size}] "
        f"float32, device {args.device}\n\n"
        f"Command: `{command}`  \nMachine: {machine(args.device)}; {threads_text} thread(s) per "
        f"measurement.  \n"
        f"Peak = extra peak memory of one forward+backward, a fresh process per configuration and "
        f"method ({peak_text}); "
        f"time = median {_clock_text(clock)} "
        f"of {args.repeats} rounds after warm-up, a fresh process per configuration with the methods "
        f"interleaved. Exact methods equal direct when output and "
        f"parameter gradient agree to a relative difference of {args.tol:g}."
        + (f"  \n{missing}." if missing else "")
    )
    found = targets.evaluate(rows, quick=args.quick)
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


def run_models(args: argparse.Namespace) -> int:
    """Measure, print and write ``models_results.{md,csv,json}``; 1 if an exact method's
    verdict is NO or a measurement failed, 2 on bad input."""
    from dataclasses import asdict

    from anode import models

    from ..accel import Acceleration
    from ..bench import model_targets, models_report
    from ..bench import models as bench_models
    from ..bench.environment import machine

    if args.quick:
        args.batch, args.size, args.repeats = 4, 16, 1
        if args.models == ("*",):
            args.models = ("*small",)
    if min(args.batch, args.size, args.repeats) < 1:
        print("error: --batch, --size and --repeats must be positive", file=sys.stderr)
        return 2
    names = sorted({n for pattern in args.models for n in models.list_models(pattern)})
    if not names:
        print(f"error: no registered model matches {','.join(args.models)!r}; registered: "
              f"{models.list_models()}", file=sys.stderr)
        return 2
    try:
        acc = Acceleration.for_device(args.device, args.precision, args.channels_last, args.compile,
                                      args.deterministic)
    except RuntimeError as exc:  # torch.device's message names the device types it knows
        print(f"error: --device {args.device!r}: {exc}", file=sys.stderr)
        return 2
    threads, clock = _threads_and_clock(args)
    ode_options = {k: v for k, v in (("method", args.method), ("n_steps", args.n_steps)) if v is not None}
    workload = dict(batch=args.batch, size=args.size, device=args.device, repeats=args.repeats,
                    threads=threads, ode_options=ode_options)
    rows = bench_models.run_models(names, acceleration=acc, log=lambda s: print(s, flush=True), tol=args.tol,
                                   isolation=args.isolation, clock=clock,
                                   separate_timing=False if args.quick else None, **workload)
    command = args.command_line or "anode bench models"
    baseline = acc != Acceleration(deterministic=acc.deterministic)
    header = (f"Command: `{command}`  \nMachine: {machine(args.device)}; "
              f"{threads or 'torch default'} thread(s) per measurement; device {args.device}; "
              f"{models_report.describe(acc)}.  \n"
              f"One SGD step (forward, cross-entropy in float32, backward, update) on a random batch of "
              f"[{args.batch}, 3, {args.size}, {args.size}]; peak = extra peak memory of one step; time = "
              f"median {_clock_text(clock)} of {args.repeats} after warm-up; ratios to direct of the "
              f"same model in this run"
              + ("; vs fp32 eager = time of the same step in float32, NCHW, eager, timed interleaved in "
                 "the same process" if baseline else "") + ".  \n"
              f"Exact: the first step's parameter gradient against direct's (relative 2-norm; exact up to "
              f"{args.tol:g}); noise floor = direct against itself on the batch in reverse order, in a "
              f"fresh process; a difference up to {models_report.FLOOR_MULTIPLE}x the floor is rounding "
              f"(\"exact (TF32)\", \"exact (bf16)\") if at most {models_report.CAP:g}, else "
              f"\"inconclusive\"; see docs/benchmarks.md.")
    found, note = model_targets.evaluate(rows, args.device, acc, args.batch, args.size, quick=args.quick)
    targets_md = model_targets.section(found, note)
    settings = {"command": command, "machine": machine(args.device), "clock": clock, "workload": workload,
                "acceleration": asdict(acc), "tol": args.tol}
    print(models_report.write_results(rows, args.out, header, settings, targets_md))
    for r in rows:
        if r.get("verdict", "").startswith("inconclusive"):
            print(f"warning: {r['model']} {r['method']}: gradient {r['grad_rel_diff']:.2e} from direct's, "
                  f"within {models_report.FLOOR_MULTIPLE}x the noise floor {r['noise_floor']:.2e} but above "
                  f"{models_report.CAP:g}: rounding cannot be told from a wrong gradient here "
                  "(--precision fp32 or --deterministic can)", file=sys.stderr)
    bad = models_report.failures(rows)
    for r, why in bad:
        print(f"error: {r['model']} {r['method']}: {why}", file=sys.stderr)
    return 1 if bad else 0


def run_revolve(args: argparse.Namespace) -> int:
    """Measure revolve(s) against direct, store and recompute; print the table and, with
    ``--out``, write it, the rows and the plot. 2 on bad input or a failed measurement."""
    import torch

    from ..bench import revolve_tradeoff

    if args.repeats < 1:
        print("error: --repeats must be positive", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    workload = dict(revolve_tradeoff.QUICK if args.quick else revolve_tradeoff.WORKLOAD)
    snapshots = revolve_tradeoff.QUICK_SNAPSHOTS if args.quick else revolve_tradeoff.SNAPSHOTS
    try:
        rows = revolve_tradeoff.sweep(snapshots, workload, device, args.repeats,
                                      log=lambda s: print(s, flush=True))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(revolve_tradeoff.table(rows))
    if args.out:
        revolve_tradeoff.write_results(rows, args.out, workload, device)
    return 0


def run_adaptive(args: argparse.Namespace) -> int:
    """Measure adaptive solves (:mod:`anode_workbench.bench.adaptive`), print the targets, write the
    tables and ``adaptive_ratios.png``. 0; 1 when an anode gradient differs from direct's; 2
    on bad arguments; 3 when a measurement failed."""
    from ..bench import adaptive
    from ..bench.environment import machine

    unknown = set(args.fields) - set(adaptive.WORKLOADS)
    if unknown or args.repeats < 1 or args.device != "cpu":
        print(f"error: fields must be among {sorted(adaptive.WORKLOADS)}, --repeats positive, and the "
              "adaptive benchmark runs on cpu only", file=sys.stderr)
        return 2
    if args.solver == "dopri5" and (args.step_size is not None or args.max_order is not None):
        print("error: --step-size and --max-order go with an Adams --solver; dopri5 chooses its steps",
              file=sys.stderr)
        return 2
    step_size = None if args.solver == "dopri5" else (args.step_size or 0.05)
    if args.quick:
        args.repeats = 1
    threads, clock = _threads_and_clock(args)
    rows = adaptive.run(list(args.fields), rtol=args.rtol, atol=args.atol, quick=args.quick,
                        repeats=args.repeats, threads=threads, clock=clock, isolation=args.isolation,
                        tol=args.tol, seed=args.seed, log=lambda s: print(s, flush=True),
                        solver=args.solver, step_size=step_size, max_order=args.max_order)
    found = adaptive.evaluate(rows, quick=args.quick, solver=args.solver)
    solver = args.solver if step_size is None else f"{args.solver}, step_size={step_size:g}" + (
        f", max_order={args.max_order}" if args.max_order else "")
    kind = "Adaptive" if step_size is None else "Fixed-grid"
    command = args.command_line or "anode bench adaptive"
    fields = "; ".join(f"{f}: {adaptive.describe(f, args.quick)}" for f in args.fields)
    header = (
        f"## {kind} solves: {solver}, rtol={args.rtol:g}, atol={args.atol:g}, float32, cpu\n\n"
        f"Command: `{command}`  \nMachine: {machine('cpu')}; {threads or 'torch default'} thread(s) per "
        f"measurement.  \nWorkloads: {fields}; over t in [0, 1].  \n"
        "Peak = extra peak resident memory of one forward+backward (forward peak: of the forward alone), "
        "a fresh process per method and measurement; time = "
        f"median {_clock_text(clock)} of {args.repeats} rounds after warm-up, methods interleaved; "
        "gradient differences are relative 2-norms of the whole parameter gradient, to the exact gradient "
        "of this library's discrete solve (direct) and to torchdiffeq odeint's autograd gradient.")
    adaptive.write(rows, found, args.out, header)
    png = adaptive.plot(rows, args.out / "adaptive_ratios.png",
                        title=f"{solver}, rtol={args.rtol:g}, atol={args.atol:g}, cpu")
    print()
    from ..bench.report import targets_table

    print(targets_table(found))
    print()
    print(adaptive.results_table(rows))
    print(f"\nwrote {args.out}/adaptive_results.{{md,csv}}" + (f" and {png.name}" if png else ""))
    failed = [r for r in rows if "error" in r]
    inexact = [r for r in rows if r["exact_method"] and "error" not in r and not r.get("equal")]
    for r in failed:
        print(f"error: {r['field']} {r['method']} failed: {r['error']}", file=sys.stderr)
    for r in inexact:
        print(f"error: {r['field']} {r['method']} differs from direct (gradient "
              f"{r.get('grad_rel_diff', float('nan')):.2e})", file=sys.stderr)
    return 3 if failed else (1 if inexact else 0)
