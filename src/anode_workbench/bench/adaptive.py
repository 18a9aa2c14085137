"""``anode bench adaptive``: gradients of adaptive dopri5 solves, every method in one run.

Three workloads (:mod:`anode_workbench.bench.adaptive_workloads`): an MLP vector field on a batch of
states, a continuous normalizing flow with a Hutchinson trace on a 2-D density, and the same
flow written as FFJORD writes it (its divergence's graph built whatever the grad mode; the
forward alone is measured too, a fresh process per method). Each is
solved at the same ``rtol``/``atol`` and differentiated by this library (``direct``,
``anode/store``, ``anode/recompute``, ``anode/revolve(s=4)``) and by torchdiffeq
(``odeint``, ``odeint_adjoint``). Per method: peak memory of one forward+backward (a fresh
process each), time (all methods of a workload interleaved in one process), evaluations of
the vector field, and the gradient's relative difference (2-norm)

* to the exact discrete gradient: ``direct``'s, autograd through this library's solve, i.e.
  the gradient of the accepted steps with their sizes held fixed (``grad_rel_diff``);
* to torchdiffeq ``odeint``'s autograd gradient (``grad_vs_odeint``): torchdiffeq takes its
  own steps and interpolates its output, so neither of its gradients can equal ours; this
  column shows how far its adjoint is from the gradient of its own discrete solve.

Targets (judged unless ``--quick``): ``anode/recompute``'s peak <= 1.2x torchdiffeq
``odeint_adjoint``'s and <= 0.25x torchdiffeq ``odeint``'s, its time <= 1.3x
``odeint_adjoint``'s; for ``ffjord`` also its peak <= 1.0x ``odeint_adjoint``'s and the peak
of its forward <= 1.1x that of ``odeint_adjoint``'s forward.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import torch

from ..diagnostics import relative_error
from .report import targets_table
from .suite import TDQ_ADJOINT, TDQ_ODEINT
from .sweep import Entry, Sweep
from .targets import Target

MEMORY_TARGET = "anode_workbench.bench.adaptive_workloads:adaptive_step"
TIME_TARGET = "anode_workbench.bench.adaptive_workloads:time_adaptive"
RECOMPUTE = "anode/recompute"

# Sizes at which activations and states, not the interpreter, make the peak (a few to a few
# hundred MiB), and the whole run takes a few minutes on two CPU cores.
WORKLOADS = {
    "mlp": dict(batch=1024, hidden=256, dim=32),
    "cnf": dict(batch=2048, hidden=128),
    "ffjord": dict(batch=3072, hidden=96),
}
QUICK_WORKLOADS = {
    "mlp": dict(batch=64, hidden=16, dim=4),
    "cnf": dict(batch=64, hidden=16),
    "ffjord": dict(batch=64, hidden=16),
}
DESCRIPTION = {
    "mlp": "MLP vector field, state [{batch}, {dim}], two tanh layers of width {hidden}",
    "cnf": "CNF (FFJORD, Hutchinson trace) on two moons, {batch} points, two tanh layers of width {hidden}",
    "ffjord": "CNF as FFJORD's ODEfunc (divergence always with create_graph=True) on two moons, {batch} "
              "points, two tanh layers of width {hidden}",
}
#: workloads whose forward alone is measured too (fresh processes, as the whole steps)
FORWARD_PEAKS = ("ffjord",)

COLUMNS = ["field", "method", "exact_method", "equal", "grad_rel_diff", "grad_vs_odeint", "output_rel_diff",
           "peak_bytes", "mem_vs_adjoint", "mem_vs_odeint", "forward_peak_bytes", "forward_vs_adjoint",
           "time_s", "seconds", "cpu_seconds",
           "time_vs_adjoint", "time_vs_odeint", "function_evaluations", "accepted_steps", "rejected_steps",
           "grad_norm", "state_bytes", "error"]


def methods(snapshots: int = 4, torchdiffeq: bool = True) -> list[tuple[str, dict, bool]]:
    """``(label, options of build, exact)`` of every method, ``direct`` (the reference) first."""
    out = [("direct", dict(gradient="direct"), True),
           ("anode/store", dict(gradient="anode", schedule="store"), True),
           (RECOMPUTE, dict(gradient="anode", schedule="recompute"), True),
           (f"anode/revolve(s={snapshots})", dict(gradient="anode", schedule="revolve", snapshots=snapshots),
            True)]
    if torchdiffeq:
        out += [(TDQ_ODEINT, dict(library="torchdiffeq", gradient="direct"), False),
                (TDQ_ADJOINT, dict(library="torchdiffeq", gradient="adjoint"), False)]
    return out


def run(fields: list[str], *, rtol: float, atol: float, quick: bool = False, repeats: int = 3,
        threads: int = 1, clock: str = "cpu", isolation: str = "fork", tol: float = 1e-5, seed: int = 0,
        log=print, solver: str = "dopri5", step_size: float | None = None,
        max_order: int | None = None) -> list[dict]:
    """Measure every method on every workload; one row per ``(field, method)``.

    Memory and the gradient comparison with ``direct`` come from
    :class:`~anode_workbench.bench.sweep.Sweep` (a fresh process per method); each method's warm-up
    gradient is also kept to compare it with torchdiffeq ``odeint``'s (``grad_vs_odeint``).

    Returns:
        Rows with the keys of :data:`COLUMNS` where measured; a failed method has ``error``.
    """
    try:
        import torchdiffeq  # noqa: F401
        have_tdq = True
    except ImportError:
        have_tdq = False
    preload = ["anode", "anode_workbench.bench.adaptive_workloads"] + (["torchdiffeq"] if have_tdq else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="anode-adaptive-") as tmp, \
            Sweep(MEMORY_TARGET, TIME_TARGET, preload=preload, isolation=isolation, clock=clock, tol=tol,
                  log=log) as sweep:
        for field in fields:
            sizes = (QUICK_WORKLOADS if quick else WORKLOADS)[field]
            common = dict(field=field, rtol=rtol, atol=atol, seed=seed, threads=threads, solver=solver,
                          **sizes)
            # an Adams solver's grid (anode_workbench.bench.adaptive_workloads.build)
            if step_size is not None:
                common["step_size"] = step_size
            if max_order is not None:
                common["max_order"] = max_order
            entries, kept = [], {}
            for label, options, exact in methods(torchdiffeq=have_tdq):
                row = {"field": field, "method": label, "exact_method": exact}
                kept[label] = str(Path(tmp) / f"{field}-{len(kept)}.pt")
                entries.append(Entry(row, {**common, **options, "keep": kept[label]}, options, exact))
                rows.append(row)
            sweep.group(field, entries, timing={**common, "repeats": repeats})
            if field in FORWARD_PEAKS:
                _forward_peaks(sweep, entries, field)
            _compare_with_odeint([e.row for e in entries], kept)
    _add_ratios(rows)
    return rows


def _forward_peaks(sweep: Sweep, entries: list[Entry], field: str) -> None:
    for entry in entries:
        row = entry.row
        if "error" in row:
            continue
        options = {k: v for k, v in entry.memory.items() if k != "keep"}
        try:
            row["forward_peak_bytes"] = sweep.memory(**options, forward_only=True)["peak_bytes"]
        except RuntimeError as exc:
            row["error"] = "forward peak: " + str(exc).strip().splitlines()[-1]
            continue
        sweep.say(f"{field} {row['method']}: forward {row['forward_peak_bytes'] / 2**20:.1f} MiB")


def _compare_with_odeint(rows: list[dict], kept: dict[str, str]) -> None:
    path = kept.get(TDQ_ODEINT)
    if not path or not Path(path).exists():
        return
    reference = torch.load(path)["grad"]
    for r in rows:
        if "error" not in r and Path(kept[r["method"]]).exists():
            r["grad_vs_odeint"] = relative_error([torch.load(kept[r["method"]])["grad"]], [reference])


def _add_ratios(rows: list[dict]) -> None:
    by_field = {}
    for r in rows:
        if "error" not in r:
            by_field.setdefault(r["field"], {})[r["method"]] = r
    for r in rows:
        if "error" in r:
            continue
        for key, ref in (("adjoint", TDQ_ADJOINT), ("odeint", TDQ_ODEINT)):
            other = by_field[r["field"]].get(ref)
            if other:
                r[f"mem_vs_{key}"] = _ratio(r["peak_bytes"], other["peak_bytes"])
                r[f"time_vs_{key}"] = _ratio(r["time_s"], other["time_s"])
        other = by_field[r["field"]].get(TDQ_ADJOINT, {})
        if "forward_peak_bytes" in r and "forward_peak_bytes" in other:
            r["forward_vs_adjoint"] = _ratio(r["forward_peak_bytes"], other["forward_peak_bytes"])


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def evaluate(rows: list[dict], quick: bool = False, solver: str = "dopri5") -> list[Target]:
    """The three targets of the module docstring for each workload (not judged in quick mode,
    whose states of a few KiB are below the resolution of resident-size figures, nor for a
    solver other than dopri5, for which they were not set)."""
    found = []
    inf = float("-inf")
    for field in dict.fromkeys(r["field"] for r in rows):
        rec = next((r for r in rows if r["field"] == field and r["method"] == RECOMPUTE and "error" not in r),
                   {})
        found += [
            Target(f"memory: {RECOMPUTE} / {TDQ_ADJOINT}", rec.get("mem_vs_adjoint"), inf, 1.2, field),
            Target(f"memory: {RECOMPUTE} / {TDQ_ODEINT}", rec.get("mem_vs_odeint"), inf, 0.25, field),
            Target(f"time: {RECOMPUTE} / {TDQ_ADJOINT}", rec.get("time_vs_adjoint"), inf, 1.3, field),
        ]
        if field in FORWARD_PEAKS:
            found += [
                Target(f"memory: {RECOMPUTE} / {TDQ_ADJOINT}", rec.get("mem_vs_adjoint"), inf, 1.0, field),
                Target(f"forward memory: {RECOMPUTE} / {TDQ_ADJOINT}", rec.get("forward_vs_adjoint"), inf,
                       1.1, field),
            ]
    if quick or solver != "dopri5":
        for t in found:
            t.unjudged = "quick sizes" if quick else f"set for dopri5, not {solver}"
    return found


def _x(value) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _mib(value) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def _e(value) -> str:
    return "–" if value is None else f"{value:.1e}"


def results_table(rows: list[dict]) -> str:
    """Markdown table of every measurement."""
    lines = ["| field | method | exact | grad. rel. diff. vs exact discrete | vs tdq odeint | peak MiB "
             "| peak vs tdq adjoint | peak vs tdq odeint | forward peak MiB | forward peak vs tdq adjoint "
             "| time s | time vs tdq adjoint | f-evals | steps (rejected) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['field']} | {r['method']} | failed | {r['error'][:60]} |" + " |" * 10)
            continue
        exact = ("yes" if r.get("equal") else "NO") if r["exact_method"] else "approx."
        steps = f"{r['accepted_steps']} ({r['rejected_steps']})" if "accepted_steps" in r else "–"
        lines.append(
            f"| {r['field']} | {r['method']} | {exact} | {_e(r.get('grad_rel_diff'))} | "
            f"{_e(r.get('grad_vs_odeint'))} | {r['peak_bytes'] / 2**20:.1f} | "
            f"{_x(r.get('mem_vs_adjoint'))} | "
            f"{_x(r.get('mem_vs_odeint'))} | {_mib(r.get('forward_peak_bytes'))} | "
            f"{_x(r.get('forward_vs_adjoint'))} | {r['time_s']:.3f} | {_x(r.get('time_vs_adjoint'))} | "
            f"{r['function_evaluations']} | {steps} |")
    return "\n".join(lines)


def describe(field: str, quick: bool) -> str:
    """One line on a workload's sizes."""
    return DESCRIPTION[field].format(**{"dim": "", **(QUICK_WORKLOADS if quick else WORKLOADS)[field]})


