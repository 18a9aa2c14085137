"""``anode train`` and ``anode evaluate``: train a classifier on CIFAR, or measure a saved one.

Both are thin: they turn flags into a :class:`anode_workbench.train.TrainConfig` (every flag maps to
one field of the same name) and call :func:`anode_workbench.train.train` /
:func:`anode_workbench.train.evaluate_checkpoint`. See ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..accel import PRECISIONS
from ..train.lr_schedule import LR_SCHEDULES
from ._arguments import add_recipe_argument, int_list

__all__ = ["register"]

_TRAIN_EPILOG = """\
Unset flags take the defaults of the device: on a CPU a demonstration of under five
minutes on two cores (resnet_ode_tiny, Euler with 2 steps, anode gradients, 3 epochs of a
class-balanced 30,000-image subset, batch 128, one-cycle lr peaking at 0.2, label
smoothing 0.1; 2,000 test images after epochs 1 and 2, all 10,000 after the last); on a
GPU the ANODE paper's settings (resnet18_ode, Euler with 2 steps, 350 epochs, batch 256,
lr 0.1 x0.1 after epochs 150 and 250, all 50,000 images).

examples:
  anode train                                      # the device's defaults
  anode train --gradient direct --name direct      # the same run with autograd gradients
  anode train --model resnet_tiny --name baseline  # the plain residual network
  anode train --recipe fast                        # ODE-ResNet-18 in minutes on a GPU (docs/training.md)
  anode train --out runs/x --resume                # continue a killed run
  anode train --precision fp32 --deterministic     # GPU: float32, reproducible bits
  torchrun --nproc_per_node 4 -m anode_workbench.cli train   # data parallel on 4 GPUs
