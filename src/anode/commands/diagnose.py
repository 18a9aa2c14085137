"""``anode diagnose``: measure the continuous adjoint's error against the exact gradient.

For each ODE function below and each N_t in {1, 2, 4, ..., 64} it reports the relative error
of the initial state recovered by the reverse solve (:func:`anode.diagnostics.reconstruction_error`)
and the relative errors of the ``backsolve`` (Chen et al. 2018) and ``anode`` (Gholami et al.
2019) gradients against direct autograd through the solver
(:func:`anode.diagnostics.gradient_errors`), all in float64:

* ``linear``: dz/dt = θz, θ = -5 (closed form known; see tests/test_backsolve.py);
* ``tanh-mlp``: dz/dt = W2 tanh(W1 z + b1) + b2, PyTorch's default initialisation;
* ``resnet-bn-train`` / ``resnet-bn-eval``: :class:`anode.ConvODEFunc` (conv–BN–ReLU–conv–
  BN–ReLU, the ANODE paper's ResNet ODE function) with BatchNorm in training mode, and in
  evaluation mode with running statistics set from one training-mode pass over the input;
  the input is CIFAR-10 test images, normalised, average-pooled to ``--image-size`` and
  lifted to ``--channels`` channels by a fixed random 3x3 convolution;
* ``conv-relu-images``: f(z) = conv(ReLU(conv(z))) on the normalised images themselves
  (3 channels, Kaiming-normal weights times ``--image-gain``, no bias); also drawn;
* with ``--checkpoint``: every ODE block of a trained model, fed its real input (captured by
  a forward hook on the CIFAR-10 test images), in evaluation mode.

Writes ``diagnose_<method>_errors.png`` (error against N_t, log–log),
``diagnose_<method>_images.png`` (images pushed through the conv–ReLU block and recovered
by the reverse solve) and ``diagnose_<method>_results.csv`` to ``--out``, and prints the
table.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..diagnostics import SweepRow, relative_error, round_trip, sweep
from ..nn import ConvODEFunc, ODEBlock
from ..solvers import get_tableau

FULL_STEPS = (1, 2, 4, 8, 16, 32, 64)
QUICK_STEPS = (1, 2, 4)
GRADIENTS = ("backsolve", "anode")


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


def register(subparsers) -> None:
    """Add the ``diagnose`` subcommand."""
    p = subparsers.add_parser(
        "diagnose",
        help="reverse-solve reconstruction and gradient errors of backsolve vs the exact gradient",
        description="Measure the continuous adjoint's (backsolve's) reverse-solve and gradient errors "
        "against the exact gradient of the discrete solver, for N_t in {1, 2, 4, ..., 64}.",
    )
    p.add_argument("--out", default="runs/diagnose",
                   help="folder for the plots and CSV (default: %(default)s)")
    p.add_argument("--data-root", default="../shared/data/cifar10-jpeg",
                   help="folder holding cifar-10-batches-py/ (default: %(default)s)")
    p.add_argument("--checkpoint", default=None,
                   help="a trained model's checkpoint; its ODE blocks are diagnosed too")
    p.add_argument("--quick", action="store_true",
                   help="N_t in {1, 2, 4}, 2 images of 8x8 pixels, 4 channels: a smoke test")
    p.add_argument("--method", default="euler", help="Runge–Kutta method of the synthetic cases "
                   "(checkpoint blocks use their own) (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="number of test images (default: %(default)s)")
    p.add_argument("--channels", type=int, default=16,
                   help="channels of the ResNet ODE function (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=16,
                   help="side of the average-pooled images fed to the ResNet function (default: %(default)s)")
    p.add_argument("--image-gain", type=float, default=2.0,
                   help="weight gain of the drawn conv–ReLU block (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of weights and cotangents (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the diagnostics; 0 on success, 2 when the data or checkpoint cannot be used."""
    from ..data import DatasetError

    if args.quick:
        args.batch, args.channels, args.image_size = 2, 4, 8
    if min(args.batch, args.channels, args.image_size) < 1:
        print("error: --batch, --channels and --image-size must be positive", file=sys.stderr)
        return 2
    try:
        get_tableau(args.method)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    steps = QUICK_STEPS if args.quick else FULL_STEPS
    try:
        images = load_images(args.data_root, args.batch)
    except DatasetError as exc:
        print(f"error: {exc}\n(pass --data-root)", file=sys.stderr)
        return 2
    if args.quick:
        images = images[..., :8, :8]
    started = time.perf_counter()
    cases = synthetic_cases(images, args)
    if args.checkpoint is not None:
        try:
            cases += checkpoint_cases(args.checkpoint, images)
        except (OSError, KeyError, ValueError, RuntimeError, ImportError) as exc:
            print(f"error: checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
            return 2

    results: dict[str, list[SweepRow]] = {}
    for case in cases:
        rows = sweep(case.func, case.y0, steps, gradients=GRADIENTS, end_time=case.end_time,
                     method=case.method, seed=args.seed)
        results[case.name] = rows
        print_rows(case, rows, header=len(results) == 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / f"diagnose_{args.method}"
    paths = [Path(f"{prefix}_{kind}") for kind in ("errors.png", "images.png", "results.csv")]
    write_csv(paths[2], cases, results)
    plot_errors(paths[0], cases, results)
    image_case = next(c for c in cases if c.name == "conv-relu-images")
    plot_images(paths[1], image_case, steps)
    print(f"\nwrote {', '.join(map(str, paths))}; {time.perf_counter() - started:.0f} s")
    return 0


def load_images(root: str, count: int) -> torch.Tensor:
    """The first ``count`` CIFAR-10 test images, normalised with the CIFAR-10 statistics:
    float32 ``[count, 3, 32, 32]``.

    Raises:
        anode.data.DatasetError: the data is missing or malformed.
    """
    from ..data import CIFAR10_MEAN, CIFAR10_STD, load_cifar, normalize

    arrays = load_cifar("cifar10", root, train=False)
    return normalize(arrays.images[:count], CIFAR10_MEAN, CIFAR10_STD)


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def synthetic_cases(images: torch.Tensor, args: argparse.Namespace) -> list[Case]:
    """The cases built from fixed random weights (see the module docstring)."""
    dtype, seed, method = torch.float64, args.seed, args.method
    dim, hidden = (4, 8) if args.quick else (16, 64)
    gen = torch.Generator().manual_seed(seed)
    cases = [
        Case("linear", LinearODE(-5.0).to(dtype),
             torch.randn(args.batch, 4, generator=gen, dtype=dtype), method),
        Case("tanh-mlp", _seeded(seed, lambda: TanhMLP(dim, hidden)).to(dtype),
             torch.randn(args.batch, dim, generator=gen, dtype=dtype), method),
    ]
    x = images.to(dtype)
    if x.shape[-1] != args.image_size:
        x = F.adaptive_avg_pool2d(x, args.image_size)
    lift = _seeded(seed + 1, lambda: nn.Conv2d(3, args.channels, 3, padding=1, bias=False)).to(dtype)
    with torch.no_grad():
        features = lift(x)
    train = _seeded(seed + 2, lambda: ConvODEFunc(args.channels)).to(dtype).train()
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
        Case("conv-relu-images", _seeded(seed + 3, lambda: ConvReLUConv(3, args.image_gain)).to(dtype),
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
    from .. import models

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


def print_rows(case: Case, rows: list[SweepRow], header: bool) -> None:
    """Print one case's rows of the table (with the header before the first case)."""
    if header:
        cols = ["case", "method", "N_t", "reconstr.", "bs dL/dy0", "bs dL/dθ", "anode dL/dy0",
                "anode dL/dθ", "s"]
        print(f"{cols[0]:<20} {cols[1]:<8} {cols[2]:>4} " + " ".join(f"{c:>12}" for c in cols[3:8])
              + f" {cols[8]:>6}")
    for r in rows:
        vals = [r.reconstruction, r.errors["backsolve"].y0, r.errors["backsolve"].params,
                r.errors["anode"].y0, r.errors["anode"].params]
        print(f"{case.name:<20} {case.method:<8} {r.n_steps:>4} " + " ".join(f"{v:>12.2e}" for v in vals)
              + f" {r.seconds:>6.1f}", flush=True)


def write_csv(path: Path, cases: list[Case], results: dict[str, list[SweepRow]]) -> None:
    """One line per case and N_t; errors are relative (dimensionless), time in seconds."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "method", "n_steps", "reconstruction", "backsolve_y0", "backsolve_params",
                    "anode_y0", "anode_params", "seconds"])
        for case in cases:
            for r in results[case.name]:
                e = r.errors
                w.writerow([case.name, case.method, r.n_steps, f"{r.reconstruction:.6e}",
                            f"{e['backsolve'].y0:.6e}", f"{e['backsolve'].params:.6e}",
                            f"{e['anode'].y0:.6e}", f"{e['anode'].params:.6e}", f"{r.seconds:.2f}"])


# Exact zeros cannot be drawn on a log axis; they are drawn at this floor.
_FLOOR = 1e-17


def plot_errors(path: Path, cases: list[Case], results: dict[str, list[SweepRow]]) -> None:
    """Three log–log panels against N_t: reconstruction error, dL/dy0 and dL/dθ errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [("reverse-solve reconstruction error", None), ("gradient error, dL/dy0", "y0"),
              ("gradient error, dL/dθ", "params")]
    for k, case in enumerate(cases):
        rows = results[case.name]
        n = [r.n_steps for r in rows]
        color = colors[k % len(colors)]
        for ax, (_, field) in zip(axes, panels):
            if field is None:
                ys = [max(r.reconstruction, _FLOOR) for r in rows]
                ax.loglog(n, ys, "o-", color=color, label=case.name)
                continue
            for name, style in (("backsolve", "o-"), ("anode", "x--")):
                ys = [getattr(r.errors[name], field) for r in rows]
                if all(math.isnan(y) for y in ys):
                    continue
                ax.loglog(n, [max(y, _FLOOR) for y in ys], style, color=color,
                          alpha=1.0 if name == "backsolve" else 0.6)
    for ax, (title, _) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("N_t (steps over [0, T])")
        ax.set_ylabel("relative error")
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, title="case (color)", title_fontsize=7)
    styles = [Line2D([], [], color="k", marker="o", label="backsolve"),
              Line2D([], [], color="k", marker="x", ls="--", alpha=0.6, label="anode")]
    axes[1].legend(handles=styles, fontsize=7, loc="center right")
    fig.suptitle(f"backsolve (solid) vs anode (dashed; exact zeros drawn at {_FLOOR:g}), float64")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_images(path: Path, case: Case, steps) -> None:
    """Originals, z(T), and the initial state recovered by the reverse solve at three N_t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data import CIFAR10_MEAN, CIFAR10_STD

    chosen = sorted({steps[0], steps[len(steps) // 2], steps[-1]})
    rows = [("original", case.y0)]
    for n in chosen:
        final, recovered = round_trip(case.func, case.y0, end_time=case.end_time, method=case.method,
                                      n_steps=n)
        if n == chosen[-1]:
            rows.insert(1, (f"z(T), N_t={n}", final))
        err = relative_error([recovered], [case.y0])
        rows.append((f"recovered, N_t={n}\nrel. err {err:.2g}", recovered))
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64)[:, None, None]
    b = case.y0.shape[0]
    fig, axes = plt.subplots(len(rows), b, figsize=(1.4 * b + 1.4, 1.5 * len(rows)), squeeze=False)
    for i, (label, batch) in enumerate(rows):
        for j in range(b):
            ax = axes[i][j]
            img = (batch[j].double() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(f"CIFAR-10 test images through dz/dt = conv(ReLU(conv(z))) on [0, {case.end_time:g}] "
                 f"({case.method}), then the reverse solve (pixels clipped to [0, 1])", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
