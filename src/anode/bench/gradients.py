"""Peak memory and time of direct vs anode/store vs anode/recompute against N_t.

Run: ``python -m anode.bench.gradients [--quick] [--out DIR]``. One ODE block with the
paper's ResNet ODE function (conv–BN–ReLU twice), midpoint method; each configuration in a
fresh process; ratios to direct at the same N_t, measured in one run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .measure import run_isolated

METHODS = [("direct", "recompute"), ("anode", "store"), ("anode", "recompute")]


def sweep(steps: list[int], **workload) -> list[dict]:
    """Measure every method at every N_t; one fresh process per configuration."""
    rows = []
    for n in steps:
        for gradient, schedule in METHODS:
            res = run_isolated("anode.bench.workloads:ode_stack", gradient=gradient,
                               schedule=schedule, n_steps=n, **workload)
            rows.append({"n_steps": n, "method": f"{gradient}/{schedule}" if gradient == "anode"
                         else gradient, **res})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table with memory in states and MiB, and ratios to direct."""
    direct = {r["n_steps"]: r for r in rows if r["method"] == "direct"}
    lines = ["| N_t | method | peak MiB | peak / state | peak vs direct | time s | time vs direct "
             "| f-evals | grad norm |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = direct[r["n_steps"]]
        lines.append(
            f"| {r['n_steps']} | {r['method']} | {r['peak_bytes'] / 2**20:.1f} | "
            f"{r['peak_bytes'] / r['state_bytes']:.1f} | {r['peak_bytes'] / d['peak_bytes']:.2f}x | "
            f"{r['seconds']:.3f} | {r['seconds'] / d['seconds']:.2f}x | {r['function_evaluations']} | "
            f"{r['grad_norm']:.6g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N_t in {1, 2, 4}, tiny input")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json and table.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    steps = [1, 2, 4] if args.quick else [1, 2, 4, 8, 16, 32]
    workload = dict(channels=16, batch=8, size=16) if args.quick else dict(channels=32, batch=16, size=32)
    rows = sweep(steps, device=args.device, **workload)
    md = table(rows)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gradients.json").write_text(json.dumps({"workload": workload, "rows": rows}, indent=1))
        (args.out / "gradients.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
