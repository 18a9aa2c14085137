"""Ratios, exactness verdicts and tables of ``anode bench models``.

An exact gradient method (anode) computes the same gradient as ``direct`` in exact
arithmetic, but in another order, so the two round differently. In float32 on a CPU the
difference is at rounding level (here: 0.0, the same operations in the same order). With
TF32 convolutions (PyTorch's default on CUDA) or under bfloat16 autocast, every convolution
rounds its inputs to a 10-bit or 7-bit mantissa, and a rounding-level difference early in the
network can grow far beyond rounding level by the end of the backward (``docs/benchmarks.md``
has a float32 GPU run where it did, and where it vanished with deterministic cuDNN and TF32
off). Comparing against a fixed tolerance would call that a wrong gradient.

So the same run measures a noise floor: ``direct``'s gradient once more, in a fresh process
(which picks its own cuDNN algorithms), on the same batch in reverse order. In exact
arithmetic that is the same gradient (the loss is a mean over the batch, BatchNorm's
statistics do not depend on the order); in floating point every sum over the batch rounds
differently, and the difference shows how far rounding alone moves the gradient under the
run's settings. The verdict of an exact method, from its relative difference ``d`` to
``direct`` and the floor ``f`` (both relative 2-norms of the whole parameter gradient):

* ``exact``: ``d <= tol`` (1e-5 by default), as without a floor;
* ``exact (TF32)``, ``exact (bf16)`` or ``exact (fp32)`` (what rounds: TF32 convolutions on
  CUDA in float32, bfloat16 autocast, or float32 itself): ``d <= 10 f`` and ``d <= 0.05``.
  The floor is one sample of rounding noise; a method that reorders other sums than the
  reversed batch does (anode reorders the backward pass, the reversal moves the forward pass
  too) has noise of the same kind but not the same size, and floors of one model differ by
  orders of magnitude between batch sizes, hence the factor ten. A wrong gradient (another
  initialization, or backsolve through BatchNorm) is off by 0.6 to 1.7 in these benchmarks,
  far above 0.05;
* ``inconclusive (...)``: ``0.05 < d <= 10 f``: rounding alone moves the gradient by more than
  0.005, so a difference this large could be rounding or a wrong gradient. Under bfloat16
  autocast (8 significant bits) the floor is large: 0.004 to 0.8 for the small models at
  initialization on CPU, depending on batch and seed; anode's difference was 4e-4 to 1e-3;
* ``NO``: ``d > 10 f`` (or above ``tol`` when there is no floor): not an exact gradient of the
  network that ran.

With ``--deterministic`` (TF32 off, deterministic cuDNN) anode equals direct bit for bit.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ..accel import Acceleration

COLUMNS = ["model", "parameters", "method", "exact_method", "equal", "grad_rel_diff", "noise_floor",
           "verdict", "peak_bytes", "mem_vs_direct", "time_s", "time_vs_direct", "images_per_s",
           "fp32_time_s", "fp32_images_per_s", "speedup_vs_fp32", "seconds", "cpu_seconds", "batch",
           "error", "fp32_error"]
FLOOR_MULTIPLE = 10
"""A difference up to this multiple of the noise floor is rounding (see the module docstring)."""
CAP = 0.05
"""A larger difference is never called exact, whatever the floor."""


def describe(acc: Acceleration) -> str:
    """The settings in words, e.g. ``"bf16 autocast, channels-last, eager"``."""
    parts = ["bf16 autocast" if acc.bf16 else "fp32", "channels-last" if acc.channels_last else "NCHW",
             "torch.compile" if acc.compile else "eager"]
    return ", ".join(parts + (["deterministic"] if acc.deterministic else []))


def rounding(acc: Acceleration, device: torch.device | str) -> str:
    """What rounds the gradient beyond float32 under ``acc`` on ``device``: ``"bf16"``,
    ``"TF32"`` (float32 on CUDA, where PyTorch lets cuDNN convolutions use TF32 unless
    deterministic), or ``"fp32"``."""
    if acc.bf16:
        return "bf16"
    return "TF32" if torch.device(device).type == "cuda" and not acc.deterministic else "fp32"


def verdict(diff: float, floor: float | None, tol: float, source: str) -> str:
    """The exactness verdict of the module docstring for a relative difference ``diff`` to
    ``direct``, the noise floor ``floor`` (``None``: not measured) and the tolerance ``tol``;
    ``source`` names what rounds (:func:`rounding`)."""
    if diff <= tol:
        return "exact"
    if floor is None or diff > FLOOR_MULTIPLE * floor:
        return "NO"
    return f"exact ({source})" if diff <= CAP else f"inconclusive ({source})"


def complete(rows: list[dict], clock: str, tol: float, acc: Acceleration, device: torch.device | str) -> None:
    """Add, in place, what follows from the measurements: ``images_per_s``, the ratios to
    ``direct`` of the same model, the float32 eager figures and ``speedup_vs_fp32`` (where the
    baseline was timed), and each exact method's ``verdict``.

    Args:
        rows: from :func:`anode_workbench.bench.models.run_models`.
        clock: ``"wall"`` or ``"cpu"``: which time is ``time_s`` (and ``fp32_time_s``).
        tol, acc, device: as for :func:`verdict` and :func:`rounding`.
    """
    key = "cpu_seconds" if clock == "cpu" else "seconds"
    source = rounding(acc, device)
    for r in rows:
        if "time_s" in r:
            r["images_per_s"] = r["batch"] / r["time_s"]
            if f"fp32_{key}" in r:
                r["fp32_time_s"] = r[f"fp32_{key}"]
                r["fp32_images_per_s"] = r["batch"] / r["fp32_time_s"]
                r["speedup_vs_fp32"] = r["fp32_time_s"] / r["time_s"]
        ref = next((d for d in rows if d["model"] == r["model"] and d["method"] == "direct"
                    and "time_s" in d), None)
        if ref and "time_s" in r:
            r["mem_vs_direct"] = r["peak_bytes"] / ref["peak_bytes"] if ref["peak_bytes"] else float("nan")
            r["time_vs_direct"] = r["time_s"] / ref["time_s"]
        if r["exact_method"] and "grad_rel_diff" in r:
            r["verdict"] = verdict(r["grad_rel_diff"], r.get("noise_floor"), tol, source)


def _e(value) -> str:
    return "–" if value is None else f"{value:.1e}"


def table(rows: list[dict]) -> str:
    """Markdown table: model, parameters, method, verdict, gradient difference to direct,
    noise floor, peak, ratios to direct, time, images/s, speed-up over float32 eager."""
    lines = ["| model | parameters | gradient | exact | grad. rel. diff. | noise floor | peak MiB "
             "| peak vs direct | s / step | time vs direct | images/s | vs fp32 eager |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['model']}` | | {r['method']} | failed: {r['error'][:60]} | | | | | | | | |")
            continue
        if r["method"] == "plain":
            exact = "–"
        else:
            exact = r.get("verdict", "not compared") if r["exact_method"] else "approx."
        mem = f"{r['mem_vs_direct']:.2f}x" if "mem_vs_direct" in r else "–"
        tim = f"{r['time_vs_direct']:.2f}x" if "time_vs_direct" in r else "–"
        fast = f"{r['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in r else "–"
        lines.append(f"| `{r['model']}` | {r['parameters']:,} | {r['method']} | {exact} | "
                     f"{_e(r.get('grad_rel_diff'))} | {_e(r.get('noise_floor'))} | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {mem} | {r['time_s']:.3g} | {tim} | "
                     f"{r['images_per_s']:,.1f} | {fast} |")
    return "\n".join(lines)


def write_results(rows: list[dict], out: Path, header: str, settings: dict, targets: str = "") -> str:
    """Write ``models_results.md`` (``header``, :func:`table` and ``targets``, markdown),
    ``models_results.csv`` (:data:`COLUMNS`) and ``models_results.json`` (``settings`` and
    the rows) into ``out``; return the markdown."""
    md = header + "\n\n" + table(rows) + (f"\n\n{targets}" if targets else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "models_results.md").write_text(md + "\n")
    with open(out / "models_results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "models_results.json").write_text(json.dumps({**settings, "rows": rows}, indent=1))
    return md


def failures(rows: list[dict]) -> list[tuple[dict, str]]:
    """``(row, why)`` of every failed measurement (the float32 eager baseline's included) and
    every exact method whose verdict is ``NO`` or whose gradient was not compared with
    ``direct``'s."""
    bad = []
    for r in rows:
        if "error" in r or "fp32_error" in r:
            bad.append((r, r.get("error") or f"float32 eager baseline: {r['fp32_error']}"))
        elif r["exact_method"] and r["method"] != "plain" and r.get("verdict", "NO") == "NO":
            why = "gradient not compared with direct"
            if "grad_rel_diff" in r:
                why = (f"gradient differs from direct by {r['grad_rel_diff']:.2e}, noise floor "
                       f"{_e(r.get('noise_floor'))}")
            bad.append((r, why))
    return bad
