"""``anode bench frontier``: peak memory against time of every exact method on one block.

Three workloads (:mod:`anode_workbench.bench.frontier_workloads`: W1 a CNF with dopri5, W2 an MLP
field with rk4, W3 a convolutional field with rk4). Per workload, each method's peak memory
of one forward+backward (a fresh process each) and its time (all methods of the workload in
one new interpreter, as a user's script runs, whose allocator keeps freed pages for reuse,
interleaved rounds, median; not a child forked from the measurement server, where store
tended to come out a few percent slower against checkpoint on W2: docs/benchmarks.md), its
evaluations of the field and its gradient's relative difference (2-norm) to ``direct``'s.
The methods: ``direct``; ``anode`` with ``store`` (whole steps, and stage by stage),
``recompute``, ``revolve(s=4)`` and ``Auto`` at a memory budget equal to torchdiffeq
``odeint_adjoint``'s measured peak; the peers
``torch.utils.checkpoint`` around each step (fixed grids) and torchdiffeq ``odeint_adjoint``
(with ``adjoint_options=dict(norm="seminorm")`` too on the adaptive W1). ``forward`` is timed
alone: the solve without a graph, the F of the cost model. ``checkpoint (again)`` is the
checkpoint loop measured a second time, memory and time: how far apart the run puts two
measurements of the same work, its resolution (not plotted).

The Auto budget is calibrated: Auto counts the states it keeps and one step's graph, not the
parameter gradients, the adjoint or the interpreter's own allocations, so its first measured
peak may exceed the budget's target; the budget is then lowered by the excess and one state
and measured again (at most :data:`CALIBRATION_ROUNDS` times). The row's ``budget_bytes`` is the budget
used, ``choice`` what Auto chose.

Targets (ratios from one run; not judged with ``--quick``):

* W2, W3: ``anode/store`` no slower than checkpoint and its peak no more than checkpoint's,
  each to the resolution of the run, which measures the checkpoint loop twice (a difference
  smaller than the loop's difference from itself cannot be told from noise). Time, compared
  round by round (the median over the rounds of each round's ratio):
  ``store / checkpoint <= 1 + |again / checkpoint - 1|``. Memory, counted in states:
  ``(peak store - peak checkpoint) / state bytes`` at most the larger of
  ``|peak again - peak checkpoint| / state bytes`` and :data:`STATE_RESOLUTION` (a tensor
  held one step too long adds a whole state; the kernel sums the resident size
  approximately, to a few hundred KiB, which on W2 is about a state). Without the second
  measurement the bounds are 1 and :data:`STATE_RESOLUTION`;
* every workload: ``anode/recompute`` within its cost model, one forward more than store:
  ``(time recompute - time store) / time forward <= 1.25``;
* the frontier: the Auto row's peak <= ``odeint_adjoint``'s, its time <= 1.2x
  ``odeint_adjoint``'s on W2 and W3, <= 1.0x on W1.
"""

from __future__ import annotations

import csv
import statistics
import tempfile
from pathlib import Path

import torch

from ..diagnostics import relative_error
from .isolation import Isolated
from .targets import Target

MEMORY = "anode_workbench.bench.frontier_workloads:frontier_step"
TIME = "anode_workbench.bench.frontier_workloads:time_frontier"
ADJOINT, SEMINORM = "torchdiffeq/odeint_adjoint", "torchdiffeq/odeint_adjoint seminorm"
CHECKPOINT, FORWARD = "checkpoint", "forward"
CHECKPOINT_AGAIN = "checkpoint (again)"  # the same loop measured twice: the run's resolution
STATE_RESOLUTION = 0.5  # states: below it, two peaks of resident memory are the same memory
STORE, RECOMPUTE, AUTO = "anode/store", "anode/recompute", "anode/auto(budget=adjoint peak)"
CALIBRATION_ROUNDS = 4
TIME_BOUND = {"W1": 1.0, "W2": 1.2, "W3": 1.2}

