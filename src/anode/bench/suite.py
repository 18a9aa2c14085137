"""The memory and speed sweep of gradient methods for a stack of ODE blocks (``anode bench``).

A stack of L ODE blocks with the ANODE paper's ResNet ODE function
(:class:`anode.ConvODEFunc`) on CIFAR-sized input is trained for one forward+backward by
every gradient method available at run time, for N_t steps per block:

* this library: ``direct`` (autograd through the solver), ``anode/store``,
  ``anode/recompute`` (the paper's scheme), ``anode/revolve(s)`` for a few snapshot counts
  s < N_t (when the ``revolve`` schedule is registered) and ``backsolve`` (continuous adjoint,
  when registered);
* ``checkpoint``: ``torch.utils.checkpoint`` (non-reentrant) around each block of the direct
  solver;
* torchdiffeq (when installed): ``odeint`` and ``odeint_adjoint`` on the same fixed grid with
  the same Runge–Kutta method.

Each configuration runs in a fresh process (:class:`~anode.bench.forkserver.ForkServer`); on
CPU, memory and time in two (see :mod:`anode.bench.measure`).
The warm-up's output and parameter gradient of every method are compared with those of
``direct`` in the same run: exact methods must agree to ``tol`` (relative, 2-norm of the
whole vector); the continuous adjoints are approximate and get their relative error.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .forkserver import measurement_servers

TARGET = "anode.bench.workloads:ode_stack"
TIME_TARGET = "anode.bench.workloads:time_stack"
TDQ_ODEINT = "torchdiffeq/odeint"
TDQ_ADJOINT = "torchdiffeq/odeint_adjoint"


@dataclass(frozen=True)
class Method:
    """One way to compute the gradient of the stack.

    Attributes:
        name: the label in tables and plots.
        options: keyword arguments of :func:`anode.bench.workloads.ode_stack`.
        exact: whether the gradient is the discrete network's (discretize-then-optimize).
        min_steps: the method runs only for N_t >= this (revolve with s snapshots needs
            N_t > s to differ from ``store``).
    """

    name: str
    options: dict = field(default_factory=dict)
    exact: bool = True
    min_steps: int = 1


def available_methods(snapshots: tuple[int, ...] = (2, 4)) -> list[Method]:
    """The methods that exist at run time, in table order.

    Looks up ``anode.gradients.GRADIENTS`` and ``anode.schedules.SCHEDULES`` and whether
    torchdiffeq imports, so that methods added to the library are measured without changes
    here (only revolve's snapshot counts are chosen here).
    """
    from ..gradients import GRADIENTS
    from ..schedules import SCHEDULES

    methods = [Method("direct", {"gradient": "direct"})]
    if "anode" in GRADIENTS:
        for name in ("store", "recompute"):
            if name in SCHEDULES:
                methods.append(Method(f"anode/{name}", {"gradient": "anode", "schedule": name}))
        if "revolve" in SCHEDULES:
            for s in snapshots:
                methods.append(Method(f"anode/revolve(s={s})", {
                    "gradient": "anode", "schedule": "revolve", "schedule_options": {"snapshots": s},
                }, min_steps=s + 1))
    if "backsolve" in GRADIENTS:
        methods.append(Method("backsolve", {"gradient": "backsolve"}, exact=False))
    methods.append(Method("checkpoint", {"gradient": "direct", "checkpoint": True}))
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        pass
    else:
        methods.append(Method(TDQ_ODEINT, {"library": "torchdiffeq", "gradient": "direct"}))
        methods.append(Method(TDQ_ADJOINT, {"library": "torchdiffeq", "gradient": "adjoint"}, exact=False))
    return methods


def configurations(steps, layers, grid: str = "cross", fixed_layers: int = 2,
                   fixed_steps: int = 16) -> list[tuple[int, int]]:
    """The ``(N_t, L)`` pairs to measure.

    ``grid="full"``: every pair. ``grid="cross"``: every N_t at L = ``fixed_layers`` and every
    L at N_t = ``fixed_steps`` (the fixed values are added to the sweeps if missing).

    Raises:
        ValueError: unknown grid, or a step or layer count below 1.
    """
    steps, layers = sorted(set(steps)), sorted(set(layers))
    if min(steps + layers + [fixed_layers, fixed_steps]) < 1:
        raise ValueError("step and layer counts must be >= 1")
    if grid == "full":
        return list(itertools.product(steps, layers))
    if grid != "cross":
        raise ValueError(f"unknown grid {grid!r}; choose 'cross' or 'full'")
    pairs = [(n, fixed_layers) for n in sorted(set(steps) | {fixed_steps})]
    pairs += [(fixed_steps, n_layers) for n_layers in layers if n_layers != fixed_layers]
    return sorted(set(pairs), key=lambda p: (p[1] != fixed_layers, p[1], p[0]))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run_sweep(pairs: list[tuple[int, int]], methods: list[Method], *, tol: float = 1e-5,
              log=print, isolation: str = "fork", clock: str = "wall", separate_timing: bool | None = None,
              **workload) -> list[dict]:
    """Measure every method at every ``(N_t, L)`` in fresh processes.

    For each configuration: one process per method measures the peak memory of one
    forward+backward after a warm-up and saves the warm-up's output and gradient, which are
    compared with ``direct``'s; then one process times all methods of the configuration,
    interleaved (:func:`anode.bench.workloads.time_stack`), so that changing load from other
    work on the machine does not fall on some methods only.

    Args:
        pairs: ``(N_t, L)`` configurations (see :func:`configurations`).
        methods: from :func:`available_methods` (``direct`` must be among them: every
            gradient is compared with it).
        tol: relative difference (2-norm) of output and gradient below which an exact method
            counts as equal to ``direct``.
        log: called with one line of progress per measurement.
        isolation: ``"fork"`` (children of a :class:`~anode.bench.forkserver.ForkServer`) or
            ``"spawn"`` (a new interpreter per process).
        clock: the time compared (``time_s``): ``"wall"`` or ``"cpu"`` (the measurement
            process's CPU time, robust on a machine shared with other work when each
            measurement runs one thread on the CPU; see
            :func:`~anode.bench.measure.median_times`).
        separate_timing: time in processes with glibc's default allocator settings rather
            than those of the memory measurements, which slow CPU work (default: on CPU; see
            :mod:`anode.bench.measure`).
        **workload: passed to :func:`anode.bench.workloads.ode_stack` (``method``,
            ``channels``, ``batch``, ``size``, ``device``, ``repeats``, ``threads``, ``seed``).

    Returns:
        One dict per measurement (see :mod:`anode.bench.report` for the columns); a method that
        failed has its error message in ``error`` and no figures.

    Raises:
        ValueError: ``direct`` is not among the methods; unknown isolation or clock.
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"unknown clock {clock!r}; choose 'wall' or 'cpu'")
    if not any(m.name == "direct" for m in methods):
        raise ValueError("the sweep compares every method with 'direct'; include it")
    ordered = sorted(methods, key=lambda m: m.name != "direct")
    preload = ["anode", "anode.bench.workloads"]
    if any(m.options.get("library") == "torchdiffeq" for m in methods):
        preload.append("torchdiffeq")
    split = separate_timing
    if split is None:
        split = not str(workload.get("device", "cpu")).startswith("cuda")
    rows = []
    started = time.perf_counter()

    def say(text: str) -> None:
        log(f"[{time.perf_counter() - started:6.0f} s] {text}")

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="anode-bench-"))
        memory_server, time_server = measurement_servers(stack, isolation, preload, split)
        save = str(Path(tmp) / "last.pt")
        for n_steps, n_layers in pairs:
            here = [m for m in ordered if n_steps >= m.min_steps]
            measured, reference = {}, None
            for m in here:
                row = {"n_steps": n_steps, "layers": n_layers, "method": m.name, "exact_method": m.exact}
                rows.append(row)
                try:
                    row.update(memory_server.run(TARGET, n_steps=n_steps, layers=n_layers, save=save,
                                                 measure="memory", **{**workload, **m.options}))
                except RuntimeError as exc:
                    row["error"] = str(exc).strip().splitlines()[-1]
                    say(f"N_t={n_steps} L={n_layers} {m.name}: FAILED {row['error']}")
                    continue
                saved = torch.load(save)
                if m.name == "direct":
                    reference = saved
                if reference is not None:
                    row["output_rel_diff"] = _relative(saved["output"], reference["output"])
                    row["grad_rel_diff"] = _relative(saved["grad"], reference["grad"])
                    if m.exact:
                        row["equal"] = row["output_rel_diff"] <= tol and row["grad_rel_diff"] <= tol
                measured[m.name] = (row, m)
                say(f"N_t={n_steps} L={n_layers} {m.name}: {row['peak_bytes'] / 2**20:.1f} MiB, "
                    f"grad rel. diff {row.get('grad_rel_diff', float('nan')):.1e}")
            if not measured:
                continue
            timing = {k: v for k, v in workload.items() if k != "save"}
            try:
                times = time_server.run(TIME_TARGET, n_steps=n_steps, layers=n_layers, **timing,
                                        methods={name: m.options for name, (_, m) in measured.items()})
            except RuntimeError as exc:
                times = {name: {"error": str(exc).strip().splitlines()[-1]} for name in measured}
            for name, (row, _) in measured.items():
                if "error" in times[name]:
                    row["error"] = "timing: " + times[name]["error"]
                    continue
                row.update(times[name])
                row["time_s"] = row["cpu_seconds" if clock == "cpu" else "seconds"]
            say(f"N_t={n_steps} L={n_layers} times ({clock}): " + ", ".join(
                f"{name} {row['time_s']:.3f} s" for name, (row, _) in measured.items() if "time_s" in row))
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Add peak and time (``time_s``) ratios to ``direct`` and to torchdiffeq's
    ``odeint_adjoint`` at the same ``(N_t, L)``, and the peak in states (``peak_states``), to
    every measured row."""
    by_config = {}
    for r in rows:
        if "error" not in r:
            by_config.setdefault((r["n_steps"], r["layers"]), {})[r["method"]] = r
    for r in rows:
        if "error" in r:
            continue
        r["peak_states"] = r["peak_bytes"] / r["state_bytes"]
        same = by_config[(r["n_steps"], r["layers"])]
        for key, ref in (("direct", "direct"), ("adjoint", TDQ_ADJOINT), ("odeint", TDQ_ODEINT)):
            if ref in same:
                r[f"mem_vs_{key}"] = _ratio(r["peak_bytes"], same[ref]["peak_bytes"])
                r[f"time_vs_{key}"] = _ratio(r["time_s"], same[ref]["time_s"])


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")
