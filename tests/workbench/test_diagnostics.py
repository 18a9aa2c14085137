"""Reverse-solve reconstruction and gradient-error diagnostics, and ``anode diagnose``.

References: closed forms for dz/dt = θz (Euler and midpoint applied forward and then
backwards by hand); direct autograd for the gradient errors.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import anode
from anode_workbench.commands import diagnose
from anode_workbench.diagnostics import (
    checkpoint_cases,
    gradient_error,
    gradient_errors,
    load_images,
    reconstruction_error,
    relative_error,
    round_trip,
    sweep,
    synthetic_cases,
)
from cifar_files import write_fake_cifar
from problems import linear_field

F64 = torch.float64



@pytest.mark.parametrize("n", [1, 3, 10])
def test_reconstruction_error_closed_form(n):
    # Forward, one step multiplies z by the stability polynomial R(hθ); the reverse step of
    # size -h multiplies by R(-hθ), so z_rec = (R(hθ) R(-hθ))^N z_0.
    theta = torch.tensor(-5.0, dtype=F64)
    z0 = torch.tensor([[0.3, -2.0], [1.0, 0.5]], dtype=F64)
    x = -5.0 / n
    euler = (1 + x) * (1 - x)
    midpoint = (1 + x + x * x / 2) * (1 - x + x * x / 2)
    assert reconstruction_error(linear_field(theta), z0, method="euler", n_steps=n) == pytest.approx(
        abs(1 - euler**n), rel=1e-12)
    assert reconstruction_error(linear_field(theta), z0, method="midpoint", n_steps=n) == pytest.approx(
        abs(1 - midpoint**n), rel=1e-12)


def test_round_trip_tuple_state_and_negative_end_time():
    theta = torch.tensor(0.7, dtype=F64)
    y0 = (torch.ones(2, dtype=F64), torch.full((3,), 2.0, dtype=F64))
    final, recovered = round_trip(lambda t, y: (theta * y[0], -theta * y[1]), y0, end_time=-2.0,
                                  method="euler", n_steps=4)
    h = -0.5
    assert torch.allclose(final[0], y0[0] * (1 + h * 0.7) ** 4, rtol=1e-14)
    assert torch.allclose(recovered[1], y0[1] * ((1 - h * 0.7) * (1 + h * 0.7)) ** 4, rtol=1e-14)


def test_gradient_error_linear_closed_form():
    # See tests/test_backsolve.py::test_linear_euler_closed_form for the derivation.
    theta = torch.tensor(-5.0, dtype=F64, requires_grad=True)
    z0 = torch.tensor([1.3, -0.4], dtype=F64)
    w = torch.tensor([0.7, 2.0], dtype=F64)
    n, h = 10, 0.1
    r, q = 1 - 0.5, 1 + 0.5
    backsolve = h * r**n * (1 - (r * q) ** n) / (1 - r * q)
    exact = n * h * r ** (n - 1)
    err = gradient_error(linear_field(theta), z0, gradient="backsolve", method="euler", n_steps=n,
                         params=[theta], cotangent=w)
    assert err.y0 < 1e-14
    assert err.params == pytest.approx(abs(backsolve - exact) / abs(exact), rel=1e-12)
    assert gradient_error(linear_field(theta), z0, gradient="anode", method="euler", n_steps=n,
                          params=[theta]).params == 0.0


def small_cases():
    images = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    return synthetic_cases(images, method="midpoint", channels=3, image_size=6, small=True)


@pytest.mark.parametrize("case", small_cases(), ids=lambda c: c.name)
def test_anode_exact_in_every_diagnostic_case(case):
    rows = sweep(case.func, case.y0, [1, 3], method=case.method)
    for row in rows:
        assert row.errors["anode"].y0 <= 1e-12 and row.errors["anode"].params <= 1e-12
        bs = row.errors["backsolve"]
        assert math.isfinite(bs.y0) and math.isfinite(bs.params) and math.isfinite(row.reconstruction)
    # the continuous adjoint is not the discrete gradient (the linear case's dL/dy0 is, see above)
    assert rows[0].errors["backsolve"].params > 1e-6


def test_diagnostics_leave_the_function_as_they_found_it():
    torch.manual_seed(0)
    func = anode.ConvODEFunc(2).double().train()
    x = torch.randn(2, 2, 4, 4, dtype=F64)
    buffers = [b.clone() for b in func.buffers()]
    rng = torch.get_rng_state()
    reconstruction_error(func, x, method="euler", n_steps=2)
    gradient_errors(func, x, method="euler", n_steps=2)
    assert func.training and all(m.training for m in func.modules())
    assert all(torch.equal(a, b) for a, b in zip(buffers, func.buffers()))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in func.parameters())


def test_relative_error_and_bad_input():
    a = [torch.tensor([3.0, 4.0])]
    assert relative_error(a, [torch.zeros(2)]) == math.inf
    assert relative_error([torch.zeros(2)], [torch.zeros(2)]) == 0.0
    assert relative_error([torch.tensor([3.0, 0.0])], a) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="shape"):
        relative_error(a, [torch.zeros(3)])
    f = linear_field(torch.tensor(1.0))
    with pytest.raises(ValueError, match="unknown gradient"):
        gradient_error(f, torch.ones(2), gradient="adjoint")
    with pytest.raises(ValueError, match="cotangent"):
        gradient_error(f, torch.ones(2), cotangent=torch.ones(3))
    with pytest.raises(ValueError, match="end_time"):
        reconstruction_error(f, torch.ones(2), end_time=0.0)


@pytest.fixture
def fake_data(tmp_path):
    write_fake_cifar(tmp_path, "cifar10", n_train=10, n_test=8)
    return tmp_path


def main(argv):
    """``anode diagnose`` through its own parser only, independent of the other subcommands."""
    parser = argparse.ArgumentParser(prog="anode")
    diagnose.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


class TinyODENet(nn.Module):
    """Stem conv, two ODE blocks, linear head: the shape of a trained checkpoint's model."""

    def __init__(self, num_classes, method="euler", n_steps=2):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(*(anode.ODEBlock(anode.ConvODEFunc(4), method=method, n_steps=n_steps)
                                      for _ in range(2)))
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_diagnose_quick_end_to_end_with_checkpoint(fake_data, tmp_path, monkeypatch, capsys):
    # A stand-in model registry with the interface the training code provides.
    models = types.ModuleType("anode.models")
    models.create = lambda name, num_classes, **opts: TinyODENet(num_classes, **opts)
    monkeypatch.setitem(sys.modules, "anode.models", models)
    monkeypatch.setattr(anode, "models", models, raising=False)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_name": "tiny", "num_classes": 10, "model_state": TinyODENet(10).state_dict(),
                "ode_options": {"method": "midpoint"}}, path)
    out = tmp_path / "out"
    code = main(["diagnose", "--quick", "--out", str(out), "--data-root", str(fake_data),
                 "--checkpoint", str(path)])
    assert code == 0
    printed = capsys.readouterr().out
    names = ["linear", "tanh-mlp", "resnet-bn-train", "resnet-bn-eval", "conv-relu-images",
             "ckpt:blocks.0", "ckpt:blocks.1"]
    assert all(name in printed for name in names)
    rows = read_rows(out / "diagnose_euler_results.csv")
    assert [(r["case"], int(r["n_steps"])) for r in rows] == [(c, n) for c in names for n in (1, 2, 4)]
    assert {r["method"] for r in rows if r["case"].startswith("ckpt:")} == {"midpoint"}
    assert all(float(r["anode_y0"]) <= 1e-12 and float(r["anode_params"]) <= 1e-12 for r in rows)
    for name in ("diagnose_euler_errors.png", "diagnose_euler_images.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_diagnose_missing_data_or_checkpoint(tmp_path, fake_data, capsys):
    assert main(["diagnose", "--quick", "--out", str(tmp_path), "--data-root", str(tmp_path / "none")]) == 2
    assert "--data-root" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    torch.save({"model_name": "x"}, bad)
    assert main(["diagnose", "--quick", "--out", str(tmp_path), "--data-root", str(fake_data),
                 "--checkpoint", str(bad)]) == 2
    assert "missing keys" in capsys.readouterr().err
    assert main(["diagnose", "--quick", "--out", str(tmp_path), "--method", "rk5"]) == 2
    assert "unknown method" in capsys.readouterr().err


@pytest.mark.slow
def test_diagnose_full_run(tmp_path):
    # The real command on real CIFAR-10 when it is present (the figures in docs/ come from it).
    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg"
    try:
        load_images(root, 1)
    except ValueError:
        pytest.skip("CIFAR-10 not found")
    assert main(["diagnose", "--out", str(tmp_path), "--data-root", str(root)]) == 0
    rows = read_rows(tmp_path / "diagnose_euler_results.csv")
    assert len(rows) == 5 * len(diagnose.FULL_STEPS)
    assert all(float(r["anode_y0"]) <= 1e-12 and float(r["anode_params"]) <= 1e-12 for r in rows)


def test_checkpoint_cases_with_the_model_registry(tmp_path):
    # The real registry and checkpoint format, when present: every ODE block, its input shape.
    models = pytest.importorskip("anode.models")
    if "resnet_ode_small" not in models.list_models():
        pytest.skip("no resnet_ode_small in anode.models")
    model = models.create("resnet_ode_small", 10, method="midpoint", n_steps=1)
    path = tmp_path / "last.pt"
    torch.save({"model_name": "resnet_ode_small", "num_classes": 10, "model_state": model.state_dict(),
                "ode_options": {"method": "midpoint", "n_steps": 1}, "dataset": "cifar10"}, path)
    cases = checkpoint_cases(str(tmp_path), torch.randn(1, 3, 16, 16))
    blocks = [name for name, m in model.named_modules() if isinstance(m, anode.ODEBlock)]
    assert [c.name for c in cases] == [f"ckpt:{b}" for b in blocks] and blocks
    assert all(c.method == "midpoint" and c.y0.dtype == F64 and not c.func.training for c in cases)
    assert cases[0].y0.shape[0] == 1