"""


def _bytes(text: str) -> int:
    from ..train.config import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _threads(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or auto, got {text!r}")
    return value


def _add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a (neural ODE) classifier on CIFAR-10/100",
        description="Train an image classifier on CIFAR with SGD; checkpoint, log and plot every epoch.",
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    S = argparse.SUPPRESS  # unset flags stay unset, so the configuration's defaults apply
    add_recipe_argument(p, "start from a named recipe's settings (flags given override them): "
                        "fast; --recipe list describes them")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=("cifar10", "cifar100"), default=S, help="default cifar10")
    data.add_argument(
        "--data-root", dest="data_root", metavar="DIR", default=S,
        help="folder holding cifar-10-batches-py/ or cifar-100-python/; default "
        "../shared/data/cifar10-jpeg if it exists (CIFAR-10), else ./data",
    )
    data.add_argument("--download", action="store_true", default=S, help="fetch the dataset if missing")
    data.add_argument("--subset", type=int, metavar="N", default=S,
                      help="train on N class-balanced images; 0 = all (default: 30000 on CPU, all on GPU)")
    data.add_argument("--test-subset", dest="test_subset", type=int, metavar="N", default=S,
                      help="the run's test set: N class-balanced test images (default: all)")
    data.add_argument("--epoch-test-subset", dest="epoch_test_subset", type=int, metavar="N", default=S,
                      help="after each epoch but the last, evaluate N class-balanced images of the "
                      "test set; 0 = all every epoch (default: 2000 on CPU unless --test-subset is "
                      "given, else 0)")
    data.add_argument("--no-augment", dest="augment", action="store_false", default=S,
                      help="no random crop and flip")

    model = p.add_argument_group("model and ODE solver")
    model.add_argument("--model", metavar="NAME", default=S,
                       help="a name of anode.models.list_models(); default resnet_ode_tiny (CPU), "
                       "resnet18_ode (GPU)")
    model.add_argument("--method", metavar="NAME", default=S,
                       help="Runge-Kutta method: euler, midpoint, heun, ralston, rk4, rk38; with "
                       "--rtol/--atol an embedded pair: dopri5, bosh3, tsit5, adaptive_heun")
    model.add_argument("--n-steps", dest="n_steps", type=int, metavar="N", default=S,
                       help="steps per ODE block")
    model.add_argument("--rtol", type=float, metavar="X", default=S,
                       help="relative tolerance: adaptive steps (with --method dopri5, bosh3, tsit5, ...)")
    model.add_argument("--atol", type=float, metavar="X", default=S,
                       help="absolute tolerance of adaptive steps")
    model.add_argument("--gradient", metavar="NAME", default=S, help="anode (default), direct or backsolve")
    model.add_argument("--schedule", metavar="NAME", default=S,
                       help="where anode keeps states: recompute (default), store, ...")
    model.add_argument("--snapshots", type=int, metavar="N", default=S, help="snapshots of the schedule")
    model.add_argument("--memory-budget", dest="memory_budget", type=_bytes, metavar="SIZE", default=S,
                       help="memory budget of the schedule, e.g. 2GB, 512MiB")


    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=S)
    opt.add_argument("--batch-size", dest="batch_size", type=int, metavar="B", default=S,
                     help="global batch size (split over torchrun processes)")
    opt.add_argument("--lr", type=float, default=S,
                     help="initial (onecycle: peak) learning rate (0.2 on CPU, 0.1 on GPU)")
    opt.add_argument("--lr-schedule", dest="lr_schedule", choices=LR_SCHEDULES, default=S,
                     help="step: x gamma after each milestone; cosine: annealed to 0 per epoch; "
                     "onecycle: linear warm-up over the first quarter of the steps, then linear "
                     "decay to 0 (default: onecycle on CPU, step on GPU)")
    opt.add_argument("--lr-milestones", dest="lr_milestones", type=int_list(0), metavar="E1,E2", default=S,
                     help="epochs after which the step schedule decays (default: 50%% and 75%% of epochs)")
    opt.add_argument("--lr-gamma", dest="lr_gamma", type=float, default=S, help="step decay factor (0.1)")
    opt.add_argument("--momentum", type=float, default=S, help="SGD momentum (0.9)")
    opt.add_argument("--weight-decay", dest="weight_decay", type=float, default=S, help="(5e-4)")
    opt.add_argument("--nesterov", action="store_true", default=S)
    opt.add_argument("--label-smoothing", dest="label_smoothing", type=float, metavar="EPS", default=S,
                     help="label smoothing of the training loss, in [0, 1) (default: 0.1 on CPU "
                     "unless --lr-schedule is given, else 0)")
    opt.add_argument("--seed", type=int, default=S, help="seeds weights, data order, augmentation (0)")

    run = p.add_argument_group("execution")
    run.add_argument("--device", default=S, help="auto (CUDA if present), cpu, cuda, cuda:N")
    run.add_argument("--threads", type=_threads, metavar="N", default=S,
                     help="PyTorch threads, or auto (the default on a CPU): one per core that other "
                     "work leaves free, adapted when the load changes; a run whose number changes "
                     "is not bit-for-bit repeatable, one with --threads N is")
    run.add_argument("--precision", choices=PRECISIONS, default=S,
                     help="bf16: forward under bfloat16 autocast, loss and optimizer state in "
                     "float32 (default: bf16 on CUDA, fp32 on CPU); a resumed run keeps its own")
    run.add_argument("--bf16", dest="precision", action="store_const", const="bf16", default=S,
                     help=S)  # the older spelling of --precision bf16
    run.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                     default=S, help="channels-last (NHWC) memory format (default: on CUDA only)")
    run.add_argument("--compile", action="store_true", default=S,
                     help="compile the ODE functions and the network with torch.compile")
    run.add_argument("--deterministic", action="store_true", default=S,
                     help="deterministic algorithms, no cudnn.benchmark, no TF32: slower on GPUs, "
                     "the same bits every run, anode's gradients bit-identical to direct's "
                     "(see docs/gpu.md)")
    run.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", default=S,
                     help="keep per-process BatchNorm statistics under torchrun on GPUs")
    run.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, metavar="B", default=S)
    run.add_argument("--out", metavar="DIR", default=S, help="run folder (default runs/<name or timestamp>)")
    run.add_argument("--name", default=S, help="run name for the default run folder")
    run.add_argument("--resume", nargs="?", const=True, metavar="PATH", default=S,
                     help="continue from --out's last.pt, or from the given run folder / checkpoint")
    run.add_argument("--no-progress", dest="progress", action="store_false", default=S,
                     help="no progress bars or per-epoch lines")
    run.add_argument("--no-plots", dest="plots", action="store_false", default=S,
                     help="do not draw curves.png")
    p.set_defaults(run=run_train)


_EVALUATE_EPILOG = """\
examples:
  anode evaluate runs/x                        # last.pt of a run, on the run's test set
  anode evaluate runs/x --subset 0             # on all test images
  anode evaluate weights.pt --model resnet_ode_tiny   # a plain torch.save(model.state_dict())
