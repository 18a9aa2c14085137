"""Page faults and CPU time of one forward+backward of ``anode/store`` and the checkpoint loop on
a frontier workload (W3 by default), under glibc's default allocator settings and with its
heap never trimmed: the measurement behind "store against checkpoint per step" in
``docs/benchmarks.md``.

Each measurement runs in a new interpreter (its own heap, as a user's process has): it builds
the workload (:func:`anode_workbench.bench.frontier_workloads.build`, one thread), runs two
warm-up steps, then ``--steps`` timed steps, and reports the median CPU time and the median
count of minor page faults (``resource.getrusage(...).ru_minflt``) per step. ``--big MB``
first allocates and frees one block of that size, which raises glibc's trim threshold: who
pays the faults depends on such earlier allocations, not on the method. Methods and settings
alternate within each of ``--repeats`` rounds; prints one line per measurement and the medians.

Usage (from the repository root):
    PYTHONPATH=src python scripts/page_faults.py [--workload W3] [--repeats 3] [--steps 3] [--big 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from anode_workbench.bench.measure import ALLOCATORS

METHODS = {"anode/store": dict(method="anode", schedule="store"), "checkpoint": dict(method="checkpoint")}

_CHILD = r"""
import json, resource, statistics, sys, time
import torch
from anode_workbench.bench import frontier_workloads as fw
workload, options, steps, big = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
if big:
    block = torch.ones(big * 2**20 // 4)
    del block
step = fw.build(workload, **options)[1]
step(); step()
times, faults = [], []
for _ in range(steps):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.process_time()
    step()
    times.append(time.process_time() - t0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"cpu_s": statistics.median(times), "faults": statistics.median(faults)}))
"""


def measure(workload: str, options: dict, allocator: str, steps: int, big: int) -> dict:
    """One measurement in a new interpreter with the named allocator settings."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **ALLOCATORS[allocator]}
    out = subprocess.run([sys.executable, "-c", _CHILD, workload, json.dumps(options), str(steps), str(big)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W3", choices=["W2", "W3"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--big", type=int, default=0, help="MB allocated and freed before the warm-up")
    args = parser.parse_args()
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.repeats):
        for allocator in ("default", "reuse"):
            for label, options in (METHODS.items() if r % 2 == 0 else reversed(METHODS.items())):
                res = measure(args.workload, options, allocator, args.steps, args.big)
                results.setdefault((label, allocator), []).append(res)
                print(f"round {r}: {label:12s} {allocator:8s} {res['cpu_s']:.3f} s  "
                      f"{res['faults']:.0f} faults", flush=True)
    print(f"\n{args.workload}, medians of {args.repeats} rounds "
          "(CPU time and minor faults per forward+backward):")
    for (label, allocator), runs in results.items():
        print(f"  {label:12s} {allocator:8s} {statistics.median(x['cpu_s'] for x in runs):.3f} s  "
              f"{statistics.median(x['faults'] for x in runs):8.0f} faults")


if __name__ == "__main__":
    main()
