"""Tables and plots of a comparison, from its run folders alone.

:func:`write_report` reads ``OUT/compare.json`` and the ``metrics.jsonl`` of every run
folder ``OUT/runs/<variant>-seed<k>`` and writes

* ``compare_curves.png``: training loss and test accuracy against the epoch, one colour per
  variant, the mean over seeds as a line and the range over seeds (min to max) shaded;
* ``compare_gradient_error.png``: the relative error of backsolve's gradient against the
  exact one (and, as a check, anode's) against the epoch, for the weights of the anode and
  the backsolve runs, log scale;
* ``compare_table.md``: per variant, final and best test accuracy (mean ± sample standard
  deviation over seeds, in %), final training loss, wall time of training, peak memory and
  the last recorded gradient error;
* ``summary.json``: the same numbers, machine-readable.

It can be run on a comparison that is still running or was interrupted: only finished epochs
count, and the table says how many runs and epochs each row has.
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write
from .layout import CURVES_NAME, GRAD_NAME, SUMMARY_NAME, TABLE_NAME, diverged_epoch, read_metrics, run_folder
from .spec import load_spec

__all__ = ["collect", "summarize", "markdown_table", "plot_curves", "plot_gradient_error", "write_report"]

COLORS = {"plain": "tab:gray", "anode": "tab:blue", "backsolve": "tab:red"}
LABELS = {
    "plain": "plain network",
    "anode": "ODE, anode (discrete adjoint)",
    "backsolve": "ODE, backsolve (continuous adjoint)",
}


def collect(out: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """The runs of the comparison in ``out``: ``{variant: [run, ...]}`` in seed order, where
    a run is ``{"seed", "records" (per-epoch metrics), "diverged" (None or the epoch whose
    loss became NaN/inf)}``; runs without a finished epoch or a divergence are left out.

    Raises:
        FileNotFoundError: no comparison in ``out``.
    """
    spec = load_spec(out)
    runs: dict[str, list[dict[str, Any]]] = {}
    for variant in spec.variants:
        for seed in spec.seeds:
            folder = run_folder(out, variant, seed)
            records = read_metrics(folder)
            diverged = diverged_epoch(folder)
            if records or diverged is not None:
                runs.setdefault(variant, []).append({"seed": seed, "records": records, "diverged": diverged})
    return runs


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per variant: ``runs``, ``epochs`` (min and max finished), ``diverged`` (count),
    ``final_acc``/``best_acc`` (mean, std over seeds, %), ``final_train_loss`` (mean, std),
    ``train_time_min`` (mean, std of the summed training time of each run, minutes),
    ``peak_memory_mb`` (mean over runs of each run's maximum, MiB) and, for ODE variants,
    ``grad_err_backsolve`` / ``grad_err_anode`` (mean, std of the last recorded relative
    gradient error). A diverged run contributes its last finished epoch."""
    summary: dict[str, dict[str, Any]] = {}
    for variant, rs in runs.items():
        done = [r["records"] for r in rs if r["records"]]
        last = [recs[-1] for recs in done]
        n_epochs = [len(r["records"]) for r in rs]

        def total(key: str, recs: list[dict[str, Any]]) -> float:
            return sum(_num(x[key]) for x in recs) / 60

        row: dict[str, Any] = {
            "runs": len(rs),
            "seeds": [r["seed"] for r in rs],
            "epochs": [min(n_epochs), max(n_epochs)],
            "diverged": sum(r["diverged"] is not None for r in rs),
            "final_acc": _mean_std([100 * _num(rec["test_acc"]) for rec in last]),
            "best_acc": _mean_std([100 * max(_num(x["test_acc"]) for x in recs) for recs in done]),
            "final_train_loss": _mean_std([_num(rec["train_loss"]) for rec in last]),
            "train_time_min": _mean_std([total("train_time_s", recs) for recs in done]),
            "epoch_time_min": _mean_std([total("epoch_time_s", recs) for recs in done]),
            "peak_memory_mb": _mean_std([max(_num(x.get("peak_memory_mb")) for x in recs) for recs in done]),
        }
        for name in ("backsolve", "anode"):
            key = f"grad_rel_err_{name}"
            if any(key in rec for rec in last):
                row[f"grad_err_{name}"] = _mean_std([_num(rec.get(key)) for rec in last])
        summary[variant] = row
    return summary


