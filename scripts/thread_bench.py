"""Training-step throughput of ``anode train``'s CPU model under each choice of threads, on
an idle machine and with one competing single-threaded process.

Each measurement runs in a fresh process: ``resnet_ode_tiny`` with the CPU preset's ODE
options (Euler, N_t = 2, anode gradients, recompute), batch 128 of fixed random images, the
training step of ``anode train`` (cross-entropy with label smoothing 0.1, SGD with momentum
0.9 and weight decay 5e-4); the first step is a warm-up, the images per second are those of
the next ``--steps`` steps. The settings:

* ``auto``: the automatic choice of ``anode train`` (:func:`anode_workbench.train.threads.auto_threads`:
  the governor measures the load while the model is built, chooses, and adapts per window);
* ``1``, ``2-passive``: by hand (one thread; two threads with ``OMP_WAIT_POLICY=PASSIVE``);
* ``main``: the behaviour before the automatic choice: PyTorch's default number of threads
  (one per core) and wait policy, nothing adapted; also two threads by hand. With
  ``--main-src DIR`` it runs the code of another checkout's ``src/``.

Conditions: ``idle``; ``busy``, with ``python -c "while True: pass"`` running from before the
run starts; ``late``, the competing process started after a quarter of the steps (``auto``
and ``main`` only). The settings alternate within each repeat. Prints one line per run and a
table of medians; ``--json FILE`` writes every run.

Usage (from the repository root):
    PYTHONPATH=src python scripts/thread_bench.py [--steps 40] [--repeats 3]
        [--conditions idle,busy,late] [--main-src DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SPIN = [sys.executable, "-c", "while True: pass"]
MODES = {"idle": ("auto", "1", "2-passive", "main"), "busy": ("auto", "1", "2-passive", "main"),
         "late": ("auto", "main")}


def child(mode: str, steps: int, compete_from: int | None) -> dict:
    """One measurement in this process (run with the environment the parent prepared)."""
    import torch
    import torch.nn.functional as F

    governor = None
    if mode == "auto":
        from anode_workbench.train.threads import auto_threads

        governor, why = auto_threads(log=lambda msg: print(msg, file=sys.stderr))
    elif mode != "main":
        torch.set_num_threads(int(mode.split("-")[0]))
    import anode.models as M

    torch.manual_seed(0)
    model = M.create("resnet_ode_tiny", num_classes=10, method="euler", n_steps=2, gradient="anode",
                     schedule="recompute")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    if governor is not None:
        governor.start()
    first_threads = torch.get_num_threads()
    model.train()
    competitor, start = None, 0.0
    try:
        for i in range(steps + 1):
            if i == 1:
                start = time.perf_counter()
            if compete_from is not None and i == compete_from + 1:
                competitor = subprocess.Popen(SPIN)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if governor is not None:
                governor.step(128)
        seconds = time.perf_counter() - start
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return {"mode": mode, "img_s": 128 * steps / seconds, "seconds": seconds, "first_threads": first_threads,
            "last_threads": torch.get_num_threads(), "switches": governor.switches if governor else []}


def measure(mode: str, condition: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    if mode == "main" and args.main_src:
        src = args.main_src
    env["PYTHONPATH"] = src
    if mode == "2-passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps)]
    if condition == "late":
        cmd += ["--compete-from", str(args.steps // 4)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(condition=condition, load_1min=os.getloadavg()[0], log=proc.stderr.strip())
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--conditions", default="idle,busy")
    p.add_argument("--main-src", default=None, help="src/ of the checkout that the main setting runs")
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--compete-from", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.compete_from)))
        return 0
    rows = []
    for condition in args.conditions.split(","):
        competitor = subprocess.Popen(SPIN) if condition == "busy" else None
        try:
            time.sleep(2.0 if competitor else 0.0)
            print(f"# {condition}: load average {os.getloadavg()[0]:.2f} at {time.strftime('%H:%M:%S')}",
                  flush=True)
            for rep in range(args.repeats):
                for mode in MODES[condition]:
                    row = measure(mode, condition, args)
                    rows.append(row)
                    print(f"{condition:5} {rep} {mode:10} {row['img_s']:6.0f} img/s  threads "
                          f"{row['first_threads']}->{row['last_threads']}  switches {row['switches']}  "
                          f"load {row['load_1min']:.2f}", flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    print("\ncondition | auto | 1 thread | 2 passive | main (2 threads) | auto / best by hand | auto / main")
    for condition in args.conditions.split(","):
        mine = [r for r in rows if r["condition"] == condition]
        med = {m: statistics.median(r["img_s"] for r in mine if r["mode"] == m) for m in MODES[condition]}
        best = max(v for m, v in med.items() if m != "auto")
        cells = " | ".join(f"{med[m]:.0f}" if m in med else "-" for m in ("auto", "1", "2-passive", "main"))
        print(f"{condition} | {cells} | {med['auto'] / best:.2f} | {med['auto'] / med['main']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
