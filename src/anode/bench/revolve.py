"""Peak memory, function evaluations and time of revolve(s) against direct, store, recompute.

Run: ``python -m anode.bench.revolve [--quick] [--out docs]``. One ODE block with the ANODE
paper's ResNet ODE function (conv–BN–ReLU twice, :class:`anode.ConvODEFunc`), N_t = 64 steps
by default; each configuration runs in a fresh process (:func:`~anode.bench.measure.run_isolated`),
memory by :func:`~anode.bench.measure.peak_memory`, time by
:func:`~anode.bench.measure.median_times`; every figure is reported as a ratio to direct
autograd measured in the same run. On CPU the time compared is the process's CPU time with
one thread, which other jobs on a shared machine inflate far less than the wall time (both
are recorded); on CUDA it is the wall time. ``--out DIR`` writes ``DIR/img/revolve_results.json``,
``DIR/img/revolve_table.md`` and the plot ``DIR/img/revolve_tradeoff.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import anode

from .measure import median_times, peak_memory, run_isolated

SNAPSHOTS = [1, 2, 4, 8, 16, 64]
WORKLOAD = dict(n_steps=64, method="midpoint", channels=16, batch=4, size=16)
QUICK = dict(n_steps=8, method="midpoint", channels=4, batch=2, size=8)


def one_block(*, gradient: str, schedule: str = "recompute", schedule_options: dict | None = None,
              n_steps: int = 64, method: str = "midpoint", channels: int = 16, batch: int = 4,
              size: int = 16, device: str = "cpu", repeats: int = 3, seed: int = 0,
              threads: int = 1) -> dict:
    """Forward+backward of one ODE block: peak memory (bytes), median time (s), evaluations.

    Input ``[batch, channels, size, size]`` float32; loss = sum of squares of the output.
    Meant to run in a fresh process (see :func:`run_isolated`).

    Returns:
        ``peak_bytes``, ``seconds`` (median wall time), ``cpu_seconds`` (median CPU time of
        the process), ``state_bytes`` (one state), ``function_evaluations``
        (calls of the ODE function in one forward+backward, counted by a hook),
        ``recomputed_steps``, ``schedule`` (the name the solve recorded) and ``grad_norm``
        (of the parameters, to show that the exact methods agree).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    func = anode.ConvODEFunc(channels)
    options = schedule_options or {}
    block = anode.ODEBlock(func, n_steps=n_steps, method=method, gradient=gradient,
                           schedule=schedule, **options).to(dev)
    x = torch.randn(batch, channels, size, size, device=dev)
    calls = [0]
    func.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def step():
        block.zero_grad(set_to_none=True)
        block(x).square().sum().backward()

    step()  # warm-up: one-time allocations (kernels, workspaces, plans) are not the schedule's
    block.zero_grad(set_to_none=True)
    block.stats.reset()
    calls[0] = 0
    peak = peak_memory(step, dev)
    evals, recomputed = calls[0], block.stats.recomputed_steps
    grad_norm = torch.sqrt(sum(p.grad.double().square().sum() for p in block.parameters())).item()
    times = median_times(step, dev, warmup=0, repeats=repeats)
    return {
        "peak_bytes": peak,
        "seconds": times["wall"],
        "cpu_seconds": times["cpu"],
        "state_bytes": x.numel() * x.element_size(),
        "function_evaluations": evals,
        "recomputed_steps": recomputed,
        "schedule": block.stats.schedule,
        "grad_norm": grad_norm,
    }


def configurations(snapshots: list[int]) -> list[tuple[str, str, dict]]:
    """``(label, gradient, schedule options)`` of every configuration, direct first."""
    out = [("direct", "direct", {}), ("store", "anode", {"schedule": "store"}),
           ("recompute", "anode", {"schedule": "recompute"})]
    out += [(f"revolve({s})", "anode", {"schedule": "revolve", "schedule_options": {"snapshots": s}})
            for s in snapshots]
    return out


def sweep(snapshots: list[int], workload: dict, device: str, repeats: int) -> list[dict]:
    """Measure every configuration, each in a fresh process; rows in :func:`configurations` order."""
    rows = []
    for label, gradient, options in configurations(snapshots):
        res = run_isolated("anode.bench.revolve:one_block", gradient=gradient, device=device,
                           repeats=repeats, **options, **workload)
        rows.append({"label": label, "device": device, **res})
        print(json.dumps(rows[-1]), flush=True)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N_t = 8, tiny input, s in {1, 2, 4, 8}")
    parser.add_argument("--out", type=Path, default=None, help="folder; results go to OUT/img/revolve_*")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    args = parser.parse_args(argv)
    workload = dict(QUICK if args.quick else WORKLOAD)
    snapshots = [1, 2, 4, 8] if args.quick else SNAPSHOTS
    rows = sweep(snapshots, workload, args.device, args.repeats)
    md = table(rows)
    print(md)
    if args.out:
        img = args.out / "img"
        img.mkdir(parents=True, exist_ok=True)
        (img / "revolve_results.json").write_text(
            json.dumps({"workload": workload, "device": args.device, "rows": rows}, indent=1)
        )
        (img / "revolve_table.md").write_text(md + "\n")
        title = (f"one ODE block, ConvODEFunc({workload['channels']}), batch {workload['batch']}, "
                 f"{workload['size']}x{workload['size']}, {workload['method']}, "
                 f"N_t = {workload['n_steps']}, {args.device}")
        plot(rows, img / "revolve_tradeoff.png", title)


if __name__ == "__main__":
    main()
