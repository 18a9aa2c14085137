"""``anode bench models`` under execution settings: bf16 autocast and channels-last on CPU,
the float32 eager baseline timed in the same run, the noise floor and the exactness verdicts,
``--deterministic``, and the GPU throughput targets (judged from made-up rows here)."""

from __future__ import annotations

import csv
import json

import pytest

from anode_workbench.accel import Acceleration
from anode_workbench.bench import model_targets
from anode_workbench.bench import models as bench_models
from anode_workbench.bench.models_report import failures, verdict
from anode_workbench.cli import main


def _rows(path):
    with open(path / "models_results.csv") as f:
        return {r["method"]: r for r in csv.DictReader(f)}


def test_verdicts_against_the_noise_floor():
    assert verdict(0.0, None, 1e-5, "TF32") == "exact"
    assert verdict(1e-3, None, 1e-5, "TF32") == "NO"  # no floor: the tolerance alone
    assert verdict(1e-3, 3e-4, 1e-5, "TF32") == "exact (TF32)"  # the H200 case: within 10x
    assert verdict(1e-3, 1e-5, 1e-5, "TF32") == "NO"
    assert verdict(4e-4, 0.8, 1e-5, "bf16") == "exact (bf16)"
    # Within ten times a large floor, but too large a difference to call exact.
    assert verdict(0.3, 0.8, 1e-5, "bf16") == "inconclusive (bf16)"
    assert verdict(9.0, 0.8, 1e-5, "bf16") == "NO"


def _with_impostor(monkeypatch):
    # An "exact" method that computes another network's gradient (three steps per block, not
    # two).
    real = bench_models.gradient_methods
    monkeypatch.setattr(bench_models, "gradient_methods",
                        lambda: real() + [("impostor", {"gradient": "direct", "n_steps": 3}, True)])


def test_bf16_channels_last_run_times_the_fp32_baseline_and_measures_the_floor(tmp_path, monkeypatch, capsys):
    _with_impostor(monkeypatch)
    status = main(["bench", "models", "--quick", "--models", "sqnxt_ode_small", "--precision", "bf16",
                   "--channels-last", "--out", str(tmp_path)])
    rows = _rows(tmp_path)
    assert set(rows) == {"direct", "anode/recompute", "backsolve", "impostor"}
    floor = float(rows["direct"]["noise_floor"])
    assert floor > 0 and all(float(r["noise_floor"]) == floor for r in rows.values())
    assert rows["direct"]["verdict"] == "exact" and float(rows["direct"]["grad_rel_diff"]) == 0.0
    # anode recomputes in bf16 and rounds differently, within the floor.
    anode = rows["anode/recompute"]
    assert 0 < float(anode["grad_rel_diff"]) < 0.01 and anode["verdict"] == "exact (bf16)"
    assert rows["backsolve"]["verdict"] == ""
    # bf16 rounding alone can move a gradient at initialization by most of its norm (0.8 here,
    # at these sizes): then even another network's gradient is within ten times the floor, and
    # the run says that it cannot tell, without failing.
    impostor = rows["impostor"]
    assert float(impostor["grad_rel_diff"]) > 0.5
    assert impostor["verdict"] in ("NO", "inconclusive (bf16)")
    assert status == (1 if impostor["verdict"] == "NO" else 0)
    warned = "warning: sqnxt_ode_small impostor: " in capsys.readouterr().err
    assert warned == (impostor["verdict"] != "NO")
    for r in rows.values():
        assert not r["error"] and not r["fp32_error"], r
        speedup = float(r["fp32_time_s"]) / float(r["time_s"])
        assert float(r["speedup_vs_fp32"]) == pytest.approx(speedup)
        assert float(r["fp32_images_per_s"]) > 0
    payload = json.loads((tmp_path / "models_results.json").read_text())
    assert payload["acceleration"] == {"precision": "bf16", "channels_last": True, "compile": False,
                                       "deterministic": False}
    md = (tmp_path / "models_results.md").read_text()
    assert "bf16 autocast, channels-last, eager" in md and "| exact (bf16) |" in md
    assert "not judged, this run is on cpu" in md


