"""The table, CSV and plots of ``anode diagnose`` (:func:`anode_workbench.diagnostics.sweep` results)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from .cases import Case
from .errors import SweepRow, relative_error, round_trip


def print_rows(case: Case, rows: list[SweepRow], header: bool) -> None:
    """Print one case's rows of the table (with the header before the first case)."""
    if header:
        cols = ["case", "method", "N_t", "reconstr.", "bs dL/dy0", "bs dL/dθ", "anode dL/dy0",
                "anode dL/dθ", "s"]
        print(f"{cols[0]:<20} {cols[1]:<8} {cols[2]:>4} " + " ".join(f"{c:>12}" for c in cols[3:8])
              + f" {cols[8]:>6}")
    for r in rows:
        vals = [r.reconstruction, r.errors["backsolve"].y0, r.errors["backsolve"].params,
                r.errors["anode"].y0, r.errors["anode"].params]
        print(f"{case.name:<20} {case.method:<8} {r.n_steps:>4} " + " ".join(f"{v:>12.2e}" for v in vals)
              + f" {r.seconds:>6.1f}", flush=True)


def write_csv(path: Path, cases: list[Case], results: dict[str, list[SweepRow]]) -> None:
    """One line per case and N_t; errors are relative (dimensionless), time in seconds."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "method", "n_steps", "reconstruction", "backsolve_y0", "backsolve_params",
                    "anode_y0", "anode_params", "seconds"])
        for case in cases:
            for r in results[case.name]:
                e = r.errors
                w.writerow([case.name, case.method, r.n_steps, f"{r.reconstruction:.6e}",
                            f"{e['backsolve'].y0:.6e}", f"{e['backsolve'].params:.6e}",
                            f"{e['anode'].y0:.6e}", f"{e['anode'].params:.6e}", f"{r.seconds:.2f}"])


# Exact zeros cannot be drawn on a log axis; they are drawn at this floor.
_FLOOR = 1e-17


def plot_errors(path: Path, cases: list[Case], results: dict[str, list[SweepRow]]) -> None:
    """Three log–log panels against N_t: reconstruction error, dL/dy0 and dL/dθ errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [("reverse-solve reconstruction error", None), ("gradient error, dL/dy0", "y0"),
              ("gradient error, dL/dθ", "params")]
    for k, case in enumerate(cases):
        rows = results[case.name]
        n = [r.n_steps for r in rows]
        color = colors[k % len(colors)]
        for ax, (_, field) in zip(axes, panels):
            if field is None:
                ys = [max(r.reconstruction, _FLOOR) for r in rows]
                ax.loglog(n, ys, "o-", color=color, label=case.name)
                continue
            for name, style in (("backsolve", "o-"), ("anode", "x--")):
                ys = [getattr(r.errors[name], field) for r in rows]
                if all(math.isnan(y) for y in ys):
                    continue
                ax.loglog(n, [max(y, _FLOOR) for y in ys], style, color=color,
                          alpha=1.0 if name == "backsolve" else 0.6)
    for ax, (title, _) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("N_t (steps over [0, T])")
        ax.set_ylabel("relative error")
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, title="case (color)", title_fontsize=7)
    styles = [Line2D([], [], color="k", marker="o", label="backsolve"),
              Line2D([], [], color="k", marker="x", ls="--", alpha=0.6, label="anode")]
    axes[1].legend(handles=styles, fontsize=7, loc="center right")
    fig.suptitle(f"backsolve (solid) vs anode (dashed; exact zeros drawn at {_FLOOR:g}), float64")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_images(path: Path, case: Case, steps) -> None:
    """Originals, z(T), and the initial state recovered by the reverse solve at three N_t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data import CIFAR10_MEAN, CIFAR10_STD

    chosen = sorted({steps[0], steps[len(steps) // 2], steps[-1]})
    rows = [("original", case.y0)]
    for n in chosen:
        final, recovered = round_trip(case.func, case.y0, end_time=case.end_time, method=case.method,
                                      n_steps=n)
        if n == chosen[-1]:
            rows.insert(1, (f"z(T), N_t={n}", final))
        err = relative_error([recovered], [case.y0])
        rows.append((f"recovered, N_t={n}\nrel. err {err:.2g}", recovered))
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64)[:, None, None]
    b = case.y0.shape[0]
    fig, axes = plt.subplots(len(rows), b, figsize=(1.4 * b + 1.4, 1.5 * len(rows)), squeeze=False)
    for i, (label, batch) in enumerate(rows):
        for j in range(b):
            ax = axes[i][j]
            img = (batch[j].double() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(f"CIFAR-10 test images through dz/dt = conv(ReLU(conv(z))) on [0, {case.end_time:g}] "
                 f"({case.method}), then the reverse solve (pixels clipped to [0, 1])", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