COLUMNS = ["workload", "method", "exact", "equal", "grad_rel_diff", "peak_bytes", "mem_vs_adjoint", "time_s",
           "seconds", "cpu_seconds", "time_vs_adjoint", "function_evaluations", "budget_bytes", "choice",
           "error"]


def methods(workload: str, torchdiffeq: bool = True) -> list[tuple[str, dict, bool]]:
    """``(label, options of build, exact)``, ``direct`` (the reference) first; the Auto row
    is added by :func:`run` once ``odeint_adjoint``'s peak is known."""
    adaptive = workload == "W1"
    out = [("direct", dict(method="direct"), True),
           (STORE, dict(method="anode", schedule="store"), True),
           (STORE + " stage by stage", dict(method="anode", schedule="store", stagewise=True), True),
           (RECOMPUTE, dict(method="anode", schedule="recompute"), True),
           ("anode/revolve(s=4)", dict(method="anode", schedule="revolve", snapshots=4), True)]
    if not adaptive:
        out.append((CHECKPOINT, dict(method="checkpoint"), True))
        out.append((CHECKPOINT_AGAIN, dict(method="checkpoint"), True))
    if torchdiffeq:
        out.append((ADJOINT, dict(method="tdq_adjoint"), False))
        if adaptive:
            out.append((SEMINORM, dict(method="tdq_adjoint", seminorm=True), False))
    return out


def run(workloads: list[str], *, quick: bool = False, repeats: int = 9, threads: int = 1, clock: str = "cpu",
        isolation: str = "fork", tol: float = 1e-5, seed: int = 0, log=print) -> list[dict]:
    """Measure every method of every workload; one row per ``(workload, method)`` with the
    keys of :data:`COLUMNS` where measured (a failed method has ``error``). ``isolation``
    (:class:`~anode_workbench.bench.isolation.Isolated`) makes the memory measurements' fresh
    processes; the times of a workload are always taken in one new interpreter."""
    try:
        import torchdiffeq  # noqa: F401
        have_tdq = True
    except ImportError:
        have_tdq = False
    preload = ["anode", "anode_workbench.bench.frontier_workloads"] + (["torchdiffeq"] if have_tdq else [])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="anode-frontier-") as tmp, \
            Isolated(preload, isolation=isolation) as memory, \
            Isolated(preload, isolation="spawn", allocator="reuse") as timing:
        for workload in workloads:
            common = dict(workload=workload, quick=quick, seed=seed, threads=threads)
            group: list[tuple[dict, dict]] = []
            reference = None
            for label, options, exact in methods(workload, have_tdq):
                row = {"workload": workload, "method": label, "exact": exact}
                reference = _measure(memory, row, {**common, **options}, Path(tmp), reference, tol, log)
                group.append((row, options))
            adjoint = next((r for r, _ in group if r["method"] == ADJOINT and "peak_bytes" in r), None)
            if adjoint is not None:
                row, options = _calibrated_auto(memory, workload, common, adjoint["peak_bytes"], Path(tmp),
                                                reference, tol, log)
                group.append((row, options))
            labels = {r["method"]: o for r, o in group if "error" not in r}
            labels[FORWARD] = dict(method="forward")
            try:
                times = timing.run(TIME, workload=workload, quick=quick, seed=seed, threads=threads,
                                   repeats=repeats, methods=labels)
            except RuntimeError as exc:
                times = {label: {"error": str(exc).strip().splitlines()[-1]} for label in labels}
            forward = {"workload": workload, "method": FORWARD, "exact": None}
            for row in [r for r, _ in group] + [forward]:
                result = times.get(row["method"])
                if result is None:
                    continue
                if "error" in result:
                    row["error"] = "timing: " + result["error"]
                    continue
                row.update(result)
                row["time_s"] = row["cpu_seconds" if clock == "cpu" else "seconds"]
                row["time_rounds"] = row["cpu_rounds" if clock == "cpu" else "wall_rounds"]
            rows += [r for r, _ in group] + [forward]
            log(f"{workload} times ({clock}): " + ", ".join(
                f"{r['method']} {r['time_s']:.3f} s" for r, _ in group if "time_s" in r))
    _add_ratios(rows)
    return rows


