"""``anode compare``: train the plain network, ANODE and the continuous adjoint side by side
with identical settings and seeds, and report (see :mod:`anode_workbench.compare`, ``docs/results.md``)."""

from __future__ import annotations

import argparse
import sys

from ._arguments import add_recipe_argument, int_list, name_list

__all__ = ["register"]

_EPILOG = """\
Runs go to OUT/runs/<variant>-seed<k> (ordinary `anode train` run folders); re-running the
same command skips finished runs and resumes unfinished ones. Outputs in OUT:
compare_curves.png, compare_gradient_error.png, compare_table.md, summary.json.

presets and recipes (flags override them; a recipe's training settings override the preset's):
  cpu        resnet small, euler N_t=2, 1,280 CIFAR-10 images, 5 epochs, seeds 0,1,2, 2 jobs
  paper      ODE-ResNet-18, euler N_t=2, 350 epochs, batch 256, lr 0.1 (x0.1 at 150, 250), seeds 0,1,2
  gpu-short  ODE-ResNet-18 on a 20,000-image subset, 5 epochs, seeds 0,1 (scripts/gpu_compare.sh)
  --recipe fast  the training settings of `anode train --recipe fast` (20 epochs, batch 512,
             one-cycle lr 0.4, nesterov, label smoothing 0.1) for every run

examples:
  anode compare --preset cpu --out runs/compare-cpu
  anode compare --preset cpu --dataset cifar100 --data-root data --out runs/c100
  anode compare --family sqnxt --method rk4 --n-steps 1 --epochs 10 --out runs/sq
  anode compare --recipe fast --family resnet --size full --seeds 0 --jobs 3 --device cuda
  anode compare --report-only runs/compare-cpu
"""


def register(subparsers) -> None:
    """Add the ``compare`` subcommand to the ``anode`` parser."""
    p = subparsers.add_parser(
        "compare",
        help="plain network vs ANODE vs continuous adjoint, trained side by side",
        description="Reproduce the ANODE paper's comparison: train the plain residual network and the "
        "ODE network with gradient=anode and gradient=backsolve, identical settings and seeds; "
        "record backsolve's gradient error every epoch; plot and tabulate.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    S = argparse.SUPPRESS
    p.add_argument("--preset", choices=("cpu", "paper", "gpu-short"), default=None)
    add_recipe_argument(p, "train every run with the training settings of a recipe of `anode train "
                        "--recipe` (the network comes from --family/--size); --recipe list describes them")
    p.add_argument("--out", metavar="OUT", default=None,
                   help="comparison folder (default runs/compare-<preset>)")
    p.add_argument("--report-only", dest="report_only", metavar="OUT", default=None,
                   help="only redraw plots and table from the run folders in OUT")
    m = p.add_argument_group("network and solver")
    m.add_argument("--family", choices=("resnet", "sqnxt"), default=S)
    m.add_argument("--size", choices=("small", "full"), default=S)
    m.add_argument("--method", metavar="NAME", default=S, help="euler, midpoint, rk4, ...")
    m.add_argument("--n-steps", dest="n_steps", type=int, metavar="N_t", default=S)
    m.add_argument("--variants", type=name_list, default=S,
                   help="comma-separated among plain,anode,backsolve")
    d = p.add_argument_group("data and training (the same for every run)")
    d.add_argument("--dataset", choices=("cifar10", "cifar100"), default=S)
    d.add_argument("--data-root", dest="data_root", metavar="DIR", default=S)
    d.add_argument("--seeds", type=int_list(0), default=S, help="comma-separated, e.g. 0,1")
    d.add_argument("--epochs", type=int, default=S)
    d.add_argument("--batch-size", dest="batch_size", type=int, default=S)
    d.add_argument("--lr", type=float, default=S)
    d.add_argument("--lr-schedule", dest="lr_schedule", choices=("step", "cosine", "onecycle", "constant"),
                   default=S)
    d.add_argument("--lr-milestones", dest="lr_milestones", type=int_list(0), default=S)
    d.add_argument("--weight-decay", dest="weight_decay", type=float, default=S)
    d.add_argument("--nesterov", action="store_true", default=S)
    d.add_argument("--label-smoothing", dest="label_smoothing", type=float, metavar="EPS", default=S)
    d.add_argument("--subset", type=int, default=S, help="training images (0 = all)")
    d.add_argument("--test-subset", dest="test_subset", type=int, default=S, help="test images (0 = all)")
    d.add_argument("--epoch-test-subset", dest="epoch_test_subset", type=int, metavar="N", default=S,
                   help="test images evaluated after each epoch but the last (0 = the whole test set)")
    d.add_argument("--no-augment", dest="augment", action="store_false", default=S)
    d.add_argument("--grad-batch", dest="grad_batch", type=int, default=S,
                   help="images of the fixed batch for the gradient error")
    r = p.add_argument_group("execution")
    r.add_argument("--device", default=S, help="auto, cpu, cuda, cuda:N")
    r.add_argument("--jobs", type=int, default=S, help="runs trained at once (separate processes)")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    p.set_defaults(run=run_compare_command)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_compare_command(args: argparse.Namespace) -> int:
    """Run (or only report) the comparison; 0 on success, 2 on bad settings or missing data,
    130 when interrupted (after the report of the finished epochs is written)."""
    from ..compare import CompareSpec, preset, run_compare, write_report
    from ..data import DatasetError
    from ..train.recipes import training_settings

    try:
        if args.report_only is not None:
            write_report(args.report_only, log=print)
            return 0
        settings = preset(args.preset) if args.preset else {}
        recipe = getattr(args, "recipe", None)
        if recipe:
            settings.update(training_settings(recipe))
            settings["extra"] = {"recipe": recipe}
        given = {
            k: v for k, v in vars(args).items()
            if k not in ("command", "run", "preset", "recipe", "out", "report_only")
        }
        settings.update(given)
        spec = CompareSpec(**settings)
        out = args.out or f"runs/compare-{args.preset or recipe or 'custom'}"
        statuses = run_compare(spec, out, log=_log)
    except (ValueError, TypeError, FileNotFoundError, DatasetError) as exc:
        print(f"anode compare: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _log("anode compare: interrupted; the report covers the finished epochs, and running the "
             "same command again resumes")
        return 130
    bad = [f"{v}-seed{s}" for (v, s), st in statuses.items() if "diverged" in st]
    if bad:
        _log(f"diverged (loss NaN/inf): {', '.join(bad)}")
    return 0
