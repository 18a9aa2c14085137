"""``anode diagnose``: measure the continuous adjoint's error against the exact gradient.

For each ODE function below (:mod:`anode_workbench.diagnostics.cases`) and each N_t in
{1, 2, 4, ..., 64} it reports the relative error of the initial state recovered by the
reverse solve (:func:`anode_workbench.diagnostics.reconstruction_error`) and the relative errors of the
``backsolve`` (Chen et al. 2018) and ``anode`` (Gholami et al. 2019) gradients against
direct autograd through the solver (:func:`anode_workbench.diagnostics.gradient_errors`), all in
float64:

* ``linear``: dz/dt = θz, θ = -5 (closed form known; see tests/library/test_backsolve.py);
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
import sys
import time
from pathlib import Path

FULL_STEPS = (1, 2, 4, 8, 16, 32, 64)
QUICK_STEPS = (1, 2, 4)
GRADIENTS = ("backsolve", "anode")


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
    from anode._solvers import get_tableau

    from ..data import DatasetError
    from ..diagnostics import checkpoint_cases, load_images, report, sweep, synthetic_cases

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
    cases = synthetic_cases(images, method=args.method, seed=args.seed, channels=args.channels,
                            image_size=args.image_size, image_gain=args.image_gain, small=args.quick)
    if args.checkpoint is not None:
        try:
            cases += checkpoint_cases(args.checkpoint, images)
        except (OSError, KeyError, ValueError, RuntimeError, ImportError) as exc:
            print(f"error: checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
            return 2

    results = {}
    for case in cases:
        rows = sweep(case.func, case.y0, steps, gradients=GRADIENTS, end_time=case.end_time,
                     method=case.method, seed=args.seed)
        results[case.name] = rows
        report.print_rows(case, rows, header=len(results) == 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / f"diagnose_{args.method}"
    paths = [Path(f"{prefix}_{kind}") for kind in ("errors.png", "images.png", "results.csv")]
    report.write_csv(paths[2], cases, results)
    report.plot_errors(paths[0], cases, results)
    image_case = next(c for c in cases if c.name == "conv-relu-images")
    report.plot_images(paths[1], image_case, steps)
    print(f"\nwrote {', '.join(map(str, paths))}; {time.perf_counter() - started:.0f} s")
    return 0