def _measure(runner: Isolated, row: dict, kwargs: dict, tmp: Path, reference, tol: float, log):
    """Fill ``row`` with one memory measurement; return the reference results (the first
    method's), set by this call when there was none."""
    save = str(tmp / "results.pt")
    try:
        row.update(runner.run(MEMORY, save=save, **kwargs))
    except RuntimeError as exc:
        row["error"] = str(exc).strip().splitlines()[-1]
        log(f"{row['workload']} {row['method']}: FAILED {row['error']}")
        return reference
    saved = torch.load(save)
    reference = saved if reference is None else reference
    row["grad_rel_diff"] = relative_error([saved["grad"]], [reference["grad"]])
    if row["exact"]:
        row["equal"] = row["grad_rel_diff"] <= tol
    log(f"{row['workload']} {row['method']}: {row['peak_bytes'] / 2**20:.1f} MiB, "
        f"grad rel. diff {row['grad_rel_diff']:.1e}" + (f", {row['choice']}" if "choice" in row else ""))
    return reference


def _calibrated_auto(runner, workload, common, target: int, tmp, reference, tol, log):
    budget = float(target)
    for _ in range(CALIBRATION_ROUNDS):
        options = dict(method="anode", schedule="auto", budget=budget)
        row = {"workload": workload, "method": AUTO, "exact": True, "budget_bytes": budget}
        _measure(runner, row, {**common, **options}, tmp, reference, tol, log)
        excess = row.get("peak_bytes", 0) - target
        if "error" in row or excess <= 0 or budget - excess <= 0:
            break
        budget -= excess + row.get("state_bytes", 0)  # a state more: the choices are discrete
    return row, options


def _add_ratios(rows: list[dict]) -> None:
    by = {(r["workload"], r["method"]): r for r in rows if "error" not in r}
    for r in rows:
        adj = by.get((r["workload"], ADJOINT))
        if "error" in r or adj is None:
            continue
        if r.get("peak_bytes") is not None and adj.get("peak_bytes"):
            r["mem_vs_adjoint"] = r["peak_bytes"] / adj["peak_bytes"]
        if r.get("time_s") is not None and adj.get("time_s"):
            r["time_vs_adjoint"] = r["time_s"] / adj["time_s"]


def _get(rows, workload, method, key):
    return next((r.get(key) for r in rows if r["workload"] == workload and r["method"] == method
                 and "error" not in r), None)


def _states_more(rows, workload, method=STORE):
    other, checkpoint = (_get(rows, workload, m, "peak_bytes") for m in (method, CHECKPOINT))
    state = _get(rows, workload, CHECKPOINT, "state_bytes")
    return None if other is None or checkpoint is None or not state else (other - checkpoint) / state


def _ratio(a, b):
    return None if a is None or not b else a / b


def _paired(rows, workload, method, reference):
    """The median over the timed rounds of ``method``'s time over ``reference``'s in the same
    round (None unless both were timed)."""
    a, b = (_get(rows, workload, m, "time_rounds") for m in (method, reference))
    if not a or not b or len(a) != len(b) or not all(b):
        return None
    return statistics.median(x / y for x, y in zip(a, b))


