"""Peak memory, function evaluations and time of revolve(s) against direct, store, recompute.

Run: ``anode bench revolve [--quick] [--out docs]``. One ODE block with the ANODE paper's
ResNet ODE function (conv–BN–ReLU twice, :class:`anode.ConvODEFunc`), N_t = 64 steps by
default; each configuration runs in a fresh process (:mod:`anode_workbench.bench.isolation`), memory by
:func:`~anode_workbench.bench.measure.peak_memory`, time by
:func:`~anode_workbench.bench.measure.median_times`
(both by :func:`anode_workbench.bench.workloads.ode_stack`); every figure is reported as a ratio to
direct autograd measured in the same run. On CPU the time compared is the process's CPU time
with one thread, which other jobs on a shared machine inflate far less than the wall time
(both are recorded); on CUDA it is the wall time. With an output folder DIR,
:func:`write_results` writes ``DIR/img/revolve_results.json``, ``DIR/img/revolve_table.md``
and the plot ``DIR/img/revolve_tradeoff.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .isolation import Isolated
from .workloads import ode_stack

SNAPSHOTS = [1, 2, 4, 8, 16, 64]
QUICK_SNAPSHOTS = [1, 2, 4, 8]
WORKLOAD = dict(n_steps=64, method="midpoint", channels=16, batch=4, size=16)
QUICK = dict(n_steps=8, method="midpoint", channels=4, batch=2, size=8)
TARGET = "anode_workbench.bench.revolve_tradeoff:one_block"


def one_block(*, gradient: str, threads: int = 1, **options) -> dict:
    """Forward+backward of one ODE block: :func:`anode_workbench.bench.workloads.ode_stack` with
    ``layers=1``, one thread by default (peak memory in bytes, median times in seconds,
    function evaluations, recomputed steps, the schedule's name, the gradient norm)."""
    return ode_stack(gradient=gradient, layers=1, threads=threads, **options)


def configurations(snapshots: list[int]) -> list[tuple[str, str, dict]]:
    """``(label, gradient, schedule options)`` of every configuration, direct first."""
    out = [("direct", "direct", {}), ("store", "anode", {"schedule": "store"}),
           ("recompute", "anode", {"schedule": "recompute"})]
    out += [(f"revolve({s})", "anode", {"schedule": "revolve", "schedule_options": {"snapshots": s}})
            for s in snapshots]
    return out


def sweep(snapshots: list[int], workload: dict, device: str, repeats: int, isolation: str = "fork",
          log=print) -> list[dict]:
    """Measure every configuration, each in a fresh process (one thread); rows in
    :func:`configurations` order, each also passed to ``log`` as a JSON line.

    Raises:
        RuntimeError: a measurement failed (its traceback is included).
    """
    rows = []
    with Isolated(["anode", "anode_workbench.bench.revolve_tradeoff"], isolation=isolation) as runner:
        for label, gradient, options in configurations(snapshots):
            res = runner.run(TARGET, gradient=gradient, device=device, repeats=repeats, **options, **workload)
            rows.append({"label": label, "device": device, **res})
            log(json.dumps(rows[-1]))
    return rows


def time_key(rows: list[dict]) -> str:
    """``"cpu_seconds"`` when every row has it and ran on the CPU, else ``"seconds"`` (wall)."""
    return "cpu_seconds" if all(r.get("device", "cpu") == "cpu" and "cpu_seconds" in r for r in rows) \
        else "seconds"


def _ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if b else "n/a"


def table(rows: list[dict]) -> str:
    """Markdown table: absolute figures and ratios to the direct row (the first)."""
    d, tk = rows[0], time_key(rows)
    kind = "CPU" if tk == "cpu_seconds" else "wall"
    lines = [
        "| schedule | peak MiB | peak / state | peak vs direct | f-evals | f-evals vs direct "
        f"| recomputed steps | {kind} time s | time vs direct | wall time s | grad norm |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['peak_bytes'] / 2**20:.2f} | {r['peak_bytes'] / r['state_bytes']:.1f} | "
            f"{_ratio(r['peak_bytes'], d['peak_bytes'], 3)} | {r['function_evaluations']} | "
            f"{_ratio(r['function_evaluations'], d['function_evaluations'])} | {r['recomputed_steps']} | "
            f"{r[tk]:.3f} | {_ratio(r[tk], d[tk])} | {r['seconds']:.3f} | {r['grad_norm']:.6g} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Ratios to direct against the number of snapshots; store and recompute as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = rows[0]
    by_label = {r["label"]: r for r in rows}
    rev = [r for r in rows if r["label"].startswith("revolve(")]
    s = [int(r["label"][len("revolve("):-1]) for r in rev]
    tk = time_key(rows)
    metrics = [("peak_bytes", "peak memory"), ("function_evaluations", "function evaluations"),
               (tk, "CPU time" if tk == "cpu_seconds" else "time")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, name) in zip(axes, metrics):
        if not d[key]:
            continue  # nothing to compare with (a block too small to measure)
        ax.plot(s, [r[key] / d[key] for r in rev], "o-", color="C0", label="revolve(s)")
        for other, style in [("store", "C1--"), ("recompute", "C2:")]:
            if other in by_label:
                ax.axhline(by_label[other][key] / d[key], color=style[:2], ls=style[2:], label=other)
        ax.axhline(1.0, color="k", lw=0.8, label="direct")
        ax.set_xscale("log", base=2)
        ax.set_xticks(s, [str(v) for v in s])
        ax.set_xlabel("snapshots s")
        ax.set_ylabel(f"{name} / direct")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    if axes[0].lines:
        axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[dict], out: Path, workload: dict, device: str) -> None:
    """Write ``out/img/revolve_results.json``, ``out/img/revolve_table.md`` and the plot
    ``out/img/revolve_tradeoff.png``."""
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    (img / "revolve_results.json").write_text(
        json.dumps({"workload": workload, "device": device, "rows": rows}, indent=1)
    )
    (img / "revolve_table.md").write_text(table(rows) + "\n")
    title = (f"one ODE block, ConvODEFunc({workload['channels']}), batch {workload['batch']}, "
             f"{workload['size']}x{workload['size']}, {workload['method']}, "
             f"N_t = {workload['n_steps']}, {device}")
    plot(rows, img / "revolve_tradeoff.png", title)
