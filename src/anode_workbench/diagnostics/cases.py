"""The cases of ``anode diagnose``: ODE functions with initial states, synthetic or taken from
a trained model.

* ``linear``: dz/dt = θz, θ = -5 (closed form known; see tests/library/test_backsolve.py);
* ``tanh-mlp``: dz/dt = W2 tanh(W1 z + b1) + b2, PyTorch's default initialisation;
* ``resnet-bn-train`` / ``resnet-bn-eval``: :class:`anode.ConvODEFunc` (conv–BN–ReLU–conv–
  BN–ReLU, the ANODE paper's ResNet ODE function) with BatchNorm in training mode, and in
  evaluation mode with running statistics set from one training-mode pass over the input;
  the input is CIFAR-10 test images, normalised, average-pooled and lifted to C channels by
  a fixed random 3x3 convolution;
* ``conv-relu-images``: f(z) = conv(ReLU(conv(z))) on the normalised images themselves
  (3 channels, Kaiming-normal weights times a gain, no bias);
* :func:`checkpoint_cases`: every ODE block of a trained model, fed its real input.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from anode._nn import ConvODEFunc, ODEBlock


@dataclass
class Case:
    """One ODE function and initial state to diagnose."""

    name: str
    func: nn.Module
    y0: torch.Tensor
    method: str
    end_time: float = 1.0


class LinearODE(nn.Module):
    """dz/dt = θz with a scalar parameter θ."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(float(theta)))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.theta * z


class TanhMLP(nn.Module):
    """dz/dt = W2 tanh(W1 z + b1) + b2; ``z``: ``[B, dim]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.tanh(self.lin1(z)))


class ConvReLUConv(nn.Module):
    """f(z) = conv(ReLU(conv(z))), 3x3, no bias, Kaiming-normal weights times ``gain``."""

    def __init__(self, channels: int, gain: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            with torch.no_grad():
                conv.weight.mul_(gain)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(z)))


def load_images(root: str, count: int) -> torch.Tensor:
    """The first ``count`` CIFAR-10 test images, normalised with the CIFAR-10 statistics:
    float32 ``[count, 3, 32, 32]``.

    Raises:
        anode_workbench.data.DatasetError: the data is missing or malformed.
    """
    from ..data import CIFAR10_MEAN, CIFAR10_STD, load_cifar, normalize

    arrays = load_cifar("cifar10", root, train=False)
    return normalize(arrays.images[:count], CIFAR10_MEAN, CIFAR10_STD)


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def synthetic_cases(images: torch.Tensor, *, method: str = "euler", seed: int = 0, channels: int = 16,
                    image_size: int = 16, image_gain: float = 2.0, small: bool = False) -> list[Case]:
    """The cases built from fixed random weights (see the module docstring), in float64.

    Args:
        images: normalised images ``[B, 3, H, W]``; B is the batch of every case.
        method: the Runge–Kutta method of every case.
        seed: seeds the weights and the random initial states.
        channels: C of the ResNet ODE function's state.
        image_size: side (pixels) of the average-pooled images lifted to ``channels``.
        image_gain: weight gain of the conv–ReLU case.
        small: a 4-wide MLP with 8 hidden units instead of 16 and 64 (a smoke test).
    """
    dtype, batch = torch.float64, images.shape[0]
    dim, hidden = (4, 8) if small else (16, 64)
    gen = torch.Generator().manual_seed(seed)
    cases = [
        Case("linear", LinearODE(-5.0).to(dtype),
             torch.randn(batch, 4, generator=gen, dtype=dtype), method),
        Case("tanh-mlp", _seeded(seed, lambda: TanhMLP(dim, hidden)).to(dtype),
             torch.randn(batch, dim, generator=gen, dtype=dtype), method),
    ]
    x = images.to(dtype)
    if x.shape[-1] != image_size:
        x = F.adaptive_avg_pool2d(x, image_size)
    lift = _seeded(seed + 1, lambda: nn.Conv2d(3, channels, 3, padding=1, bias=False)).to(dtype)
    with torch.no_grad():
        features = lift(x)
    train = _seeded(seed + 2, lambda: ConvODEFunc(channels)).to(dtype).train()
    evaluated = copy.deepcopy(train)
    for m in evaluated.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one pass sets the batch's statistics
    with torch.no_grad():
        evaluated(torch.zeros(()), features)
    evaluated.eval()
    cases += [
        Case("resnet-bn-train", train, features, method),
        Case("resnet-bn-eval", evaluated, features, method),
        Case("conv-relu-images", _seeded(seed + 3, lambda: ConvReLUConv(3, image_gain)).to(dtype),
             images.to(dtype), method),
    ]
    return cases


def checkpoint_cases(path: str, images: torch.Tensor) -> list[Case]:
    """One case per ODE block of a trained model, with the block's real input.

    The checkpoint (a file, or a training run's folder holding ``last.pt``) is a
    ``torch.save``'d dict with keys ``model_name``, ``num_classes``,
    ``model_state`` and ``ode_options``; the model is ``anode.models.create(model_name,
    num_classes, **ode_options)`` in evaluation mode. Each :class:`anode.ODEBlock` keeps its
    method and end time; its function and input are converted to float64.

    Raises:
        OSError: unreadable file. KeyError: a key is missing. ImportError: no
        ``anode.models``. ValueError: the model has no ODE blocks.
        RuntimeError: the state does not fit the model.
    """
    file = Path(path)
    if file.is_dir():  # a training run's folder
        file = file / "last.pt"
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"not a checkpoint: a {type(ckpt).__name__}, expected a dict")
    missing = [k for k in ("model_name", "num_classes", "model_state", "ode_options") if k not in ckpt]
    if missing:
        raise KeyError(f"missing keys {missing}")
    from anode import models

    model = models.create(ckpt["model_name"], ckpt["num_classes"], **ckpt["ode_options"])
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, ODEBlock)]
    if not blocks:
        raise ValueError(f"model {ckpt['model_name']!r} has no anode.ODEBlock")
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: inputs.__setitem__(name, inp[0].detach()))
        for name, m in blocks
    ]
    try:
        with torch.no_grad():
            model(images.to(next(model.parameters()).dtype))
    finally:
        for h in hooks:
            h.remove()
    cases = []
    for name, block in blocks:
        func = copy.deepcopy(block.func)
        if isinstance(func, nn.Module):
            func = func.to(torch.float64)
        method = block.options.method.name
        cases.append(Case(f"ckpt:{name}", func, inputs[name].to(torch.float64), method, block.end_time))
    return cases
