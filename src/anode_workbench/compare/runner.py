"""Run the comparison: the plain residual network, and the same ODE network trained with the
discrete adjoint (``gradient="anode"``) and with the continuous adjoint
(``gradient="backsolve"``), with identical settings and seeds.

This reproduces the training experiment of the ANODE paper (Gholami, Keutzer, Biros,
IJCAI 2019, §4, Fig. 4–6 and the tables of the reference code's README): with the same
network and solver, ANODE trains to the accuracy of the plain network while the reverse-solve
adjoint of Chen et al. (NeurIPS 2018) ends lower or diverges.

Every run is an ordinary :func:`anode_workbench.train.train` run folder ``OUT/runs/<variant>-seed<k>``
(``anode train --resume`` and ``anode evaluate`` work on it). ``OUT/compare.json`` holds the
comparison's settings. Running the same comparison again skips finished runs and resumes
unfinished ones from their last epoch (more seeds or variants extend it); a run whose loss
became NaN/inf is recorded as diverged (``diverged.json`` in its folder) and not retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write
from .layout import DIVERGED_NAME, SPEC_NAME, read_metrics, run_folder
from .report import write_report
from .spec import RUNTIME_FIELDS, VARIANTS, CompareSpec

__all__ = ["run_compare", "run_one", "run_status"]


def run_status(folder: str | os.PathLike[str], epochs: int) -> str:
    """``"done"``, ``"diverged"``, ``"partial"`` (some epochs finished) or ``"new"``."""
    folder = Path(folder)
    if (folder / DIVERGED_NAME).is_file():
        return "diverged"
    n = len(read_metrics(folder))
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

    For the ODE variants a :class:`~anode_workbench.compare.gradient_record.GradientErrorCallback`
    records, after every epoch, the relative error of backsolve's (and, as a check,
    anode's) parameter gradient against the exact one on ``spec.grad_batch`` fixed training
    images.

    Returns:
        The run's status afterwards: ``"done"``, ``"diverged"`` (the loss became NaN or
        infinite; ``diverged.json`` holds the epoch and message) or ``"skipped-diverged"``.

    Raises:
        ValueError, FileNotFoundError, anode_workbench.data.DatasetError: as
        :func:`anode_workbench.train.train`.
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
        n = len(read_metrics(folder))
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


def _worker(args: tuple[dict[str, Any], str, int, str, int], results) -> None:
    spec_dict, variant, seed, out, threads = args
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    status = run_one(CompareSpec.from_dict(spec_dict), variant, seed, out)
    results.put((variant, seed, status, time.perf_counter() - start))


def run_compare(
    spec: CompareSpec,
    out: str | os.PathLike[str],
    log: Callable[[str], None] | None = None,
) -> dict[tuple[str, int], str]:
    """Train every (variant, seed) run of ``spec`` under ``out`` (skipping finished runs,
    resuming unfinished ones), then write the report (:func:`anode_workbench.compare.report.write_report`).

    Runs are ordered seed by seed (all variants of the first seed first), so an interrupted
    comparison has comparable runs. With ``spec.jobs > 1`` that many runs train at once in
    separate processes.

    An interrupt (``KeyboardInterrupt``, SIGINT) stops training, whose finished epochs are
    already saved; the report of those epochs is still written, with further SIGINTs held
    back until it is complete, and then the ``KeyboardInterrupt`` propagates.

    Returns:
        ``{(variant, seed): status}`` (see :func:`run_one`).

    Raises:
        ValueError: invalid settings; ``out`` holds a comparison with other settings.
        FileNotFoundError, anode_workbench.data.DatasetError: missing data.
        KeyboardInterrupt: after the report, when training was interrupted.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    spec.check()
    out = Path(out)
    _save_spec(spec, out)
    plan = [(v, s) for s in spec.seeds for v in spec.variants]
    todo = [(v, s) for v, s in plan if run_status(run_folder(out, v, s), spec.epochs) in ("new", "partial")]
    log(f"comparison in {out}: {len(plan)} runs, {len(plan) - len(todo)} finished, {len(todo)} to train")
    statuses: dict[tuple[str, int], str] = {}
    try:
        if spec.jobs == 1 or len(todo) <= 1:
            for variant, seed in plan:
                start = time.perf_counter()
                status = statuses[(variant, seed)] = run_one(spec, variant, seed, out)
                if (variant, seed) in todo:
                    log(f"{variant}-seed{seed}: {status} ({time.perf_counter() - start:.0f} s)")
        else:
            statuses.update(_run_parallel(spec, out, plan, todo, log))
    except KeyboardInterrupt:
        log("interrupted: writing the report of the finished epochs")
        with _sigint_held():
            write_report(out, log=log)
        raise
    with _sigint_held():
        write_report(out, log=log)
    return statuses


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold SIGINT back while the block runs and raise ``KeyboardInterrupt`` after it, so that
    a time limit or a Ctrl-C does not leave the report half drawn. Only the main thread can
    handle signals; elsewhere the block runs unprotected."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _run_parallel(
    spec: CompareSpec, out: Path, plan: Sequence[tuple[str, int]], todo: Sequence[tuple[str, int]], log
) -> dict[tuple[str, int], str]:
    import multiprocessing as mp
    from multiprocessing.connection import wait

    statuses = {(v, s): run_status(run_folder(out, v, s), spec.epochs) for v, s in plan}
    jobs = min(spec.jobs, len(todo))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # One spawned process per run (no inherited threads or CUDA state), at most `jobs` at a
    # time, started here one by one: an interrupt then stops the running ones and starts no
    # other (a process pool would already have queued the next runs).
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    pending = list(todo)
    running: dict = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                variant, seed = pending.pop(0)
                task = (spec.to_dict(), variant, seed, str(out), threads)
                process = ctx.Process(target=_worker, args=(task, results))
                process.start()
                running[process.sentinel] = (process, variant, seed)
            for sentinel in wait(list(running)):
                process, variant, seed = running.pop(sentinel)
                process.join()
                if process.exitcode != 0:
                    raise RuntimeError(f"run {variant}-seed{seed} failed (exit code {process.exitcode}); "
                                       "its error is printed above")
            while not results.empty():
                variant, seed, status, seconds = results.get()
                statuses[(variant, seed)] = status
                log(f"{variant}-seed{seed}: {status} ({seconds:.0f} s)")
    except BaseException:
        # Every finished epoch is saved atomically: stopping a run mid-epoch loses that epoch.
        for process, _, _ in running.values():
            process.terminate()
        for process, _, _ in running.values():
            process.join()
        raise
    return statuses
