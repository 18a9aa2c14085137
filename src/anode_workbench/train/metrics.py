"""Per-epoch metrics of a run: JSONL and CSV files and PNG plots in the run folder.

Each finished epoch adds one record (a flat dict). The checkpoint holds the full list and is
the source of truth; :func:`write_metrics` rewrites ``metrics.jsonl``, ``metrics.csv`` and
``curves.png`` (loss and accuracy against the epoch) from it, each atomically, so that after
a kill and a resume the files agree with the checkpoint.

Keys written by the training loop (units in the name or stated here):

* ``epoch``: 1-based number of the finished epoch;
* ``train_loss``, ``train_acc``: mean cross-entropy (nats) and accuracy (fraction in [0, 1])
  over the epoch's training batches, measured during training (weights changing,
  augmentation on);
* ``test_loss``, ``test_acc``: plain cross-entropy and accuracy on the test set after the
  epoch, weights fixed; ``test_images``: how many test images they cover (fewer than the
  run's test set after the epochs before the last when ``epoch_test_subset`` is set);
* ``lr``: mean learning rate of the epoch's steps (the epoch's rate, for schedules that
  change it once per epoch);
* ``train_time_s``: wall time of the epoch's training steps; ``epoch_time_s``: wall time of
  the whole epoch including evaluation and callbacks, excluding the checkpoint write;
* ``images_per_s``: training images processed per second by all processes together;
* ``threads``: PyTorch's intra-op threads of rank 0's process at the end of the epoch
  (:func:`torch.get_num_threads`; with ``threads="auto"`` the number may change during it);
* ``peak_memory_mb``: on CUDA, the allocator's peak during the epoch on rank 0
  (``torch.cuda.max_memory_allocated``, MiB); on CPU, the peak resident set size of rank 0's
  process during the epoch (``VmHWM`` after a reset, MiB; it includes the dataset and the
  libraries, unlike the CUDA figure);
* keys returned by ``on_epoch_end`` callbacks.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write

__all__ = ["CpuPeakMemory", "curves_figure", "plot_metrics", "write_metrics"]

JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
PLOT_NAME = "curves.png"


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _columns(records: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in records:
        cols.extend(k for k in r if k not in cols)
    return cols


def write_metrics(
    run_dir: str | os.PathLike[str],
    records: Sequence[dict[str, Any]],
    plots: bool = True,
    title: str | None = None,
) -> None:
    """Write ``metrics.jsonl`` (one JSON object per epoch), ``metrics.csv`` (a header with
    the union of keys in first-seen order; empty cells for missing keys) and, with
    ``plots``, ``curves.png`` (see :func:`plot_metrics`, which gets ``title``) into
    ``run_dir``."""
    run_dir = Path(run_dir)
    lines = "".join(json.dumps({k: _json_value(v) for k, v in r.items()}) + "\n" for r in records)
    atomic_write(run_dir / JSONL_NAME, lambda f: f.write(lines.encode()))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(records), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write(run_dir / CSV_NAME, lambda f: f.write(buf.getvalue().encode()))
    if plots and records:
        plot_metrics(run_dir, records, title=title)


def _test_label(records: Sequence[dict[str, Any]], key: str) -> str:
    label = key.replace("_", " ")
    sizes = [r.get("test_images") for r in records if r.get("test_images")]
    if len(set(sizes)) > 1:
        # Epochs evaluated on a part of the test set: say so next to the curve.
        label += f" ({min(sizes)} images; last: {sizes[-1]})"
    return label


def plot_metrics(
    run_dir: str | os.PathLike[str], records: Sequence[dict[str, Any]], title: str | None = None
) -> Path:
    """Draw :func:`curves_figure` into ``run_dir/curves.png`` (atomically) with matplotlib's
    Agg renderer (no display needed). ``title`` defaults to the run folder's name.

    Returns:
        The path written.
    """
    fig = curves_figure(records, title if title is not None else Path(run_dir).resolve().name)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    data = buf.getvalue()
    return atomic_write(Path(run_dir) / PLOT_NAME, lambda f: f.write(data))


def curves_figure(records: Sequence[dict[str, Any]], title: str = ""):
    """Loss (training and test) and accuracy (training and test) against the epoch, side by
    side, under ``title`` (e.g. the run's name and model); the epoch axes have whole-number
    ticks only. Test curves evaluated partly on a subset of the test set say so in their
    legend.

    Returns:
        A :class:`matplotlib.figure.Figure` (Agg canvas attached).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title)
    panels = (
        ("Loss", "cross-entropy (nats)", ("train_loss", "test_loss"), 1.0),
        ("Accuracy", "accuracy (%)", ("train_acc", "test_acc"), 100.0),
    )
    for ax, (heading, ylabel, keys, scale) in zip(fig.subplots(1, 2), panels):
        for key in keys:
            pts = [(e, r[key] * scale) for e, r in zip(epochs, records) if r.get(key) is not None]
            if pts:
                label = _test_label(records, key) if key.startswith("test") else key.replace("_", " ")
                ax.plot(*zip(*pts), marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(heading)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return fig


class CpuPeakMemory:
    """Peak resident set size of this process between :meth:`reset` and :meth:`peak_bytes`.

    Uses Linux's ``VmHWM`` (reset by writing ``5`` to ``/proc/self/clear_refs``); elsewhere,
    or when the reset is not permitted, it falls back to the peak since the process started
    (``resource.getrusage``), and :attr:`since_reset` is false.
    """

    def __init__(self) -> None:
        self.since_reset = False

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.since_reset = True
        except OSError:
            self.since_reset = False

    def peak_bytes(self) -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
