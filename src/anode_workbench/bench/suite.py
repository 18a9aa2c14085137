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

Each configuration runs in fresh processes (:mod:`anode_workbench.bench.sweep`); on CPU, memory and
time in different ones (see :mod:`anode_workbench.bench.measure`).
The warm-up's output and parameter gradient of every method are compared with those of
``direct`` in the same run: exact methods must agree to ``tol`` (relative, 2-norm of the
whole vector); the continuous adjoints are approximate and get their relative error.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .sweep import Entry, Sweep

TARGET = "anode_workbench.bench.workloads:ode_stack"
TIME_TARGET = "anode_workbench.bench.workloads:time_stack"
TDQ_ODEINT = "torchdiffeq/odeint"
TDQ_ADJOINT = "torchdiffeq/odeint_adjoint"


@dataclass(frozen=True)
class Method:
    """One way to compute the gradient of the stack.

    Attributes:
        name: the label in tables and plots.
        options: keyword arguments of :func:`anode_workbench.bench.workloads.ode_stack`.
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

    Looks up ``anode._gradients.GRADIENTS`` and ``anode._schedules.SCHEDULES`` and whether
    torchdiffeq imports, so that methods added to the library are measured without changes
    here (only revolve's snapshot counts are chosen here).
    """
    from anode._gradients import GRADIENTS
    from anode._schedules import SCHEDULES

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


def run_sweep(pairs: list[tuple[int, int]], methods: list[Method], *, tol: float = 1e-5,
              log=print, isolation: str = "fork", clock: str = "wall", separate_timing: bool | None = None,
              **workload) -> list[dict]:
    """Measure every method at every ``(N_t, L)`` in fresh processes.

    Each configuration is a group of :class:`~anode_workbench.bench.sweep.Sweep`: one process per
    method measures the peak memory of one forward+backward after a warm-up, whose output and
    gradient are compared with ``direct``'s; one process times all methods of the
    configuration, interleaved (:func:`anode_workbench.bench.workloads.time_stack`).

    Args:
        pairs: ``(N_t, L)`` configurations (see :func:`configurations`).
        methods: from :func:`available_methods` (``direct`` must be among them: every
            gradient is compared with it).
        tol, log, isolation, clock: as :class:`~anode_workbench.bench.sweep.Sweep`.
        separate_timing: as :class:`~anode_workbench.bench.sweep.Sweep` (default: on CPU).
        **workload: passed to :func:`anode_workbench.bench.workloads.ode_stack` (``method``,
            ``channels``, ``batch``, ``size``, ``device``, ``repeats``, ``threads``, ``seed``).

    Returns:
        One dict per measurement (see :mod:`anode_workbench.bench.report` for the columns); a method that
        failed has its error message in ``error`` and no figures.

    Raises:
        ValueError: ``direct`` is not among the methods; unknown isolation or clock.
    """
    if not any(m.name == "direct" for m in methods):
        raise ValueError("the sweep compares every method with 'direct'; include it")
    ordered = sorted(methods, key=lambda m: m.name != "direct")
    preload = ["anode", "anode_workbench.bench.workloads"]
    if any(m.options.get("library") == "torchdiffeq" for m in methods):
        preload.append("torchdiffeq")
    rows = []
    with Sweep(TARGET, TIME_TARGET, preload=preload, isolation=isolation, clock=clock, default_malloc=True,
               separate_timing=separate_timing, device=workload.get("device", "cpu"), tol=tol,
               log=log) as sweep:
        for n_steps, n_layers in pairs:
            config = dict(n_steps=n_steps, layers=n_layers)
            entries = []
            for m in ordered:
                if n_steps < m.min_steps:
                    continue
                row = {"n_steps": n_steps, "layers": n_layers, "method": m.name, "exact_method": m.exact}
                rows.append(row)
                entries.append(Entry(row, {**config, "measure": "memory", **workload, **m.options},
                                     m.options, m.exact))
            sweep.group(f"N_t={n_steps} L={n_layers}", entries, timing={**config, **workload})
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
                default, ref_default = r.get("peak_default_bytes"), same[ref].get("peak_default_bytes")
                if default is not None and ref_default is not None:
                    r[f"mem_default_vs_{key}"] = _ratio(default, ref_default)
                r[f"time_vs_{key}"] = _ratio(r["time_s"], same[ref]["time_s"])


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")
