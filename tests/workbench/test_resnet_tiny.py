"""The compact ODE-ResNet of the CPU default (``resnet_ode_tiny``) and the CPU default run
itself (slow: on the real CIFAR-10, several minutes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from anode import models
from anode_workbench.train import TrainConfig, train


def test_resnet_ode_tiny_size_and_structure():
    model = models.create("resnet_ode_tiny")
    assert sum(p.numel() for p in model.parameters()) == 678_058
    assert sum(p.numel() for p in models.create("resnet_ode_tiny", num_classes=100).parameters()) == 689_668
    assert len(model.ode_blocks()) == 3
    plain = models.create("resnet_tiny")
    assert not plain.ode_blocks()
    plain.load_state_dict(model.state_dict())  # same parameter names
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="ODE options"):
        models.create("resnet_tiny", method="rk4")


def test_resnet_ode_tiny_anode_gradients_equal_direct_in_float64():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([1, 5, 7])
    grads = {}
    for gradient in ("direct", "anode", "backsolve"):
        torch.manual_seed(1)
        model = models.create("resnet_ode_tiny", gradient=gradient).double()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads[gradient] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, g in grads["direct"].items():
        a = grads["anode"][name]
        assert torch.allclose(a, g, rtol=1e-10, atol=1e-13), (name, float((a - g).abs().max()))
    # The comparison can tell gradients apart: the continuous adjoint's is not the exact one.
    flat = {k: torch.cat([g.flatten() for g in v.values()]) for k, v in grads.items()}
    assert (flat["backsolve"] - flat["direct"]).norm() > 1e-6 * flat["direct"].norm()


@pytest.mark.slow
def test_cpu_default_on_real_cifar10(tmp_path):
    """The main job as `anode train` runs it on a CPU, on the real data: 6-9 minutes with the
    one thread the tests run on (conftest.py)."""
    root = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cifar10-jpeg"
    if not (root / "cifar-10-batches-py").is_dir():
        pytest.skip("the real CIFAR-10 is not in ../shared/data/cifar10-jpeg")
    r = train(TrainConfig(data_root=str(root), out=str(tmp_path / "run"), device="cpu", progress=False,
                          plots=False))
    last = r.metrics[-1]
    assert last["test_images"] == 10_000
    assert last["test_acc"] >= 0.60 and math.isfinite(last["test_loss"])
