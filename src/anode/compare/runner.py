"""Run the comparison: the plain residual network, and the same ODE network trained with the
discrete adjoint (``gradient="anode"``) and with the continuous adjoint
(``gradient="backsolve"``), with identical settings and seeds.

This reproduces the training experiment of the ANODE paper (Gholami, Keutzer, Biros,
IJCAI 2019, §4, Fig. 4–6 and the tables of the reference code's README): with the same
network and solver, ANODE trains to the accuracy of the plain network while the reverse-solve
adjoint of Chen et al. (NeurIPS 2018) ends lower or diverges.

Every run is an ordinary :func:`anode.train.train` run folder ``OUT/runs/<variant>-seed<k>``
(``anode train --resume`` and ``anode evaluate`` work on it). ``OUT/compare.json`` holds the
comparison's settings. Running the same comparison again skips finished runs and resumes
unfinished ones from their last epoch (more seeds or variants extend it); a run whose loss
became NaN/inf is recorded as diverged (``diverged.json`` in its folder) and not retried.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import atomic_write

__all__ = [
    "CompareSpec",
    "VARIANTS",
    "load_spec",
    "run_compare",
    "run_folder",
    "run_one",
    "run_status",
]

VARIANTS = ("plain", "anode", "backsolve")
"""What is compared: the plain residual baseline, the ODE network with the discrete adjoint
(exact gradient, ANODE) and with the continuous adjoint (reverse solve, Chen et al.)."""

FAMILIES = {
    ("resnet", "small"): ("resnet_small", "resnet_ode_small"),
    ("resnet", "full"): ("resnet18", "resnet18_ode"),
    ("sqnxt", "small"): ("sqnxt_small", "sqnxt_ode_small"),
    ("sqnxt", "full"): ("sqnxt23", "sqnxt23_ode"),
}
"""(family, size) → (plain baseline, ODE network), names of :func:`anode.models.create`."""

SPEC_NAME = "compare.json"
DIVERGED_NAME = "diverged.json"

# Settings that steer how the comparison executes, not what it computes; they may change
# between a comparison and its continuation.
RUNTIME_FIELDS = ("data_root", "device", "jobs", "progress", "epochs")


@dataclass
class CompareSpec:
    """The settings of one comparison (``anode compare``'s flags).

    Attributes:
        family: ``"resnet"`` (ODE-ResNet) or ``"sqnxt"`` (ODE-SqueezeNext).
        size: ``"small"`` (the quarter-width CPU members) or ``"full"`` (ResNet-18,
            SqueezeNext-23).
        method: Runge–Kutta method of the ODE blocks (``euler``, ``midpoint``, ``rk4``, ...).
        n_steps: N_t, steps per ODE block.
        dataset: ``"cifar10"`` or ``"cifar100"``.
        data_root: CIFAR folder (``None``: :func:`anode.train.default_data_root`).
        seeds: the seeds every variant is trained with.
        variants: a subset of :data:`VARIANTS`.
        epochs, batch_size, lr, lr_schedule, lr_milestones, momentum, weight_decay, subset,
            test_subset, augment: as in :class:`anode.train.TrainConfig`, the same for all runs.
        grad_batch: images of the fixed batch on which the gradient error is recorded.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        jobs: runs trained at the same time, in separate processes (each with
            ``cpu_count // jobs`` threads on a CPU).
        progress: progress bars and per-epoch lines.
    """

    family: str = "resnet"
    size: str = "small"
    method: str = "euler"
    n_steps: int = 2
    dataset: str = "cifar10"
    data_root: str | None = None
    seeds: tuple[int, ...] = (0, 1)
    variants: tuple[str, ...] = VARIANTS
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    lr_schedule: str = "cosine"
    lr_milestones: tuple[int, ...] | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    subset: int = 0
    test_subset: int = 0
    augment: bool = True
    grad_batch: int = 64
    device: str = "auto"
    jobs: int = 1
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raises ValueError naming the first invalid setting (the training settings are
        checked again by :meth:`anode.train.TrainConfig.check`)."""
        if (self.family, self.size) not in FAMILIES:
            raise ValueError(
                f"family/size must be one of {sorted(FAMILIES)}, got ({self.family!r}, {self.size!r})"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {list(self.seeds)}")
        if any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be integers >= 0, got {list(self.seeds)}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(
                f"variants must be distinct names among {list(VARIANTS)}, got {list(self.variants)}"
            )
        for name in ("grad_batch", "jobs", "n_steps", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for seed in self.seeds[:1]:
            for variant in self.variants:
                self.train_config(variant, seed, Path(".")).check()

    @property
    def models(self) -> tuple[str, str]:
        """(plain baseline, ODE network) model names."""
        return FAMILIES[(self.family, self.size)]

    def train_config(self, variant: str, seed: int, out: str | os.PathLike[str]):
        """The :class:`anode.train.TrainConfig` of one run, folder ``out/runs/<variant>-seed<k>``.

        Raises:
            ValueError: unknown variant.
        """
        from ..train import TrainConfig

        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose among {list(VARIANTS)}")
        plain, ode = self.models
        ode_opts: dict[str, Any] = {}
        if variant != "plain":
            ode_opts = {"method": self.method, "n_steps": self.n_steps, "gradient": variant}
        return TrainConfig(
            dataset=self.dataset, data_root=self.data_root, model=plain if variant == "plain" else ode,
            **ode_opts, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            lr_schedule=self.lr_schedule, lr_milestones=self.lr_milestones, momentum=self.momentum,
            weight_decay=self.weight_decay, subset=self.subset, test_subset=self.test_subset,
            augment=self.augment, seed=seed, device=self.device, out=str(run_folder(out, variant, seed)),
            resume=True, progress=self.progress and self.jobs == 1, plots=False,
            extra={"compare": {"variant": variant, "seed": seed}},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (lists for tuples), as written to ``OUT/compare.json``."""
        d = dataclasses.asdict(self)
        for k in ("seeds", "variants", "lr_milestones"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompareSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown keys.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown comparison settings {unknown}")
        d = dict(d)
        for k in ("seeds", "variants", "lr_milestones"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def run_folder(out: str | os.PathLike[str], variant: str, seed: int) -> Path:
    """``out/runs/<variant>-seed<seed>``."""
    return Path(out) / "runs" / f"{variant}-seed{seed}"


def load_spec(out: str | os.PathLike[str]) -> CompareSpec:
    """The settings saved in ``out/compare.json``.

    Raises:
        FileNotFoundError: no comparison in ``out``.
    """
    path = Path(out) / SPEC_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no comparison at {out} ({SPEC_NAME} missing)")
    return CompareSpec.from_dict(json.loads(path.read_text()))


def _read_metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_status(folder: str | os.PathLike[str], epochs: int) -> str:
    """``"done"``, ``"diverged"``, ``"partial"`` (some epochs finished) or ``"new"``."""
    folder = Path(folder)
    if (folder / DIVERGED_NAME).is_file():
        return "diverged"
    n = len(_read_metrics(folder))
    if n >= epochs:
        return "done"
    return "partial" if n else "new"


def _save_spec(spec: CompareSpec, out: Path) -> None:
    path = out / SPEC_NAME
    if path.is_file():
        old = CompareSpec.from_dict(json.loads(path.read_text())).to_dict()
        new = spec.to_dict()
        merged = ("seeds", "variants")
        clashes = [k for k in new if k not in RUNTIME_FIELDS + merged and old.get(k) != new[k]]
        if clashes:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in clashes)
            raise ValueError(f"{out} holds a comparison with other settings ({diffs}); choose another --out")
        # Further seeds or variants extend the comparison; the report covers all of them.
        seeds = tuple(dict.fromkeys([*old["seeds"], *new["seeds"]]))
        variants = tuple(v for v in VARIANTS if v in old["variants"] or v in new["variants"])
        spec = dataclasses.replace(spec, seeds=seeds, variants=variants)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(spec.to_dict(), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def run_one(spec: CompareSpec, variant: str, seed: int, out: str | os.PathLike[str]) -> str:
    """Train (or resume, or skip) one run of the comparison.

    For the ODE variants a :class:`~anode.compare.gradient_record.GradientErrorCallback`
    records, after every epoch, the relative error of backsolve's (and, as a check,
    anode's) parameter gradient against the exact one on ``spec.grad_batch`` fixed training
    images.

    Returns:
        The run's status afterwards: ``"done"``, ``"diverged"`` (the loss became NaN or
        infinite; ``diverged.json`` holds the epoch and message) or ``"skipped-diverged"``.

    Raises:
        ValueError, FileNotFoundError, anode.data.DatasetError: as :func:`anode.train.train`.
    """
    from ..train import train

    folder = run_folder(out, variant, seed)
    status = run_status(folder, spec.epochs)
    if status == "diverged":
        return "skipped-diverged"
    if status == "done":
        return "done"
    config = spec.train_config(variant, seed, out)
    callbacks = []
    if variant != "plain":
        callbacks.append(_gradient_callback(spec, config))
    try:
        train(config, callbacks=callbacks)
    except FloatingPointError as exc:
        n = len(_read_metrics(folder))
        text = json.dumps({"epoch": n + 1, "message": str(exc)}, indent=2) + "\n"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / DIVERGED_NAME, lambda f: f.write(text.encode()))
        return "diverged"
    return "done"


def _gradient_callback(spec: CompareSpec, config):
    from ..data import load_cifar
    from ..train import default_data_root
    from .gradient_record import GradientErrorCallback, fixed_batch

    root = config.data_root or default_data_root(config.dataset)
    arrays = load_cifar(config.dataset, root, train=True)
    images, labels = fixed_batch(arrays, spec.grad_batch)
    # Only the small batch is kept, so that the training split is not held twice in memory
    # (the runs' peak memory is compared).
    del arrays
    return GradientErrorCallback(images, labels, tested=("backsolve", "anode"))


def _worker(args: tuple[dict[str, Any], str, int, str, int]) -> tuple[str, int, str, float]:
    spec_dict, variant, seed, out, threads = args
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    status = run_one(CompareSpec.from_dict(spec_dict), variant, seed, out)
    return variant, seed, status, time.perf_counter() - start


def run_compare(
    spec: CompareSpec,
    out: str | os.PathLike[str],
    log: Callable[[str], None] | None = None,
) -> dict[tuple[str, int], str]:
    """Train every (variant, seed) run of ``spec`` under ``out`` (skipping finished runs,
    resuming unfinished ones), then write the report (:func:`anode.compare.report.write_report`).

    Runs are ordered seed by seed (all variants of the first seed first), so an interrupted
    comparison has comparable runs. With ``spec.jobs > 1`` that many runs train at once in
    separate processes.

    Returns:
        ``{(variant, seed): status}`` (see :func:`run_one`).

    Raises:
        ValueError: invalid settings; ``out`` holds a comparison with other settings.
        FileNotFoundError, anode.data.DatasetError: missing data.
    """
    from .report import write_report

    log = log or (lambda msg: print(msg, file=sys.stderr))
    spec.check()
    out = Path(out)
    _save_spec(spec, out)
    plan = [(v, s) for s in spec.seeds for v in spec.variants]
    todo = [(v, s) for v, s in plan if run_status(run_folder(out, v, s), spec.epochs) in ("new", "partial")]
    log(f"comparison in {out}: {len(plan)} runs, {len(plan) - len(todo)} finished, {len(todo)} to train")
    statuses: dict[tuple[str, int], str] = {}
    if spec.jobs == 1 or len(todo) <= 1:
        for variant, seed in plan:
            start = time.perf_counter()
            status = statuses[(variant, seed)] = run_one(spec, variant, seed, out)
            if (variant, seed) in todo:
                log(f"{variant}-seed{seed}: {status} ({time.perf_counter() - start:.0f} s)")
    else:
        statuses.update(_run_parallel(spec, out, plan, todo, log))
    write_report(out, log=log)
    return statuses


def _run_parallel(
    spec: CompareSpec, out: Path, plan: Sequence[tuple[str, int]], todo: Sequence[tuple[str, int]], log
) -> dict[tuple[str, int], str]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    statuses = {(v, s): run_status(run_folder(out, v, s), spec.epochs) for v, s in plan}
    jobs = min(spec.jobs, len(todo))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # Separate processes (spawned: no inherited threads or CUDA state) each train one run.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_worker, (spec.to_dict(), v, s, str(out), threads)) for v, s in todo]
        for fut in as_completed(futures):
            variant, seed, status, seconds = fut.result()
            statuses[(variant, seed)] = status
            log(f"{variant}-seed{seed}: {status} ({seconds:.0f} s)")
    return statuses