"""


def _add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="test loss and accuracy of a saved model",
        description="Evaluate a model on its dataset's test set: a checkpoint written by `anode train` "
        "(or its run folder), a weights-only file, or a plain state_dict.",
        epilog=_EVALUATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a last.pt file or its run folder, or a file of weights (state_dict)")
    p.add_argument("--model", metavar="NAME", default=None,
                   help="model of a file that does not name it (a plain state_dict)")
    p.add_argument("--dataset", choices=("cifar10", "cifar100"), default=None,
                   help="dataset of a file that does not name it (default cifar10)")
    p.add_argument("--data-root", dest="data_root", metavar="DIR", default=None,
                   help="CIFAR folder (default: the run's, else the usual default)")
    p.add_argument("--download", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=500)
    p.add_argument("--subset", type=int, metavar="N", default=None,
                   help="N class-balanced test images; 0 = all (default: the run's test set)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 or bf16 (default: the run's, else bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=run_evaluate)


def register(subparsers) -> None:
    """Add the ``train`` and ``evaluate`` subcommands to the ``anode`` parser."""
    _add_train_parser(subparsers)
    _add_evaluate_parser(subparsers)


def _fail(command: str, exc: BaseException) -> int:
    print(f"anode {command}: error: {exc}", file=sys.stderr)
    return 2


def run_train(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, train
    from ..train.recipes import recipe_config

    given = {k: v for k, v in vars(args).items() if k not in ("command", "run")}
    given.setdefault("threads", "auto")  # see anode_workbench.train.threads
    start = time.perf_counter()
    try:
        name = given.pop("recipe", None)
        result = train(recipe_config(name, **given) if name else TrainConfig(**given))
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as exc:
        return _fail("train", exc)
    except KeyboardInterrupt:
        folder = given.get("out") or (f"runs/{given['name']}" if given.get("name") else "<run folder>")
        print(
            f"\nanode train: interrupted; last.pt keeps the last finished epoch, "
            f"continue with: anode train --out {folder} --resume",
            file=sys.stderr,
        )
        return 130
    wall = time.perf_counter() - start
    last = result.metrics[-1] if result.metrics else None
    rank = os.environ.get("RANK", "0")  # under torchrun, one summary (rank 0's) is enough
    if last is not None and result.config.progress and rank in ("", "0"):
        images = last.get("test_images")
        on = f" on {images} test images" if images else ""
        print(
            f"done: {last['epoch']} epochs, test accuracy {100 * last['test_acc']:.2f}%{on}, "
            f"test loss {last['test_loss']:.4f}; {wall // 60:.0f} min {wall % 60:.0f} s; "
            f"run folder {result.run_dir}"
        )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..train import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(
            args.checkpoint, data_root=args.data_root, device=args.device, batch_size=args.batch_size,
            precision=args.precision, subset=args.subset, download=args.download, model=args.model,
            dataset=args.dataset, progress=args.progress and not args.json,
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return _fail("evaluate", exc)
    if args.json:
        print(json.dumps(result))
        return 0
    if result["test_subset"]:
        whose = "the run's" if args.subset is None else "a"
        images = (f"{result['n_images']} test images, {whose} class-balanced subset; "
                  "--subset 0 for all")
    else:
        images = f"all {result['n_images']} test images"
    after = f" after {result['epoch']} epochs" if result["epoch"] is not None else ""
    print(
        f"{result['model_name']}{after} on {result['dataset']} ({images}): "
        f"test loss {result['test_loss']:.4f}, test accuracy {100 * result['test_acc']:.2f}%"
    )
    return 0
