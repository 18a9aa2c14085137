"""Where a comparison keeps its files, read by the runner and the report alike.

A comparison folder ``OUT`` holds ``compare.json`` (the settings), one ordinary training run
folder per variant and seed, ``OUT/runs/<variant>-seed<k>`` (with the training loop's
``metrics.jsonl``, and ``diverged.json`` when its loss became NaN/inf), and the report:
``compare_curves.png``, ``compare_gradient_error.png``, ``compare_table.md`` and
``summary.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..train.metrics import JSONL_NAME

SPEC_NAME = "compare.json"
DIVERGED_NAME = "diverged.json"
CURVES_NAME = "compare_curves.png"
GRAD_NAME = "compare_gradient_error.png"
TABLE_NAME = "compare_table.md"
SUMMARY_NAME = "summary.json"


def run_folder(out: str | os.PathLike[str], variant: str, seed: int) -> Path:
    """``out/runs/<variant>-seed<seed>``."""
    return Path(out) / "runs" / f"{variant}-seed{seed}"


def read_metrics(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-epoch records of the finished epochs of a run folder (``[]`` before the first)."""
    path = Path(folder) / JSONL_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def diverged_epoch(folder: str | os.PathLike[str]) -> int | None:
    """The epoch whose training loss became NaN/inf, or ``None`` when the run did not diverge."""
    path = Path(folder) / DIVERGED_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("epoch")
