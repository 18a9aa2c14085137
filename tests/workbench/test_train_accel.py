"""Execution settings of a training run: --precision, --channels-last, --compile,
--deterministic; what config.json records, what a resumed run may change, old checkpoints."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest
import torch

from anode import models
from anode_workbench import accel
from anode_workbench.cli import main
from anode_workbench.train import TrainConfig, evaluate_checkpoint, load_checkpoint, resolve_config, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifar_files import tiny_config  # noqa: E402

TINY = "_test_accel_tiny_ode"



def _tiny(num_classes: int = 10, **ode_options):
    return models.ResNet((4, 8), (2, 2), num_classes, ode=True, **ode_options)


if TINY not in models.list_models():
    models.register_model(_tiny, name=TINY)


def _config(data_root, out, **kw) -> TrainConfig:
    return tiny_config(data_root, out, **{"model": TINY, "epochs": 1, **kw})


def test_device_defaults_are_resolved_and_recorded(data_root, tmp_path):
    cpu = resolve_config(TrainConfig(), "cpu")
    assert (cpu.precision, cpu.channels_last, cpu.compile, cpu.deterministic) == ("fp32", False, False, False)
    cuda = resolve_config(TrainConfig(), "cuda")
    assert (cuda.precision, cuda.channels_last) == ("bf16", True)
    r = train(_config(data_root, tmp_path / "run"))
    saved = json.loads((r.run_dir / "config.json").read_text())
    assert (saved["precision"], saved["channels_last"], saved["compile"], saved["deterministic"]) == (
        "fp32", False, False, False
    )
    assert "bf16" not in saved


@pytest.mark.parametrize("bad", [dict(precision="fp16"), dict(channels_last="yes")])
def test_bad_execution_settings_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad).check()


def test_bad_precision_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--precision", "fp16"])
    assert "--precision: invalid choice: 'fp16'" in capsys.readouterr().err


def test_bf16_channels_last_compiled_run_end_to_end(data_root, tmp_path, monkeypatch):
    # aot_eager traces as inductor does, without the half minute of code generation
    monkeypatch.setattr("anode_workbench.train.setup.compile_model",
                        functools.partial(accel.compile_model, backend="aot_eager"))
    out = tmp_path / "run"
    assert main([
        "train", "--data-root", str(data_root), "--model", TINY, "--epochs", "1", "--batch-size", "16",
        "--subset", "0", "--precision", "bf16", "--channels-last", "--compile", "--deterministic",
        "--device", "cpu", "--out", str(out), "--no-progress", "--no-plots", "--eval-batch-size", "8",
    ]) == 0
    torch._dynamo.reset()
    ckpt = load_checkpoint(out)
    args = ckpt["args"]
    assert (args["precision"], args["channels_last"], args["compile"], args["deterministic"]) == (
        "bf16", True, True, True
    )
    assert all(not k.startswith("_orig_mod.") for k in ckpt["model_state"])
    assert all(v.dtype == torch.float32 for v in ckpt["model_state"].values() if v.is_floating_point())
    momentum = [s["momentum_buffer"] for s in ckpt["optimizer_state"]["state"].values()]
    assert momentum and all(m.dtype == torch.float32 for m in momentum)
    loss = ckpt["metrics"][-1]["train_loss"]
    assert isinstance(loss, float) and loss == loss
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def test_resume_keeps_the_precision_and_may_change_the_rest(data_root, tmp_path):
    train(_config(data_root, tmp_path / "run", precision="bf16"))
    with pytest.raises(ValueError, match="precision='fp32'"):
        train(_config(data_root, tmp_path / "run", epochs=2, precision="fp32", resume=True))
    r = train(_config(data_root, tmp_path / "run", epochs=2, channels_last=True, deterministic=True,
                      resume=True))
    assert (r.config.precision, r.config.channels_last, r.config.deterministic) == ("bf16", True, True)


@pytest.mark.parametrize("bf16", [False, True])
def test_checkpoints_with_the_older_bf16_flag(data_root, tmp_path, bf16):
    train(_config(data_root, tmp_path / "run"))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for key in ("precision", "channels_last", "compile", "deterministic"):
        del ckpt["args"][key]
    ckpt["args"]["bf16"] = bf16
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    r = train(_config(data_root, tmp_path / "run", epochs=2, resume=True))
    assert r.config.precision == ("bf16" if bf16 else "fp32") and r.config.channels_last is False
    res = evaluate_checkpoint(tmp_path / "run", device="cpu")
    assert 0.0 <= res["test_acc"] <= 1.0


def test_evaluate_takes_a_precision(data_root, tmp_path):
    r = train(_config(data_root, tmp_path / "run"))
    fp32 = evaluate_checkpoint(r.run_dir, device="cpu")
    assert fp32["test_loss"] == pytest.approx(r.metrics[-1]["test_loss"], rel=1e-6)
    bf16 = evaluate_checkpoint(r.run_dir, device="cpu", precision="bf16")
    assert bf16["test_loss"] == pytest.approx(fp32["test_loss"], rel=0.05)
    with pytest.raises(ValueError, match="precision"):
        evaluate_checkpoint(r.run_dir, device="cpu", precision="fp8")
    assert main(["evaluate", str(r.run_dir), "--device", "cpu", "--bf16", "--no-progress"]) == 0