def test_deterministic_anode_equals_direct_bit_for_bit_and_a_wrong_gradient_fails(tmp_path, monkeypatch,
                                                                                   capsys):
    _with_impostor(monkeypatch)
    assert main(["bench", "models", "--quick", "--models", "resnet_ode_small", "--deterministic",
                 "--out", str(tmp_path)]) == 1
    rows = _rows(tmp_path)
    assert float(rows["anode/recompute"]["grad_rel_diff"]) == 0.0
    assert rows["anode/recompute"]["verdict"] == "exact"
    assert float(rows["direct"]["noise_floor"]) < 1e-5
    assert rows["impostor"]["verdict"] == "NO"
    assert "error: resnet_ode_small impostor: gradient differs from direct" in capsys.readouterr().err
    payload = json.loads((tmp_path / "models_results.json").read_text())
    assert [r["method"] for r, _ in failures(payload["rows"])] == ["impostor"]
    # The default on CPU is float32 eager NCHW: no baseline to time.
    assert rows["direct"]["speedup_vs_fp32"] == ""


def _gpu_rows(fast: dict, fp32: dict) -> list[dict]:
    return [{"model": m, "method": method, "images_per_s": fast[m], "fp32_images_per_s": fp32[m]}
            for m, method in (("resnet18", "plain"), ("resnet18_ode", "anode/recompute"),
                              ("sqnxt23_ode", "anode/recompute"))]


def test_gpu_throughput_targets_are_judged_on_cuda_only():
    rows = _gpu_rows({"resnet18": 31_000.0, "resnet18_ode": 10_000.0, "sqnxt23_ode": 9_500.0},
                     {"resnet18": 12_000.0, "resnet18_ode": 4_500.0, "sqnxt23_ode": 3_000.0})
    cuda = Acceleration.for_device("cuda")
    found, note = model_targets.evaluate(rows, "cuda", cuda, batch=256, size=32)
    assert note is None
    assert [t.met for t in found] == [True, False, True, False]  # 10,000 / 31,000 = 0.32x
    assert found[3].measured == pytest.approx(10_000 / 31_000)
    assert found[3].fp32 == pytest.approx(4_500 / 12_000)
    table = model_targets.table(found)
    assert "| resnet18 plain: images/s | 31,000 | 12,000 | 2.58x | >= 30,000 img/s | yes |" in table
    assert "| >= 0.35x | **no** |" in table

    found, _ = model_targets.evaluate(rows, "cuda", Acceleration(), batch=128, size=32)
    assert all(t.met is None and t.unjudged == "batch 128, not bf16 + channels-last" for t in found)
    assert "n/a (batch 128, not bf16 + channels-last)" in model_targets.table(found)
    found, note = model_targets.evaluate(rows, "cpu", Acceleration(), batch=256, size=32)
    assert found == [] and "not judged" in note and "cpu" in note


@pytest.mark.slow
def test_compiled_anode_step_gives_the_compiled_direct_gradient(tmp_path):
    # Minutes on CPU: Inductor compiles the network and its ODE function for each method.
    import torch

    from anode_workbench.diagnostics import relative_error

    for gradient in ("direct", "anode"):
        res = bench_models.train_step(model="resnet_ode_small", ode_options={"gradient": gradient}, batch=4,
                                      size=16, threads=1, acceleration={"compile": True},
                                      save=str(tmp_path / f"{gradient}.pt"))
        assert not res.get("error"), res
    direct, anode = (torch.load(tmp_path / f"{g}.pt")["grad"] for g in ("direct", "anode"))
    assert relative_error([anode], [direct]) <= 1e-5


def test_bad_settings_are_named(capsys):
    assert main(["bench", "models", "--quick", "--device", "gpu"]) == 2
    assert "--device 'gpu'" in capsys.readouterr().err
    assert main(["bench", "models", "--batch", "0", "--models", "resnet_small"]) == 2
    assert "--batch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "models", "--precision", "fp16"])


def test_a_failed_baseline_is_a_failure():
    row = {"model": "m", "method": "plain", "exact_method": True, "fp32_error": "RuntimeError: boom"}
    assert failures([row]) == [(row, "float32 eager baseline: RuntimeError: boom")]
