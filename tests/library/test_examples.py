"""The examples run (with tiny settings) and do what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cnf_2d_trains_and_writes_the_density_plot(tmp_path):
    cnf_2d = _load("cnf_2d")
    result = cnf_2d.main(["--steps", "30", "--batch", "128", "--hidden", "16", "--lr", "2e-2",
                          "--rtol", "1e-3", "--atol", "1e-3", "--resolution", "24", "--out", str(tmp_path)])
    png = tmp_path / "cnf_2d.png"
    assert result["png"] == png and png.read_bytes().startswith(PNG_MAGIC)
    losses = result["losses"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    assert (tmp_path / "cnf_2d_losses.csv").read_text().count("\n") == 31
