"""Tables of the memory and speed sweep: CSV for machines, markdown for people.

Columns (one row per ``(N_t, L, method)``): ``n_steps``, ``layers``, ``method``,
``exact_method`` (the method is discretize-then-optimize), ``equal`` (its output and gradient
equal ``direct``'s to the sweep's tolerance; exact methods only), ``output_rel_diff`` and
``grad_rel_diff`` (relative 2-norm difference to ``direct``), ``peak_bytes`` (extra peak
memory of one forward+backward, glibc's mmap threshold fixed), ``peak_states`` (the same in
states of the ODE), ratios ``mem_vs_direct``, ``mem_vs_adjoint`` (torchdiffeq
``odeint_adjoint``), ``mem_vs_odeint``, ``peak_default_bytes`` and
``mem_default_vs_adjoint`` (the peak under glibc's default allocator, CPU only),
``time_s`` (median time of forward+backward by the sweep's clock), ``seconds`` and
``cpu_seconds`` (median wall and CPU time), ``time_vs_direct``, ``time_vs_adjoint``,
``time_vs_odeint``, ``function_evaluations``, ``grad_norm``, ``parameters``,
``state_bytes``, ``error`` (a method that failed).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .targets import Target, growth

COLUMNS = [
    "n_steps", "layers", "method", "exact_method", "equal", "output_rel_diff", "grad_rel_diff",
    "peak_bytes", "peak_states", "mem_vs_direct", "mem_vs_adjoint", "mem_vs_odeint", "peak_default_bytes",
    "mem_default_vs_adjoint", "time_s", "seconds",
    "cpu_seconds",
    "time_vs_direct", "time_vs_adjoint", "time_vs_odeint", "function_evaluations", "grad_norm",
    "parameters", "state_bytes", "error",
]


def write_csv(rows: list[dict], path: Path) -> None:
    """Write the rows with :data:`COLUMNS` (empty where a value is missing)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _x(value, fmt: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{fmt}}x"


def _mib(value) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def exactness(row: dict) -> str:
    """The "exact" column: ``yes`` / ``NO`` for exact methods, ``approx.`` for the others."""
    if "error" in row:
        return "failed"
    if not row["exact_method"]:
        return "approx."
    return "yes" if row.get("equal") else "NO"


def results_table(rows: list[dict]) -> str:
    """Markdown table of every measurement."""
    lines = [
        "| N_t | L | method | exact | grad. rel. diff. vs direct | peak MiB | peak / state "
        "| peak vs direct | peak vs tdq adjoint | first-step peak MiB, default malloc | same vs tdq adjoint "
        "| time s | time vs direct | time vs tdq adjoint | f-evals |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n_steps']} | {r['layers']} | {r['method']} | failed | "
                         f"{r['error'][:60]} | | | | | | | | | | |")
            continue
        diff = r.get("grad_rel_diff")
        lines.append(
            f"| {r['n_steps']} | {r['layers']} | {r['method']} | {exactness(r)} | "
            f"{'–' if diff is None else f'{diff:.1e}'} | {r['peak_bytes'] / 2**20:.1f} | "
            f"{r['peak_states']:.1f} | {_x(r.get('mem_vs_direct'))} | {_x(r.get('mem_vs_adjoint'))} | "
            f"{_mib(r.get('peak_default_bytes'))} | {_x(r.get('mem_default_vs_adjoint'))} | "
            f"{r['time_s']:.3f} | {_x(r.get('time_vs_direct'))} | {_x(r.get('time_vs_adjoint'))} | "
            f"{r['function_evaluations']} |"
        )
    return "\n".join(lines)


def targets_table(targets: list[Target]) -> str:
    """Markdown table: target, where measured, measured value, bound, met."""
    lines = ["| target | where | measured | bound | met |", "|---|---|---:|---|---|"]
    for t in targets:
        measured = "not measured" if t.measured is None else f"{t.measured:.2f}"
        if t.unjudged and t.measured is not None:
            met = f"n/a ({t.unjudged})"
        else:
            met = "n/a" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.name} | {t.where} | {measured} | {t.bound} | {met} |")
    return "\n".join(lines)


def growth_table(rows: list[dict]) -> str:
    """Markdown table: each method's peak growth in states per step and per block."""
    methods = list(dict.fromkeys(r["method"] for r in rows if "error" not in r))
    lines = ["| method | states per step (slope vs N_t) | states per block (slope vs L) |",
             "|---|---:|---:|"]
    for m in methods:
        per_step, per_block = growth(rows, m)
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {m} | {fmt(per_step)} | {fmt(per_block)} |")
    return "\n".join(lines)


def markdown(rows: list[dict], targets: list[Target], header: str) -> str:
    """The whole report: header, targets, growth, every measurement."""
    return "\n\n".join([
        header.strip(),
        "### Targets\n\n" + targets_table(targets),
        "### Growth of the peak\n\n" + growth_table(rows),
        "### All measurements\n\n" + results_table(rows),
    ]) + "\n"
