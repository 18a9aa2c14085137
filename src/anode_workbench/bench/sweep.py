"""The measurement loop shared by the benchmarks: groups of methods measured in fresh processes.

A group is what one table compares: the gradient methods of one configuration (an ODE-block
stack at one ``(N_t, L)``, one registered model). For each method of a group, one process
measures the peak memory of one step after a warm-up and saves the warm-up's result tensors
(``torch.save`` of a dict of flat tensors, e.g. ``{"output", "grad"}``), which are compared
with those of the group's first method (the reference, ``direct``); then one process times
every method of the group, interleaved, so that changing load from other work on the machine
does not fall on some methods only (see :func:`anode_workbench.bench.measure.interleaved_times`).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..diagnostics import relative_error
from .isolation import measurement_servers

CLOCKS = ("wall", "cpu")


@dataclass
class Entry:
    """One method of a group.

    Attributes:
        row: the table row to fill; ``row["method"]`` is the method's label.
        memory: keyword arguments of the memory target (besides ``save``).
        timing: the method's options, passed to the time target as ``methods[label]``.
        exact: whether its results must equal the reference's (``row["equal"]``).
    """

    row: dict
    memory: dict
    timing: dict | None = field(default_factory=dict)
    exact: bool = True


def _last_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1]


class Sweep:
    """Measures groups of methods, each in fresh processes (see the module docstring).

    Use as a context manager; the processes live as long as the ``with`` block.

    Args:
        memory_target: ``"module:function"`` returning ``{"peak_bytes", ...}`` and saving its
            warm-up's results to the path given as ``save``.
        time_target: ``"module:function"`` taking ``methods`` (label → options) and returning
            label → ``{"seconds", "cpu_seconds"}`` or ``{"error"}``.
        preload: modules the fork servers import once.
        isolation: ``"fork"`` or ``"spawn"`` (see :class:`anode_workbench.bench.isolation.Isolated`).
        clock: the time compared (``row["time_s"]``): ``"wall"``, or ``"cpu"`` (the
            measurement process's CPU time, robust on a machine shared with other work when
            each measurement runs one thread on the CPU; see
            :func:`~anode_workbench.bench.measure.median_times`).
        separate_timing: time in processes with glibc's default allocator settings rather
            than those of the memory measurements, which slow CPU work (see
            :mod:`anode_workbench.bench.measure`); default: unless ``device`` is CUDA.
        device: where the workloads run.
        tol: relative difference (2-norm) of every saved result up to which an exact method
            equals the reference.
        default_malloc: on CPU also measure each method's first-step peak under glibc's
            default allocator (the memory target must take ``measure="first"``).
        log: called with one line of progress per measurement.

    Raises:
        ValueError: unknown isolation or clock.
    """

    def __init__(self, memory_target: str, time_target: str, *, preload: list[str], isolation: str = "fork",
                 clock: str = "wall", separate_timing: bool | None = None, device: str = "cpu",
                 tol: float = 1e-5, default_malloc: bool = False, log: Callable[[str], None] = print) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; choose one of {CLOCKS}")
        if separate_timing is None:
            separate_timing = not str(device).startswith("cuda")
        self.memory_target, self.time_target = memory_target, time_target
        self.preload, self.isolation, self.separate_timing = preload, isolation, separate_timing
        self.clock, self.tol, self.log, self.default_malloc = clock, tol, log, default_malloc
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Sweep:
        self._started = time.perf_counter()
        tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="anode-bench-"))
        self._save = str(Path(tmp) / "results.pt")
        try:
            self._memory, self._time = measurement_servers(self._stack, self.isolation, self.preload,
                                                           self.separate_timing)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def memory(self, **kwargs) -> dict:
        """One call of the memory target with ``kwargs``, in a fresh process, with nothing
        compared or timed (a further measurement of a method, e.g. of its forward alone).

        Raises:
            RuntimeError: as :meth:`anode_workbench.bench.isolation.Isolated.run`.
        """
        return self._memory.run(self.memory_target, **kwargs)

    def say(self, text: str) -> None:
        """Log one line, prefixed with the seconds since the sweep started."""
        self.log(f"[{time.perf_counter() - self._started:6.0f} s] {text}")

    def group(self, name: str, entries: list[Entry], timing: dict, compare: bool = True,
              floor: dict | None = None) -> None:
        """Measure one group; fills each entry's row in place.

        Rows get ``peak_bytes`` and what else the memory target returns (on CPU also
        ``peak_default_bytes``, the peak under glibc's default allocator); with ``compare``,
        ``<key>_rel_diff`` for every saved result and, for exact methods, ``equal``; with
        ``floor``, ``noise_floor``; then ``seconds``, ``cpu_seconds`` and ``time_s`` (by the
        clock). A failed measurement leaves its message in ``error``.

        Args:
            name: the group's name in the progress lines.
            entries: the methods, the reference (``direct``) first.
            timing: keyword arguments of the time target besides ``methods``.
            compare: compare the saved results with the first entry's.
            floor: keyword arguments of the memory target (besides ``save``) for a second
                run of the reference, in a fresh process, that computes the same results with
                different rounding; the largest relative difference of its saved results to
                the reference's is every row's ``noise_floor``.
        """
        measured, reference, noise = [], None, None
        for entry in entries:
            row, label = entry.row, entry.row["method"]
            try:
                row.update(self._memory.run(self.memory_target, save=self._save, **entry.memory))
            except RuntimeError as exc:
                row["error"] = _last_line(exc)
                self.say(f"{name} {label}: FAILED {row['error']}")
                continue
            saved = torch.load(self._save)
            if self.separate_timing and self.default_malloc:
                # Users measure with glibc's default allocator: the peak there too, from the
                # runner that keeps the default settings.
                try:
                    default = self._time.run(self.memory_target, **{**entry.memory, "measure": "first"})
                    row["peak_default_bytes"] = default["peak_bytes"]
                except RuntimeError as exc:
                    self.say(f"{name} {label}: default-allocator peak FAILED {_last_line(exc)}")
            if compare and entry is entries[0]:
                reference = saved
            if reference is not None:
                for key in saved:
                    row[f"{key}_rel_diff"] = relative_error([saved[key]], [reference[key]])
                if entry.exact:
                    row["equal"] = all(row[f"{key}_rel_diff"] <= self.tol for key in saved)
            measured.append(entry)
            diff = f", grad rel. diff {row['grad_rel_diff']:.1e}" if "grad_rel_diff" in row else ""
            default = (f" ({row['peak_default_bytes'] / 2**20:.1f} MiB default malloc)"
                       if "peak_default_bytes" in row else "")
            self.say(f"{name} {label}: {row['peak_bytes'] / 2**20:.1f} MiB{default}{diff}")
            if floor is not None and entry is entries[0] and reference is not None:
                noise = self._noise_floor(name, floor, reference)
        for entry in measured if noise is not None else ():
            entry.row["noise_floor"] = noise
        if not measured:
            return
        methods = {e.row["method"]: e.timing for e in measured}
        try:
            times = self._time.run(self.time_target, **timing, methods=methods)
        except RuntimeError as exc:
            times = {label: {"error": _last_line(exc)} for label in methods}
        for entry in measured:
            row = entry.row
            result = times[row["method"]]
            if "error" in result:
                row["error"] = "timing: " + result["error"]
                continue
            row.update(result)
            row["time_s"] = row["cpu_seconds" if self.clock == "cpu" else "seconds"]
        self.say(f"{name} times ({self.clock}): " + ", ".join(
            f"{e.row['method']} {e.row['time_s']:.3f} s" for e in measured if "time_s" in e.row))

    def _noise_floor(self, name: str, floor: dict, reference: dict) -> float | None:
        try:
            self._memory.run(self.memory_target, save=self._save, **floor)
        except RuntimeError as exc:
            self.say(f"{name} noise floor: FAILED {_last_line(exc)}")
            return None
        again = torch.load(self._save)
        noise = max(relative_error([again[key]], [reference[key]]) for key in reference)
        self.say(f"{name} noise floor (reference against itself, other rounding): {noise:.1e}")
        return noise