def _fmt(ms: Sequence[float], digits: int = 2, sci: bool = False) -> str:
    mean, std = ms
    if not math.isfinite(mean):
        return "–"
    f = (lambda v: f"{v:.{digits}e}") if sci else (lambda v: f"{v:.{digits}f}")
    return f(mean) if not math.isfinite(std) else f"{f(mean)} ± {f(std)}"


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a markdown table (one row per variant)."""
    head = (
        "| variant | runs (diverged) | epochs | final test acc (%) | best test acc (%) | final train loss "
        "| training time (min) | peak memory (MiB) | backsolve grad. rel. error (last epoch) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for variant, row in summary.items():
        lo, hi = row["epochs"]
        epochs = str(hi) if lo == hi else f"{lo}–{hi}"
        cells = [
            variant, f"{row['runs']} ({row['diverged']})", epochs,
            _fmt(row["final_acc"]), _fmt(row["best_acc"]),
            _fmt(row["final_train_loss"], 3), _fmt(row["train_time_min"], 1), _fmt(row["peak_memory_mb"], 0),
            _fmt(row.get("grad_err_backsolve", (math.nan, math.nan)), 2, sci=True),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _series(rs: Sequence[dict[str, Any]], key: str, scale: float = 1.0):
    """Per epoch: (epoch, mean, min, max) over the runs that have ``key`` at that epoch."""
    by_epoch: dict[int, list[float]] = {}
    for r in rs:
        for rec in r["records"]:
            v = _num(rec.get(key)) * scale
            if math.isfinite(v):
                by_epoch.setdefault(int(rec["epoch"]), []).append(v)
    epochs = sorted(by_epoch)
    return (
        epochs,
        [statistics.fmean(by_epoch[e]) for e in epochs],
        [min(by_epoch[e]) for e in epochs],
        [max(by_epoch[e]) for e in epochs],
    )


def _figure(n: int, width: float = 4.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, (fig.subplots(1, n) if n > 1 else [fig.subplots(1, 1)])


def _save(fig, path: Path) -> Path:

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Training loss and test accuracy against the epoch (mean over seeds, min–max shaded)."""
    fig, axes = _figure(2)
    panels = (("train_loss", 1.0, "training loss (nats)"), ("test_acc", 100.0, "test accuracy (%)"))
    for ax, (key, scale, ylabel) in zip(axes, panels):
        for variant, rs in runs.items():
            epochs, mean, lo, hi = _series(rs, key, scale)
            if not epochs:
                continue
            color = COLORS.get(variant)
            label = f"{LABELS.get(variant, variant)} (n={len(rs)})"
            ax.plot(epochs, mean, marker="o", markersize=3, color=color, label=label)
            if len(rs) > 1:
                ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
            for r in rs:
                if r["diverged"] is not None and r["records"]:
                    rec = r["records"][-1]
                    ax.plot([rec["epoch"]], [_num(rec[key]) * scale], marker="x", color=color, markersize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def plot_gradient_error(
    runs: dict[str, list[dict[str, Any]]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Relative gradient error against the epoch (log scale), for the weights of each ODE
    variant's runs: backsolve's error solid, anode's (a check: rounding only) dashed; a
    series that is exactly zero throughout is only named in the legend."""
    fig, axes = _figure(1, width=6.4)
    ax = axes[0]
    for variant, rs in runs.items():
        for name, style in (("backsolve", "-"), ("anode", "--")):
            epochs, mean, lo, hi = _series(rs, f"grad_rel_err_{name}")
            if not epochs:
                continue
            color = COLORS.get(variant)
            label = f"{name} gradient, weights of the {variant} runs"
            if max(hi) == 0.0:
                # Bitwise equal to the exact gradient: nothing to draw on a log scale.
                ax.plot([], [], style, color=color, label=f"{label}: exactly 0 at every epoch")
                continue
            ax.plot(epochs, mean, style, marker="o", markersize=3, color=color, label=label)
            if len(rs) > 1:
                ax.fill_between(epochs, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||g − g_exact|| / ||g_exact||")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        ax.set_title(title.replace(", seeds", ",\nseeds"), fontsize=9)
    return _save(fig, Path(path))


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(
    out: str | os.PathLike[str], log: Callable[[str], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Write the plots, the table and ``summary.json`` of the comparison in ``out`` (see the
    module docstring) and print the table with ``log``.

    Returns:
        The summary (see :func:`summarize`).

    Raises:
        FileNotFoundError: no comparison in ``out``.
    """

    out = Path(out)
    spec = load_spec(out)
    runs = collect(out)
    summary = summarize(runs)
    plain, ode = spec.models
    title = (
        f"{ode} vs {plain}, {spec.method} N_t={spec.n_steps}, {spec.dataset}"
        f"{f' ({spec.subset} training images)' if spec.subset else ''}, seeds {list(spec.seeds)}"
    )
    table = markdown_table(summary)
    text = f"{title}\n\n{table}"
    atomic_write(out / TABLE_NAME, lambda f: f.write(text.encode()))
    blob = json.dumps({"settings": spec.to_dict(), "summary": _finite(summary)}, indent=2) + "\n"
    atomic_write(out / SUMMARY_NAME, lambda f: f.write(blob.encode()))
    if runs:
        plot_curves(runs, out / CURVES_NAME, title)
        plot_gradient_error({v: rs for v, rs in runs.items() if v != "plain"}, out / GRAD_NAME, title)
    if log is not None:
        log(text)
    return summary