def write(rows: list[dict], targets: list[Target], out: Path, header: str) -> str:
    """Write ``adaptive_results.md`` and ``adaptive_results.csv`` into ``out``; return the
    markdown."""
    out.mkdir(parents=True, exist_ok=True)
    md = "\n\n".join([header.strip(), "### Targets\n\n" + targets_table(targets),
                      "### All measurements\n\n" + results_table(rows)]) + "\n"
    (out / "adaptive_results.md").write_text(md)
    with open(out / "adaptive_results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return md


def plot(rows: list[dict], path: Path, title: str = "") -> Path | None:
    """Bar charts of each method's peak memory (log scale) and time relative to torchdiffeq
    ``odeint_adjoint``, one group of bars per workload; None (no file) when
    ``odeint_adjoint`` was not measured."""
    rows = [r for r in rows if "error" not in r and r.get("mem_vs_adjoint") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = list(dict.fromkeys(r["field"] for r in rows))
    labels = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, key, name in ((axes[0], "mem_vs_adjoint", "peak memory"), (axes[1], "time_vs_adjoint", "time")):
        for i, label in enumerate(labels):
            values = [next((r[key] for r in rows if r["field"] == f and r["method"] == label), 0) or 0
                      for f in fields]
            ax.bar([j + (i - (len(labels) - 1) / 2) * width for j in range(len(fields))], values, width,
                   label=label, hatch="//" if label.startswith("torchdiffeq") else None)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(fields)), fields)
        ax.set_ylabel(f"{name} / torchdiffeq odeint_adjoint")
    axes[0].set_yscale("log")  # peaks span 0.05x to 50x
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
