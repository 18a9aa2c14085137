"""Training-step memory and throughput of every registered model, by gradient method.

Run: ``anode bench models [--quick] [--out DIR]``. For each model of
:func:`anode.models.list_models` and each gradient method (``direct``,
``anode/recompute``, ``backsolve``; a plain residual baseline has no ODE blocks and runs once)
one training step — forward, cross-entropy, backward, SGD step — on a random batch of
``[batch, 3, 32, 32]`` is measured: extra peak memory of one step (a fresh process per model
and method), median time per step after warm-up (a fresh process per model, the methods
interleaved), images per second. Ratios are to ``direct`` of the same model in the same run.
The warm-up gradients of the exact methods are compared with ``direct``'s.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from .measure import peak_memory, prepare, time_methods
from .sweep import Entry, Sweep

TARGET = "anode.bench.models:train_step"
TIME_TARGET = "anode.bench.models:time_steps"
COLUMNS = ["model", "parameters", "method", "exact_method", "equal", "grad_rel_diff", "peak_bytes",
           "mem_vs_direct", "time_s", "time_vs_direct", "images_per_s", "seconds", "cpu_seconds", "batch",
           "error"]


def gradient_methods() -> list[tuple[str, dict, bool]]:
    """``(label, ODE options, exact)`` of the methods measured: ``direct``, ``anode/recompute``
    and ``backsolve``, those registered at run time."""
    from .suite import available_methods

    wanted = ("direct", "anode/recompute", "backsolve")
    return [(m.name, m.options, m.exact) for m in available_methods(()) if m.name in wanted]


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

    def builder(options):
        return lambda: _setup(model, options, batch, size, num_classes, dev, seed)[3]

    return time_methods({label: builder(options) for label, options in methods.items()}, dev, repeats)


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
    rows = []
    with Sweep(TARGET, TIME_TARGET, preload=["anode", "anode.models", "anode.bench.models"],
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
                memory = {"model": name, "ode_options": options, **workload}
                entries.append(Entry(row, memory, options, exact))
            sweep.group(name, entries, timing={"model": name, **workload}, compare=has_ode)
    for r in rows:
        if "time_s" in r:
            r["images_per_s"] = r["batch"] / r["time_s"]
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


def write_results(rows: list[dict], out: Path, header: str, settings: dict) -> str:
    """Write ``models_results.md`` (``header`` and :func:`table`), ``models_results.csv``
    (:data:`COLUMNS`) and ``models_results.json`` (``settings`` and the rows) into ``out``;
    return the markdown."""
    md = header + "\n\n" + table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "models_results.md").write_text(md + "\n")
    with open(out / "models_results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "models_results.json").write_text(json.dumps({**settings, "rows": rows}, indent=1))
    return md


def failures(rows: list[dict]) -> list[tuple[dict, str]]:
    """``(row, why)`` of every failed measurement and every exact method whose gradient
    differs from ``direct``'s."""
    return [(r, r.get("error", "gradient differs from direct")) for r in rows
            if "error" in r or (r["exact_method"] and r["method"] != "plain" and not r.get("equal"))]
