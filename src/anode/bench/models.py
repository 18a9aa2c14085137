"""Training-step memory and throughput of every registered model, by gradient method.

Run: ``python -m anode.bench.models [--quick] [--out DIR]`` or ``anode bench models``.
For each model of :func:`anode.models.list_models` and each gradient method (``direct``,
``anode/recompute``, ``backsolve``; a plain residual baseline has no ODE blocks and runs once)
one training step — forward, cross-entropy, backward, SGD step — on a random batch of
``[batch, 3, 32, 32]`` is measured: extra peak memory of one step (a fresh process per model
and method), median time per step after warm-up (a fresh process per model, the methods
interleaved), images per second. Ratios are to ``direct`` of the same model in the same run.
The warm-up gradients of the exact methods are compared with ``direct``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from .forkserver import measurement_servers
from .measure import interleaved_times, peak_memory, prepare

TARGET = "anode.bench.models:train_step"
TIME_TARGET = "anode.bench.models:time_steps"
COLUMNS = ["model", "parameters", "method", "exact_method", "equal", "grad_rel_diff", "peak_bytes",
           "mem_vs_direct", "time_s", "time_vs_direct", "images_per_s", "seconds", "cpu_seconds", "batch",
           "error"]


def gradient_methods() -> list[tuple[str, dict, bool]]:
    """``(label, ODE options, exact)`` of the methods measured, those registered at run time."""
    from ..gradients import GRADIENTS

    methods = [("direct", {"gradient": "direct"}, True)]
    if "anode" in GRADIENTS:
        methods.append(("anode/recompute", {"gradient": "anode", "schedule": "recompute"}, True))
    if "backsolve" in GRADIENTS:
        methods.append(("backsolve", {"gradient": "backsolve"}, False))
    return methods


def _setup(model: str, ode_options: dict | None, batch: int, size: int, num_classes: int,
           dev: torch.device, seed: int):
    from .. import models

    torch.manual_seed(seed)
    net = models.create(model, num_classes=num_classes, **(ode_options or {})).to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def backward():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()

    def step():
        backward()
        opt.step()

    return net, opt, backward, step


def train_step(*, model: str, ode_options: dict | None = None, batch: int = 32, size: int = 32,
               num_classes: int = 10, device: str = "cpu", threads: int = 0, seed: int = 0,
               save: str | None = None, repeats: int = 0) -> dict:
    """Peak memory (bytes) of one SGD training step of a registered model.

    Input ``[batch, 3, size, size]`` standard normal, labels uniform in ``[0, num_classes)``
    (the same for every gradient method with the same seed); loss cross-entropy; SGD with
    learning rate 0.01 and momentum 0.9 (as the paper's CIFAR training). The first step is a
    warm-up; its parameter gradient is saved to ``save`` (``torch.save({"grad": flat
    float32})``) for comparison across methods. ``repeats`` is accepted and ignored (time is
    measured by :func:`time_steps`).

    Returns:
        ``peak_bytes`` (extra peak of one step over what was in use before it: weights,
        momentum buffers, the batch) and ``parameters``.

    Raises:
        ValueError, TypeError: from :func:`anode.models.create` (unknown model, bad options).
        RuntimeError: CUDA asked for but not available.
    """
    dev = prepare(threads, device, seed)
    net, opt, backward, step = _setup(model, ode_options, batch, size, num_classes, dev, seed)
    backward()
    if save:
        torch.save({"grad": torch.cat([p.grad.reshape(-1) for p in net.parameters()]).float().cpu()}, save)
    opt.step()  # allocates the momentum buffers outside the measured step
    return {"peak_bytes": peak_memory(step, dev), "parameters": sum(p.numel() for p in net.parameters())}


def time_steps(*, model: str, methods: dict[str, dict | None], batch: int = 32, size: int = 32,
               num_classes: int = 10, device: str = "cpu", repeats: int = 3, threads: int = 0,
               seed: int = 0) -> dict:
    """Median time (s) of one SGD training step of a model under several gradient methods,
    interleaved in one process (as :func:`anode.bench.workloads.time_stack`).

    Args:
        model: a registered name.
        methods: label → ODE options (``None`` for a plain baseline).
        batch, size, num_classes, device, threads, seed: as :func:`train_step`.
        repeats: rounds after one warm-up step each; the order rotates from round to round.

    Returns:
        label → ``{"seconds", "cpu_seconds"}`` (median wall and CPU time per step) or
        ``{"error": message}`` when its warm-up raised.
    """
    dev = prepare(threads, device, seed)
    steps, results = {}, {}
    for label, options in methods.items():
        try:
            _, _, _, step = _setup(model, options, batch, size, num_classes, dev, seed)
            step()
        except Exception as exc:  # one failing method must not lose the others' times
            results[label] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        steps[label] = step
    results.update(interleaved_times(steps, dev, repeats))
    return results


def run_models(names: list[str], *, log=print, tol: float = 1e-5, isolation: str = "fork",
               clock: str = "wall", separate_timing: bool | None = None, **workload) -> list[dict]:
    """Measure every model in ``names`` with every gradient method in fresh processes.

    Peak memory: one process per (model, method); time: one process per model, the methods
    interleaved (see :func:`anode.bench.suite.run_sweep` for why).

    Args:
        names: registered model names.
        log: called with one progress line per measurement.
        tol: relative gradient difference to ``direct`` up to which an exact method is equal.
        isolation, clock, separate_timing: as :func:`anode.bench.suite.run_sweep`;
            ``time_s`` is the time by ``clock`` and ``images_per_s = batch / time_s``.
        **workload: passed to :func:`train_step` and :func:`time_steps` (``batch``,
            ``size``, ``device``, ``repeats``, ``threads``, ``seed``; ``ode_options`` are
            merged into each method's).

    Returns:
        One dict per measurement with the keys of :data:`COLUMNS`.
    """
    base = workload.pop("ode_options", None) or {}
    split = separate_timing
    if split is None:
        split = not str(workload.get("device", "cpu")).startswith("cuda")
    preload = ["anode", "anode.models", "anode.bench.models"]
    rows = []
    started = time.perf_counter()

    def say(text: str) -> None:
        log(f"[{time.perf_counter() - started:6.0f} s] {text}")

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="anode-bench-models-"))
        memory_server, time_server = measurement_servers(stack, isolation, preload, split)
        save = str(Path(tmp) / "grad.pt")
        for name in names:
            has_ode = _is_ode(name)
            methods = gradient_methods() if has_ode else [("plain", {}, True)]
            measured, reference = {}, None
            for label, options, exact in methods:
                row = {"model": name, "method": label, "exact_method": exact,
                       "batch": workload.get("batch", 32)}
                rows.append(row)
                options = {**base, **options} if has_ode else None
                try:
                    row.update(memory_server.run(TARGET, model=name, ode_options=options, save=save,
                                                 **workload))
                except RuntimeError as exc:
                    row["error"] = str(exc).strip().splitlines()[-1]
                    say(f"{name} {label}: FAILED {row['error']}")
                    continue
                grad = torch.load(save)["grad"].double()
                if label in ("direct", "plain"):
                    reference = grad
                if reference is not None and has_ode:
                    row["grad_rel_diff"] = ((grad - reference).norm() / reference.norm()).item()
                    if exact:
                        row["equal"] = row["grad_rel_diff"] <= tol
                measured[label] = (row, options)
                say(f"{name} {label}: {row['peak_bytes'] / 2**20:.0f} MiB")
            if not measured:
                continue
            try:
                times = time_server.run(TIME_TARGET, model=name, **workload,
                                        methods={label: opts for label, (_, opts) in measured.items()})
            except RuntimeError as exc:
                times = {label: {"error": str(exc).strip().splitlines()[-1]} for label in measured}
            for label, (row, _) in measured.items():
                if "error" in times[label]:
                    row["error"] = "timing: " + times[label]["error"]
                    continue
                row.update(times[label])
                row["time_s"] = row["cpu_seconds" if clock == "cpu" else "seconds"]
                row["images_per_s"] = row["batch"] / row["time_s"]
            say(f"{name} times ({clock}): " + ", ".join(
                f"{label} {row['time_s']:.2f} s/step"
                for label, (row, _) in measured.items() if "time_s" in row))
    for r in rows:
        ref = next((d for d in rows if d["model"] == r["model"] and d["method"] == "direct"
                    and "time_s" in d), None)
        if ref and "time_s" in r:
            r["mem_vs_direct"] = r["peak_bytes"] / ref["peak_bytes"] if ref["peak_bytes"] else float("nan")
            r["time_vs_direct"] = r["time_s"] / ref["time_s"]
    return rows


def _is_ode(name: str) -> bool:
    from .. import models

    try:
        return bool(models.ode_blocks(models.create(name)))
    except ValueError:
        return False


def table(rows: list[dict]) -> str:
    """Markdown table: model, parameters, method, exact, peak, ratios, time, images/s."""
    lines = ["| model | parameters | gradient | exact | peak MiB | peak vs direct | s / step "
             "| time vs direct | images/s |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['model']}` | | {r['method']} | failed: {r['error'][:60]} | | | | | |")
            continue
        if r["method"] == "plain":
            exact = "–"
        elif not r["exact_method"]:
            exact = f"approx. ({r['grad_rel_diff']:.1e})" if "grad_rel_diff" in r else "approx."
        else:
            exact = "yes" if r.get("equal") else "NO"
        mem = f"{r['mem_vs_direct']:.2f}x" if "mem_vs_direct" in r else "–"
        tim = f"{r['time_vs_direct']:.2f}x" if "time_vs_direct" in r else "–"
        lines.append(f"| `{r['model']}` | {r['parameters']:,} | {r['method']} | {exact} | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {mem} | {r['time_s']:.2f} | {tim} | "
                     f"{r['images_per_s']:.1f} |")
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add the ``models`` subcommand (under ``anode bench``)."""
    p = subparsers.add_parser("models", help="training-step memory and images/s of every registered model",
                              description=__doc__.splitlines()[0])
    _arguments(p)
    p.set_defaults(run=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/bench"),
                   help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small models only, batch 4, 16x16, one repeat")
    p.add_argument("--models", default="*", help="shell pattern(s) of model names, comma-separated "
                   "(default: all registered)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per measurement (default: 1 on cpu, torch's default on cuda)")
    p.add_argument("--method", default=None,
                   help="Runge–Kutta method of the ODE blocks (default: the models')")
    p.add_argument("--n-steps", type=int, default=None, help="N_t of every ODE block (default: the models')")
    p.add_argument("--isolation", choices=("fork", "spawn"), default="fork",
                   help="fresh process per measurement: forked from a server, or a new interpreter")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="time compared: wall, or the process's CPU time (default: cpu with one "
                        "thread on the cpu, else wall)")


def run(args: argparse.Namespace) -> int:
    """Measure, print and write ``models_results.{md,csv,json}``; 1 if an exact method is not
    exact or a measurement failed, 2 on bad input."""
    from .. import models

    if args.quick:
        args.batch, args.size, args.repeats = 4, 16, 1
        if args.models == "*":
            args.models = "*small"
    names = sorted({n for pattern in args.models.split(",") for n in models.list_models(pattern.strip())})
    if not names:
        print(f"error: no registered model matches {args.models!r}; registered: {models.list_models()}",
              file=sys.stderr)
        return 2
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    ode_options = {k: v for k, v in (("method", args.method), ("n_steps", args.n_steps)) if v is not None}
    workload = dict(batch=args.batch, size=args.size, device=args.device, repeats=args.repeats,
                    threads=threads, ode_options=ode_options)
    clock = args.clock or ("cpu" if args.device == "cpu" and threads == 1 else "wall")
    rows = run_models(names, log=lambda s: print(s, flush=True), isolation=args.isolation, clock=clock,
                      separate_timing=False if args.quick else None, **workload)
    from ..commands.bench import command_line
    from .environment import machine

    command = command_line()
    md = (f"Command: `{command}`  \nMachine: {machine(args.device)}; "
          f"{threads or 'torch default'} thread(s) per measurement; device {args.device}.  \n"
          f"One SGD step (forward, cross-entropy, backward, update) on a random batch of "
          f"[{args.batch}, 3, {args.size}, {args.size}]; peak = extra peak memory of one step; time = median "
          f"{'CPU time of the measurement process' if clock == 'cpu' else 'wall time'} of {args.repeats} "
          f"after warm-up; ratios to direct of the same model in this run.\n\n" + table(rows))
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models_results.md").write_text(md + "\n")
    with open(args.out / "models_results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "models_results.json").write_text(json.dumps(
        {"command": command, "machine": machine(args.device), "clock": clock, "workload": workload,
         "rows": rows}, indent=1))
    bad = [r for r in rows
           if "error" in r or (r["exact_method"] and r["method"] != "plain" and not r.get("equal"))]
    for r in bad:
        print(f"error: {r['model']} {r['method']}: {r.get('error', 'gradient differs from direct')}",
              file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m anode.bench.models``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
