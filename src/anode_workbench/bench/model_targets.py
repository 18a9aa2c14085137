"""Throughput targets of ``anode bench models`` on one GPU.

Measured side by side in one ``anode bench models --device cuda --batch 256`` run on one
NVIDIA H200, bfloat16 autocast and channels-last (the CUDA defaults), image side 32:

* ``resnet18`` (plain) >= 30,000 images/s;
* ``resnet18_ode`` with ``anode/recompute`` >= 11,000 images/s and >= 0.35x ``resnet18``;
* ``sqnxt23_ode`` with ``anode/recompute`` >= 9,000 images/s.

Each is reported with the float32 eager NCHW figure of the same run (the baseline timed
interleaved with it) and the ratio of the two. They are judged on CUDA only, at the target's
batch, image side and settings; elsewhere they are not judged (on CPU not even listed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..accel import Acceleration
from .targets import Target

BATCH, SIZE = 256, 32
THROUGHPUT = (("resnet18", "plain", 30_000.0), ("resnet18_ode", "anode/recompute", 11_000.0),
              ("sqnxt23_ode", "anode/recompute", 9_000.0))
RELATIVE = (("resnet18_ode", "anode/recompute", "resnet18", "plain", 0.35),)
WHERE = f"cuda, batch {BATCH}, bf16 + channels-last"


@dataclass
class ThroughputTarget(Target):
    """A lower bound on images/s (``unit="img/s"``) or on a ratio of two throughputs
    (``unit="x"``), with ``fp32``, the same figure in float32 eager NCHW in the same run."""

    fp32: float | None = None
    unit: str = "img/s"

    @property
    def bound(self) -> str:
        """``">= 30,000 img/s"`` or ``">= 0.35x"``."""
        return f">= {self.low:,.0f} img/s" if self.unit == "img/s" else f">= {self.low:g}x"

    def format(self, value: float | None) -> str:
        """``value`` in the target's unit; ``"not measured"`` for ``None``."""
        if value is None:
            return "not measured"
        return f"{value:,.0f}" if self.unit == "img/s" else f"{value:.2f}x"


def _figure(rows: list[dict], model: str, method: str, key: str) -> float | None:
    for r in rows:
        if r["model"] == model and r["method"] == method and "error" not in r:
            return r.get(key)
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def evaluate(rows: list[dict], device: torch.device | str, acc: Acceleration, batch: int, size: int,
             quick: bool = False) -> tuple[list[ThroughputTarget], str | None]:
    """The targets of the module docstring from one run's rows.

    Returns:
        ``(targets, note)``: on CUDA the targets (not judged, with the reason, when the run's
        batch, image side or settings are not the targets', or with ``quick``) and ``None``;
        elsewhere no targets and a line saying why.
    """
    if torch.device(device).type != "cuda":
        return [], (f"GPU throughput targets ({WHERE}): not judged, this run is on {device}.")
    reasons = [text for wrong, text in (
        (quick, "quick sizes"), (batch != BATCH, f"batch {batch}"), (size != SIZE, f"image side {size}"),
        (not (acc.bf16 and acc.channels_last), "not bf16 + channels-last")) if wrong]
    unjudged = ", ".join(reasons) or None
    found = []
    for model, method, low in THROUGHPUT:
        found.append(ThroughputTarget(
            f"{model} {method}: images/s", _figure(rows, model, method, "images_per_s"), low, float("inf"),
            WHERE, unjudged, _figure(rows, model, method, "fp32_images_per_s")))
    for model, method, other, other_method, low in RELATIVE:
        found.append(ThroughputTarget(
            f"{model} {method} / {other} {other_method}: images/s",
            _ratio(_figure(rows, model, method, "images_per_s"),
                   _figure(rows, other, other_method, "images_per_s")),
            low, float("inf"), WHERE, unjudged,
            _ratio(_figure(rows, model, method, "fp32_images_per_s"),
                   _figure(rows, other, other_method, "fp32_images_per_s")), unit="x"))
    return found, None


def table(targets: list[ThroughputTarget]) -> str:
    """Markdown table: target, measured, float32 eager figure, ratio of the two, bound, met."""
    lines = ["| target | measured | fp32 eager, same run | vs fp32 eager | bound | met |",
             "|---|---:|---:|---:|---|---|"]
    for t in targets:
        vs = _ratio(t.measured, t.fp32)
        if t.unjudged and t.measured is not None:
            met = f"n/a ({t.unjudged})"
        else:
            met = "n/a" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.name} | {t.format(t.measured)} | {t.format(t.fp32) if t.fp32 else '–'} | "
                     f"{'–' if vs is None else f'{vs:.2f}x'} | {t.bound} | {met} |")
    return "\n".join(lines)


def section(targets: list[ThroughputTarget], note: str | None) -> str:
    """The markdown section of the report: a heading and :func:`table`, or the note."""
    return "### GPU throughput targets\n\n" + (note if note else table(targets))
