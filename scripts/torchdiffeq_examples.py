"""Run a torchdiffeq example script twice, side by side: with torchdiffeq, and with its
public functions swapped for anode.dropin's (the shim of ``torchdiffeq_suite.py``).

The example files are torchdiffeq's (``examples/`` of its repository); they are not part of
this project: pass their paths. Each run is a fresh process, alternating between the two
implementations for ``--rounds`` rounds; the report gives each run's last loss line, wall
time and peak resident memory, and the anode/torchdiffeq ratios of the medians.

Usage::

    python scripts/torchdiffeq_examples.py EXAMPLE.py [--rounds 3] [--loss-regex RE] -- ARGS...
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torchdiffeq_suite import SHIM, real_torchdiffeq  # noqa: E402

# peak resident memory of the child, in KiB, printed by a wrapper around the example
WRAPPER = """\
import os, resource, runpy, sys
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python EXAMPLE.py` would
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("__peak_kib__", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def run(example: Path, args: list[str], shim: Path | None, wrapper: Path, loss_re: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")
    if shim is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(shim), *filter(None, [os.environ.get("PYTHONPATH")])])
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(wrapper), str(example), *args], env=env,
                         capture_output=True, text=True, cwd=example.parent)
    wall = time.perf_counter() - start
    text = out.stdout + out.stderr
    peak = re.findall(r"__peak_kib__ (\d+)", text)
    losses = [line for line in text.splitlines() if re.search(loss_re, line)]
    peak_mib = int(peak[-1]) / 1024 if peak else float("nan")
    return {"ok": out.returncode == 0, "wall": wall, "peak_mib": peak_mib,
            "loss": losses[-1].strip() if losses else "", "tail": text.strip().splitlines()[-3:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loss-regex", default=r"(?i)loss|passed|failed")
    argv = sys.argv[1:] if argv is None else list(argv)
    # everything after "--" goes to the example (argparse would bind it to nothing once
    # the example's path has been read)
    split = argv.index("--") if "--" in argv else len(argv)
    a = parser.parse_args(argv[:split])
    a.args = argv[split + 1:]
    example = a.example.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shim = tmp / "shim" / "torchdiffeq"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text(SHIM.format(real=str(real_torchdiffeq())))
        wrapper = tmp / "wrap.py"
        wrapper.write_text(WRAPPER)
        results: dict[str, list[dict]] = {"torchdiffeq": [], "anode": []}
        for _ in range(a.rounds):
            for name, path in (("torchdiffeq", None), ("anode", tmp / "shim")):
                r = run(example, a.args, path, wrapper, a.loss_regex)
                results[name].append(r)
                status = "ok" if r["ok"] else "FAILED: " + " | ".join(r["tail"])
                print(f"{name:12s} {r['wall']:7.1f} s {r['peak_mib']:8.1f} MiB  {r['loss']}  [{status}]",
                      flush=True)
    med = {k: (statistics.median(r["wall"] for r in v), statistics.median(r["peak_mib"] for r in v))
           for k, v in results.items()}
    print(f"{example.name}: anode/torchdiffeq time {med['anode'][0] / med['torchdiffeq'][0]:.2f}x, "
          f"peak resident memory {med['anode'][1] / med['torchdiffeq'][1]:.2f}x (medians of {a.rounds})")
    return 0 if all(r["ok"] for v in results.values() for r in v) else 1


if __name__ == "__main__":
    sys.exit(main())
