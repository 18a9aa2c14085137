"""Training-step memory and throughput of every registered model, by gradient method.

Run: ``anode bench models [--quick] [--out DIR]``. For each model of
:func:`anode.models.list_models` and each gradient method (``direct``,
``anode/recompute``, ``backsolve``; a plain residual baseline has no ODE blocks and runs once)
one training step — forward, cross-entropy, backward, SGD step — on a random batch of
``[batch, 3, 32, 32]`` is measured under one :class:`anode_workbench.accel.Acceleration` (precision,
memory format, compilation, deterministic algorithms): extra peak memory of one step (a fresh
process per model and method), median time per step after warm-up (a fresh process per
model, the methods interleaved), images per second. Ratios are to ``direct`` of the same model
in the same run. When the settings are not float32 eager NCHW, the same timing process also
times every method that way (the baseline), interleaved with the others, for
``speedup_vs_fp32``.

The warm-up gradients of the exact methods are compared with ``direct``'s, and against a
noise floor: ``direct`` once more, in a fresh process, on the same batch in reverse order
(the same gradient in exact arithmetic, rounded differently); see
:mod:`anode_workbench.bench.models_report` for the verdicts.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from ..accel import Acceleration
from .measure import peak_memory, prepare, time_methods
from .sweep import Entry, Sweep

TARGET = "anode_workbench.bench.models:train_step"
TIME_TARGET = "anode_workbench.bench.models:time_steps"
_BASELINE = " (fp32 eager)"
COMPILE_WARMUP = 2
"""Extra warm-up steps of a compiled network, so that no compilation or autotuning falls in
the measured steps."""


def gradient_methods() -> list[tuple[str, dict, bool]]:
    """``(label, ODE options, exact)`` of the methods measured: ``direct``, ``anode/recompute``
    and ``backsolve``, those registered at run time."""
    from .suite import available_methods

    wanted = ("direct", "anode/recompute", "backsolve")
    return [(m.name, m.options, m.exact) for m in available_methods(()) if m.name in wanted]


def _setup(model: str, ode_options: dict | None, batch: int, size: int, num_classes: int,
           dev: torch.device, seed: int, acc: Acceleration, reverse: bool = False):
    from anode import models

    torch.manual_seed(seed)
    net = models.create(model, num_classes=num_classes, **(ode_options or {})).to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    if reverse:
        x, y = x.flip(0), y.flip(0)
    x = acc.prepare_input(x)
    run = acc.prepare_model(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def backward():
        opt.zero_grad(set_to_none=True)
        with acc.autocast(dev):
            logits = run(x)
        # Outside autocast, so that the loss and its gradient are not rounded to bfloat16.
        torch.nn.functional.cross_entropy(logits.float(), y).backward()

    def step():
        backward()
        opt.step()

    return net, opt, backward, step


def _acceleration(settings: dict | None, dev: torch.device) -> Acceleration:
    acc = Acceleration(**(settings or {}))
    acc.configure_backends(dev)
    return acc


def train_step(*, model: str, ode_options: dict | None = None, batch: int = 32, size: int = 32,
               num_classes: int = 10, device: str = "cpu", threads: int = 0, seed: int = 0,
               acceleration: dict | None = None, reverse: bool = False, save: str | None = None,
               repeats: int = 0) -> dict:
    """Peak memory (bytes) of one SGD training step of a registered model.

    Input ``[batch, 3, size, size]`` standard normal, labels uniform in ``[0, num_classes)``
    (the same for every gradient method with the same seed); loss cross-entropy, in float32;
    SGD with learning rate 0.01 and momentum 0.9 (as the paper's CIFAR training). The first
    step is a warm-up (with ``compile``, :data:`COMPILE_WARMUP` more); its parameter gradient
    is saved to ``save`` (``torch.save({"grad": flat float32})``) for comparison across
    methods. ``repeats`` is accepted and ignored (time is
    measured by :func:`time_steps`).

    Args:
        acceleration: the fields of an :class:`anode_workbench.accel.Acceleration` (default: float32,
            NCHW, eager); the backend flags are set for the whole process.
        reverse: the batch and its labels in reverse order: the same loss and gradient in
            exact arithmetic (a mean over the batch; BatchNorm's statistics do not depend on
            the order) with every sum over the batch rounded differently.

    Returns:
        ``peak_bytes`` (extra peak of one step over what was in use before it: weights,
        momentum buffers, the batch) and ``parameters``.

    Raises:
        ValueError, TypeError: from :func:`anode.models.create` (unknown model, bad options)
            or :class:`~anode_workbench.accel.Acceleration` (unknown precision).
        RuntimeError: CUDA asked for but not available.
    """
    dev = prepare(threads, device, seed)
    acc = _acceleration(acceleration, dev)
    net, opt, backward, step = _setup(model, ode_options, batch, size, num_classes, dev, seed, acc, reverse)
    backward()
    if save:
        torch.save({"grad": torch.cat([p.grad.reshape(-1) for p in net.parameters()]).float().cpu()}, save)
    opt.step()  # allocates the momentum buffers outside the measured step
    for _ in range(COMPILE_WARMUP if acc.compile else 0):
        step()
    return {"peak_bytes": peak_memory(step, dev), "parameters": sum(p.numel() for p in net.parameters())}


def time_steps(*, model: str, methods: dict[str, dict | None], batch: int = 32, size: int = 32,
               num_classes: int = 10, device: str = "cpu", repeats: int = 3, threads: int = 0,
               seed: int = 0, acceleration: dict | None = None, baseline: bool = False) -> dict:
    """Median time (s) of one SGD training step of a model under several gradient methods,
    interleaved in one process (as :func:`anode_workbench.bench.workloads.time_stack`).

    Args:
        model: a registered name.
        methods: label → ODE options (``None`` for a plain baseline).
        batch, size, num_classes, device, threads, seed, acceleration: as :func:`train_step`.
        repeats: rounds after one warm-up step each (with ``compile``, :data:`COMPILE_WARMUP`
            more); the order rotates from round to round.
        baseline: also time every method in float32, NCHW, eager (the backend flags stay those
            of ``acceleration``), interleaved with the others.

    Returns:
        label → ``{"seconds", "cpu_seconds"}`` (median wall and CPU time per step; with
        ``baseline`` also ``fp32_seconds`` and ``fp32_cpu_seconds``, or ``fp32_error``) or
        ``{"error": message}`` when its warm-up raised.
    """
    dev = prepare(threads, device, seed)
    acc = _acceleration(acceleration, dev)

    def builder(options, settings):
        def build():
            step = _setup(model, options, batch, size, num_classes, dev, seed, settings)[3]
            for _ in range(COMPILE_WARMUP if settings.compile else 0):
                step()
            return step
        return build

    builders = {label: builder(options, acc) for label, options in methods.items()}
    if baseline:
        eager = Acceleration(deterministic=acc.deterministic)
        builders.update({label + _BASELINE: builder(options, eager) for label, options in methods.items()})
    times = time_methods(builders, dev, repeats)
    results = {label: times[label] for label in methods}
    for label in methods if baseline else ():
        base = times[label + _BASELINE]
        results[label] = {**results[label], **({"fp32_error": base["error"]} if "error" in base else
                                               {"fp32_seconds": base["seconds"],
                                                "fp32_cpu_seconds": base["cpu_seconds"]})}
    return results


def run_models(names: list[str], *, acceleration: Acceleration | None = None, log=print, tol: float = 1e-5,
               isolation: str = "fork", clock: str = "wall", separate_timing: bool | None = None,
               **workload) -> list[dict]:
    """Measure every model in ``names`` with every gradient method in fresh processes.

    Peak memory: one process per (model, method); time: one process per model, the methods
    interleaved (see :func:`anode_workbench.bench.suite.run_sweep` for why). For ODE models one more
    process computes ``direct``'s gradient on the reversed batch: the noise floor.

    Args:
        names: registered model names.
        acceleration: how every step runs (default: float32, NCHW, eager); unless that is the
            default (up to ``deterministic``), the float32 eager baseline is timed too.
        log: called with one progress line per measurement.
        tol: relative gradient difference to ``direct`` up to which an exact method is equal.
        isolation, clock, separate_timing: as :func:`anode_workbench.bench.suite.run_sweep`;
            ``time_s`` is the time by ``clock`` and ``images_per_s = batch / time_s``.
        **workload: passed to :func:`train_step` and :func:`time_steps` (``batch``,
            ``size``, ``device``, ``repeats``, ``threads``, ``seed``; ``ode_options`` are
            merged into each method's).

    Returns:
        One dict per measurement with the keys of :data:`anode_workbench.bench.models_report.COLUMNS`.
    """
    from .models_report import complete

    acc = acceleration or Acceleration()
    settings = asdict(acc)
    baseline = acc != Acceleration(deterministic=acc.deterministic)
    base = workload.pop("ode_options", None) or {}
    rows = []
    with Sweep(TARGET, TIME_TARGET, preload=["anode", "anode.models", "anode_workbench.bench.models"],
               isolation=isolation, clock=clock, separate_timing=separate_timing,
               device=workload.get("device", "cpu"), tol=tol, log=log) as sweep:
        for name in names:
            has_ode = _is_ode(name)
            entries = []
            for label, options, exact in gradient_methods() if has_ode else [("plain", {}, True)]:
                row = {"model": name, "method": label, "exact_method": exact,
                       "batch": workload.get("batch", 32)}
                rows.append(row)
                options = {**base, **options} if has_ode else None
                memory = {"model": name, "ode_options": options, "acceleration": settings, **workload}
                entries.append(Entry(row, memory, options, exact))
            floor = {**entries[0].memory, "reverse": True} if has_ode else None
            sweep.group(name, entries, compare=has_ode, floor=floor,
                        timing={"model": name, "acceleration": settings, "baseline": baseline, **workload})
    complete(rows, clock, tol, acc, workload.get("device", "cpu"))
    return rows


def _is_ode(name: str) -> bool:
    from anode import models

    try:
        return bool(models.ode_blocks(models.create(name)))
    except ValueError:
        return False