def evaluate(rows: list[dict], quick: bool = False) -> list[Target]:
    """The targets of the module docstring, per workload (unjudged at quick sizes)."""
    inf, found = float("-inf"), []
    for w in dict.fromkeys(r["workload"] for r in rows):
        store_t, fwd_t = _get(rows, w, STORE, "time_s"), _get(rows, w, FORWARD, "time_s")
        if w != "W1":
            again_t = _paired(rows, w, CHECKPOINT_AGAIN, CHECKPOINT)
            again_states = _states_more(rows, w, CHECKPOINT_AGAIN)
            time_resolution = 0.0 if again_t is None else abs(again_t - 1.0)
            states_resolution = max(STATE_RESOLUTION, 0.0 if again_states is None else abs(again_states))
            found += [
                Target(f"time: {STORE} / {CHECKPOINT}, round by round (bound: 1 + the run's resolution)",
                       _paired(rows, w, STORE, CHECKPOINT), inf, round(1.0 + time_resolution, 3), w),
                Target(f"memory: ({STORE} - {CHECKPOINT}) in states (bound: the run's resolution)",
                       _states_more(rows, w), inf, round(states_resolution, 2), w)]
        rec_t = _get(rows, w, RECOMPUTE, "time_s")
        extra = None if rec_t is None or store_t is None else _ratio(rec_t - store_t, fwd_t)
        found += [
            Target(f"time: ({RECOMPUTE} - {STORE}) / {FORWARD}", extra, inf, 1.25, w),
            Target(f"memory: {AUTO} / {ADJOINT}", _get(rows, w, AUTO, "mem_vs_adjoint"), inf, 1.0, w),
            Target(f"time: {AUTO} / {ADJOINT}", _get(rows, w, AUTO, "time_vs_adjoint"), inf, TIME_BOUND[w],
                   w)]
    if quick:
        for t in found:
            t.unjudged = "quick sizes"
    return found


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def results_table(rows: list[dict]) -> str:
    """Markdown table of every measurement."""
    lines = ["| workload | method | exact | grad. rel. diff. vs direct | peak MiB | peak vs tdq adjoint "
             "| time s | time vs tdq adjoint | f-evals | Auto's budget MiB (choice) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['method']} | failed | {r['error'][:60]} |" + " |" * 6)
            continue
        exact = "–" if r["exact"] is None else (
            ("yes" if r.get("equal") else "NO") if r["exact"] else "approx.")
        peak = f"{r['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in r else "–"
        diff = f"{r['grad_rel_diff']:.1e}" if "grad_rel_diff" in r else "–"
        evals = r.get("function_evaluations", "–")
        budget = (f"{r['budget_bytes'] / 2**20:.1f} ({r.get('choice', '?')})" if "budget_bytes" in r else "")
        time_s = f"{r['time_s']:.3f}" if "time_s" in r else "–"
        lines.append(f"| {r['workload']} | {r['method']} | {exact} | {diff} | {peak} | "
                     f"{_x(r.get('mem_vs_adjoint'))} | {time_s} | {_x(r.get('time_vs_adjoint'))} | {evals} | "
                     f"{budget} |")
    return "\n".join(lines)


def write(rows: list[dict], targets: list[Target], out: Path, header: str) -> str:
    """Write ``frontier_results.md`` and ``frontier_results.csv`` into ``out``; return the
    markdown."""
    from .report import targets_table

    out.mkdir(parents=True, exist_ok=True)
    md = "\n\n".join([header.strip(), "### Targets\n\n" + targets_table(targets),
                      "### All measurements\n\n" + results_table(rows)]) + "\n"
    (out / "frontier_results.md").write_text(md)
    with open(out / "frontier_results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return md


def plot(rows: list[dict], path: Path, title: str = "") -> Path | None:
    """Peak memory (MiB) against time (s), one panel per workload, one point per method;
    exact methods filled circles, approximate ones (the continuous adjoints) crosses. None
    (no file) when nothing has both figures."""
    rows = [r for r in rows if "error" not in r and "peak_bytes" in r and "time_s" in r
            and r["method"] != CHECKPOINT_AGAIN]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.2 * len(workloads), 4.4), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        for r in (r for r in rows if r["workload"] == w):
            x, y = r["time_s"], r["peak_bytes"] / 2**20
            ax.scatter([x], [y], marker="o" if r["exact"] else "x", s=40,
                       color="C0" if r["method"].startswith("anode") else ("C3" if r["exact"] else "C2"))
            label = r["method"].replace("anode/", "").replace("torchdiffeq/", "tdq ")
            ax.annotate(label.replace("(budget=adjoint peak)", " at adjoint's peak"), (x, y),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("time of forward+backward (s)")
        ax.set_ylabel("peak memory (MiB)")
        ax.set_yscale("log")
        ax.set_title(w)
    fig.suptitle(title + " (o exact, x approximate)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
