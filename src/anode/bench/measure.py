"""Peak memory and time of one forward+backward, measured the same way for every method.

Conventions (DESIGN.md): on CUDA, memory is the allocator's peak
(``torch.cuda.max_memory_allocated``) minus what was allocated before the step; on CPU it
is the peak resident set size of the process (``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident size before the step. Each configuration runs
in a fresh subprocess (:func:`run_isolated`) with glibc's mmap threshold fixed, so that
freed tensors go back to the operating system and the resident size tracks live tensors.
Time is the median of repeats after warm-up. Report ratios measured in one run.

The fixed mmap threshold has a price: every large tensor is a fresh mapping whose pages the
kernel zeroes on first touch, which made forward+backward of a convolutional ODE block about
2.5x slower on CPU here, and not by the same factor for every method (those that allocate more
often pay more). Time on CPU is therefore best measured in a separate process with glibc's
default allocator settings (``run_isolated(..., malloc_env=False)``).
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

# glibc raises its mmap threshold after large frees unless it is set explicitly; then freed
# activations stay in the heap and the resident size no longer tracks live memory.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(step: Callable[[], None], device: torch.device | str = "cpu") -> int:
    """Extra peak memory (bytes) of one call of ``step`` over what was in use before it.

    Args:
        step: runs one forward+backward; must not keep references to what it allocates.
        device: where the tensors live: ``cuda`` uses the caching allocator's statistics,
            ``cpu`` the process's resident set size (Linux only; run it in a fresh process
            started by :func:`run_isolated`).

    Raises:
        RuntimeError: CPU measurement on a system without ``/proc/self/clear_refs``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _proc_status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        raise RuntimeError("CPU peak memory needs Linux's /proc/self/clear_refs") from exc
    step()
    return (_proc_status_kib("VmHWM") - before) * 1024


def median_time(
    step: Callable[[], None], device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 3
) -> float:
    """Median wall time (seconds) of ``repeats`` calls of ``step`` after ``warmup`` calls."""
    return median_times(step, device, warmup, repeats)["wall"]


def median_times(
    step: Callable[[], None], device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 3
) -> dict[str, float]:
    """Median wall time and median CPU time (seconds) of ``repeats`` calls of ``step`` after
    ``warmup`` calls, taken from the same calls.

    Returns:
        ``{"wall": ..., "cpu": ...}``; ``cpu`` is the process's CPU time
        (``time.process_time``, all its threads). With one thread and work on the CPU it
        equals the wall time on an idle machine and, unlike the wall time, does not grow when
        other processes compete for the cores; with work on a GPU it is only the host's share.
    """
    device = torch.device(device)
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(repeats):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def prepare(threads: int, device: str, seed: int) -> torch.device:
    """Set the thread count (when positive) and the seed; return the checked device.

    Raises:
        RuntimeError: ``device`` is CUDA but CUDA is not available.
    """
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but CUDA is not available")
    torch.manual_seed(seed)
    return dev


def interleaved_times(steps: dict[str, Callable[[], None]], device: torch.device | str = "cpu",
                      repeats: int = 5) -> dict[str, dict[str, float]]:
    """Median wall and CPU time (seconds) of each labelled step, timed in ``repeats`` rounds
    that run every step once in a rotating order, so that changing load from other processes
    falls on all steps alike.

    Returns:
        label → ``{"seconds": wall, "cpu_seconds": cpu}``.
    """
    labels = list(steps)
    wall = {k: [] for k in labels}
    cpu = {k: [] for k in labels}
    for r in range(repeats):
        for label in (labels[r % len(labels):] + labels[: r % len(labels)]) if labels else []:
            t = median_times(steps[label], device, warmup=0, repeats=1)
            wall[label].append(t["wall"])
            cpu[label].append(t["cpu"])
    return {k: {"seconds": statistics.median(wall[k]), "cpu_seconds": statistics.median(cpu[k])}
            for k in labels}


def run_isolated(target: str, timeout: float = 1800, malloc_env: bool = True, **kwargs) -> dict:
    """Call ``module:function(**kwargs)`` in a fresh Python process and return its dict.

    The function must return a JSON-serialisable dict. The child gets the parent's
    ``sys.path`` and, with ``malloc_env`` (for memory measurements), glibc's mmap threshold
    fixed (see module docstring).

    Raises:
        RuntimeError: the child failed (its stderr is included) or timed out.
    """
    code = (
        "import json, sys, importlib\n"
        "mod, fn = sys.argv[1].split(':')\n"
        "res = getattr(importlib.import_module(mod), fn)(**json.loads(sys.argv[2]))\n"
        "sys.stdout.write('\\n@@RESULT@@' + json.dumps(res))\n"
    )
    env = {**os.environ, **(_MALLOC_ENV if malloc_env else {}),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, target, json.dumps(kwargs)],
            capture_output=True, text=True, env=env, timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{target}({kwargs}) timed out after {timeout} s") from exc
    if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
        raise RuntimeError(f"{target}({kwargs}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])


def resolve(target: str) -> Callable:
    """``'module:function'`` → the function."""
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)
