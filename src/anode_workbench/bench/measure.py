"""Peak memory and time of one forward+backward, measured the same way for every method.

Conventions (DESIGN.md): on CUDA, memory is the allocator's peak
(``torch.cuda.max_memory_allocated``) minus what was allocated before the step; on CPU it
is the peak resident set size of the process (``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident size before the step. Each configuration runs
in a fresh process (:class:`anode_workbench.bench.isolation.Isolated`) with glibc's mmap threshold
fixed, so that freed tensors go back to the operating system and the resident size tracks
live tensors. The kernel keeps the resident size in per-CPU counters that it sums
approximately, so on CPU a step whose peak is a few pages can read as a few pages below
zero. Time is the median of repeats after warm-up. Report ratios measured in one run.

The fixed mmap threshold has a price: every large tensor is a fresh mapping whose pages the
kernel zeroes on first touch, which slows forward+backward of a convolutional ODE block down
on CPU (``docs/benchmarks.md`` gives the measured factor), and not by the same factor for
every method (those that allocate more often pay more). Time on CPU is therefore measured
in a separate process (:data:`ALLOCATORS`): with glibc's default settings, or, where methods
are compared to a few percent, with freed memory kept for reuse (``"reuse"``). Under the
defaults glibc gives the top of its heap back to the operating system whenever more than a
threshold is free there, and sets that threshold from the largest block freed so far; a
step's temporaries are then faulted in anew, or not, depending on the order of earlier
allocations: on one convolutional block (``docs/benchmarks.md``, the frontier) two methods
doing the same arithmetic but for one layer a step took 38,000 and 7,300 page faults per
forward+backward (``scripts/page_faults.py``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

# glibc raises its mmap threshold after large frees unless it is set explicitly; then freed
# activations stay in the heap and the resident size no longer tracks live memory.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

# Below 32 MiB (glibc's largest mmap threshold) every block comes from the heap, and the heap
# is never trimmed: pages once touched stay, as a caching allocator keeps them.
REUSE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}

ALLOCATORS = {"fresh": MALLOC_ENV, "reuse": REUSE_ENV, "default": {}}
"""glibc settings of a measurement process by name: ``fresh`` (memory: freed tensors go back
to the OS at once), ``reuse`` (time compared to a few percent: no page is given back),
``default`` (glibc's own, as a user runs: ``MALLOC_*`` variables the caller set stay)."""


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
            ``cpu`` the process's resident set size (Linux only; run it in a fresh process,
            see :mod:`anode_workbench.bench.isolation`).

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
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        raise RuntimeError("CPU peak memory needs Linux's /proc/self/clear_refs") from exc
    # Read after the reset: the peak since the reset is at least the resident size at any
    # moment after it, so pages freed in between cannot make the difference negative.
    before = _proc_status_kib("VmRSS")
    step()
    return (_proc_status_kib("VmHWM") - before) * 1024


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
        label → ``{"seconds": wall, "cpu_seconds": cpu, "wall_rounds": [...], "cpu_rounds": [...]}``:
        the medians, and the time of each round (in round order), from which two methods are
        compared round by round (a ratio per round, whose median drifting load moves less).
    """
    labels = list(steps)
    wall = {k: [] for k in labels}
    cpu = {k: [] for k in labels}
    for r in range(repeats):
        for label in (labels[r % len(labels):] + labels[: r % len(labels)]) if labels else []:
            t = median_times(steps[label], device, warmup=0, repeats=1)
            wall[label].append(t["wall"])
            cpu[label].append(t["cpu"])
    return {k: {"seconds": statistics.median(wall[k]), "cpu_seconds": statistics.median(cpu[k]),
                "wall_rounds": wall[k], "cpu_rounds": cpu[k]} for k in labels}


def time_methods(builders: Mapping[str, Callable[[], Callable[[], None]]], device: torch.device | str = "cpu",
                 repeats: int = 3) -> dict[str, dict]:
    """Build each labelled step, run it once as a warm-up, then time all of them together with
    :func:`interleaved_times`.

    Args:
        builders: label → a function that builds the workload and returns its step.
        device, repeats: as :func:`interleaved_times`.

    Returns:
        label → the times of :func:`interleaved_times`, or ``{"error": message}`` for a label whose
        build or warm-up raised (one failing method must not lose the others' times).
    """
    steps, results = {}, {}
    for label, build in builders.items():
        try:
            step = build()
            step()
        except Exception as exc:
            results[label] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        steps[label] = step
    results.update(interleaved_times(steps, device, repeats))
    return results
