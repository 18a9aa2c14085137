"""Plots of the memory and speed sweep (matplotlib, Agg backend, PNG files).

* ``bench_memory_vs_nt.png``: peak memory (MiB) against N_t at the N_t sweep's fixed L;
* ``bench_memory_vs_layers.png``: peak memory against L at the L sweep's fixed N_t;
* ``bench_time_ratio.png``: time relative to torchdiffeq ``odeint_adjoint`` (or to
  ``direct`` when torchdiffeq was not measured) against N_t and against L.
"""

from __future__ import annotations

from pathlib import Path

from .suite import TDQ_ADJOINT
from .targets import sweep_axes


def _series(rows, method, axis, fixed_key, fixed, value):
    pts = sorted((r[axis], value(r)) for r in rows
                 if r["method"] == method and r[fixed_key] == fixed and "error" not in r)
    return [p[0] for p in pts], [p[1] for p in pts]


def _integer_ticks(ax, values) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def _style(method: str) -> dict:
    if method.startswith("torchdiffeq"):
        return {"linestyle": "--", "marker": "s"}
    if method in ("checkpoint", "backsolve"):
        return {"linestyle": ":", "marker": "^"}
    return {"linestyle": "-", "marker": "o"}


def plot_all(rows: list[dict], out: Path, title: str = "") -> list[Path]:
    """Write the three PNG files into ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if "error" not in r]
    methods = list(dict.fromkeys(r["method"] for r in measured))
    l_fixed, n_fixed = sweep_axes(measured)
    paths = []

    for axis, fixed_key, fixed, name, label in (
        ("n_steps", "layers", l_fixed, "bench_memory_vs_nt.png", "N_t (steps per block)"),
        ("layers", "n_steps", n_fixed, "bench_memory_vs_layers.png", "L (blocks)"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for m in methods:
            xs, ys = _series(measured, m, axis, fixed_key, fixed, lambda r: r["peak_bytes"] / 2**20)
            if xs:
                ax.plot(xs, ys, label=m, **_style(m))
        ax.set_xscale("log", base=2)
        _integer_ticks(ax, [r[axis] for r in measured if r[fixed_key] == fixed])
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("peak memory of forward+backward (MiB)")
        fixed_name = "L" if fixed_key == "layers" else "N_t"
        ax.set_title(f"{title}  ({fixed_name} = {fixed})".strip(), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)

    reference = TDQ_ADJOINT if TDQ_ADJOINT in methods else "direct"
    key = "time_vs_adjoint" if reference == TDQ_ADJOINT else "time_vs_direct"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, (axis, fixed_key, fixed, label) in zip(axes, (
        ("n_steps", "layers", l_fixed, f"N_t (L = {l_fixed})"),
        ("layers", "n_steps", n_fixed, f"L (N_t = {n_fixed})"),
    )):
        for m in methods:
            xs, ys = _series(measured, m, axis, fixed_key, fixed, lambda r: r.get(key, float("nan")))
            if xs:
                ax.plot(xs, ys, label=m, **_style(m))
        ax.set_xscale("log", base=2)
        _integer_ticks(ax, [r[axis] for r in measured if r[fixed_key] == fixed])
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"time of forward+backward / {reference}")
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "bench_time_ratio.png", dpi=120)
    plt.close(fig)
    paths.append(out / "bench_time_ratio.png")
    return paths
