"""The number of PyTorch threads of a CPU training run on a machine that other work shares
(:class:`ThreadGovernor`, what ``anode train --threads auto`` uses).

Why: PyTorch runs each operation on all its intra-op threads and waits at the end of it until
every thread is done; the waiting threads spin (OpenMP's default wait policy) instead of
sleeping. While another process keeps a core busy, one of the threads waits for its share of
that core at every operation and the others spin meanwhile, so next to a busy core two
threads can train slower than one, while on an idle machine two are faster. A passive wait
policy (``OMP_WAIT_POLICY=PASSIVE``, read once when the OpenMP runtime starts) avoids most of
the loss on a busy machine but costs throughput on an idle one, so the policy is left alone
and the number of threads is chosen. The measurements (images/s of each setting, busy and
idle, with the machine) are in ``docs/training.md``, "Threads".

How: the governor measures, over windows of a few seconds of training steps, the images per
second and the CPU time other processes take on the cores this process may run on (from
``/proc/stat``, minus this process's own CPU time). When the cores other work leaves free
call for another number of threads, or the throughput falls below half the best seen with
the current number, it tries that number for one window and keeps whichever ran faster. A
setting that lost is retried only after a pause that doubles with every loss, so a wrong
signal costs little. The run starts with the number the load measured while it was being
set up calls for.

Changing the number of threads changes the rounding of some reductions: a run whose
number of threads changed is not bit-for-bit repeatable; a fixed ``--threads N`` is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadGovernor", "CpuLoad", "auto_threads"]

WINDOW_S = 3.0
"""Seconds of training steps per measurement window."""

COLLAPSE = 0.5
"""A window slower than this fraction of the best with the same threads counts as a collapse."""

RETRY_S = 30.0
"""Pause before a setting that lost a trial is tried again; doubled after each loss."""

MAX_RETRY_S = 480.0

START_SAMPLE_S = 0.5
"""Shortest interval over which the load is measured before the first step."""


class CpuLoad:
    """Busy CPU seconds of the given cores (from ``/proc/stat``: user, nice, system, irq,
    softirq and steal time) and this process's CPU seconds (all its threads), so that the
    difference of two samples over an interval is the CPU time other processes took.

    Args:
        cpus: the core numbers (default: those this process may run on,
            :func:`os.sched_getaffinity`).

    Raises:
        OSError: ``/proc/stat`` cannot be read (not Linux).
    """

    def __init__(self, cpus: set[int] | None = None) -> None:
        self.cpus = set(cpus) if cpus is not None else set(os.sched_getaffinity(0))
        self.tick = os.sysconf("SC_CLK_TCK")
        self()  # fail here, not in the middle of a run

    def __call__(self) -> tuple[float, float]:
        """``(busy seconds of the cores since boot, this process's CPU seconds)``."""
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu"):
                    break  # the per-core lines come first
                name, *fields = line.split()
                if name == "cpu" or int(name[3:]) not in self.cpus:
                    continue
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
                busy += user + nice + system + irq + softirq + steal
        return busy / self.tick, time.process_time()


class ThreadGovernor:
    """Chooses and adapts the number of PyTorch intra-op threads of a training loop (see the
    module docstring for why and how).

    Call :meth:`start` before the first training step, :meth:`step` after every step and
    :meth:`pause` when the loop does something else (evaluation); windows never span a
    pause, and the first step after :meth:`start` or :meth:`pause` is not measured (it
    warms caches up). A trial starts at the end of a window and lasts one window.

    Args:
        limit: the most threads to use (the process's setting: one per core unless
            ``OMP_NUM_THREADS`` or :func:`torch.set_num_threads` said otherwise); at least 2,
            else there is nothing to choose.
        cores: cores available to the process (default: ``len(os.sched_getaffinity(0))``).
        load: a :class:`CpuLoad`-like callable, or ``None`` where the load cannot be read
            (then only a collapse of the throughput triggers a trial).
        log: receives one line when the number of threads changes for good, or when the
            throughput collapsed and no other number helped.
        set_threads: applies a number of threads (default :func:`torch.set_num_threads`).
        clock: seconds (default :func:`time.perf_counter`).
        window_s: seconds of steps per measurement window.

    Attributes:
        threads: the number in use.
        switches: ``(step, threads)`` of every change, the trials included.
    """

    def __init__(
        self,
        limit: int,
        *,
        cores: int | None = None,
        load: Callable[[], tuple[float, float]] | None = None,
        log: Callable[[str], None] | None = None,
        set_threads: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        window_s: float = WINDOW_S,
    ) -> None:
        if limit < 2:
            raise ValueError(f"limit must be at least 2 threads to choose from, got {limit}")
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.limit = limit
        self.cores = cores if cores is not None else len(os.sched_getaffinity(0))
        self.load, self.set_threads, self.clock = load, set_threads, clock
        self.log = log or (lambda msg: None)
        self.window_s = window_s
        self.threads = limit
        self.others: float | None = None  # cores' worth of other work in the last window
        self.switches: list[tuple[int, int]] = []
        self._steps = 0
        self._best: dict[int, float] = {}  # the fastest window of each number of threads
        self._retry_at: dict[int, float] = {}
        self._retry_s: dict[int, float] = {}
        self._trial: tuple[int, float] | None = None  # (threads before the trial, their rate)
        self._recheck: tuple[int, float] | None = None  # (threads of a lost trial, their rate)
        self._collapse_told = False
        self._mark = (clock(), self._sample())  # the load while the run is set up
        self._window: tuple[float, Any, int] | None = None  # (start, load sample, images)
        self._skip = True

    def start(self) -> int:
        """Choose the first number of threads from the load measured since the governor
        was made (at least :data:`START_SAMPLE_S` seconds of it) and apply it; returns it."""
        start, sample = self._mark
        wait = START_SAMPLE_S - (self.clock() - start)
        if wait > 0:
            time.sleep(wait)
        self.others = self._others(start, sample, self.clock(), self._sample())
        if self.others is not None:
            self._apply(self._suggested(self.others))
        else:
            self._apply(self.threads)
        self.pause()
        return self.threads

    def describe(self) -> str:
        """Why the current number was chosen, for the run's first line."""
        if self.others is None:
            return "chosen automatically"
        return f"chosen automatically: other processes used {self.others:.1f} of {self.cores} cores"

    def pause(self) -> None:
        """Drop the current window; the next step starts a new one (and is not measured)."""
        self._window = None
        self._skip = True

    def step(self, images: int) -> None:
        """Count one finished training step of ``images`` images; at the end of a window,
        decide."""
        self._steps += 1
        now = self.clock()
        if self._skip or self._window is None:
            self._skip = False
            self._window = (now, self._sample(), 0)
            return
        start, sample, count = self._window
        count += images
        self._window = (start, sample, count)
        if now - start >= self.window_s:
            self._decide(count / (now - start), self._others(start, sample, now, self._sample()), now)
            self._window = (now, self._sample(), 0)

    # -- decisions -----------------------------------------------------------------------

    def _decide(self, rate: float, others: float | None, now: float) -> None:
        n = self.threads
        self.others = others
        best = self._best.get(n, 0.0)
        self._best[n] = max(best, rate)
        if self._trial is not None:
            self._end_trial(rate, others, now)
            return
        if self._recheck is not None:
            # The window before a lost trial may have been faster only because the load
            # changed during it: compare the trial with this window too.
            m, trial_rate = self._recheck
            self._recheck = None
            if trial_rate > rate:
                self._retry_s.pop(m, None)
                self._retry_at.pop(m, None)
                self._keep(n, rate, m, trial_rate, others)
                return
            if rate < COLLAPSE * best:
                self._tell_collapse(rate, best, others)
        target = None
        if others is not None and self._suggested(others) != n:
            target = self._suggested(others)
        elif rate < COLLAPSE * best:
            target = n - 1 if n > 1 else None
            if target is None or now < self._retry_at.get(target, 0.0):
                self._tell_collapse(rate, best, others)
        if target is not None and now >= self._retry_at.get(target, 0.0):
            self._trial = (n, rate)
            self._apply(target)

    def _end_trial(self, rate: float, others: float | None, now: float) -> None:
        before, before_rate = self._trial
        self._trial = None
        n = self.threads
        if rate >= before_rate:
            self._retry_s.pop(n, None)
            self._retry_at.pop(n, None)
            self._keep(before, before_rate, n, rate, others)
            return
        pause = self._retry_s.get(n, RETRY_S)
        self._retry_at[n] = now + pause
        self._retry_s[n] = min(2 * pause, MAX_RETRY_S)
        self._recheck = (n, rate)
        self._apply(before)

    def _keep(self, old: int, old_rate: float, new: int, new_rate: float, others: float | None) -> None:
        """Continue with ``new`` threads (already applied unless it differs) and say why."""
        if self.threads != new:
            self._apply(new)
        load = "" if others is None else f"other processes use {others:.1f} of the {self.cores} cores; "
        self.log(
            f"threads: {load}{_threads(old)} trained at {old_rate:.0f} images/s, "
            f"{_threads(new)} at {new_rate:.0f}: continuing with {new} (--threads {new} fixes the number)"
        )
        self._collapse_told = False

    def _tell_collapse(self, rate: float, best: float, others: float | None) -> None:
        if self._collapse_told:
            return
        self._collapse_told = True
        load = f"; other processes use {others:.1f} of the {self.cores} cores" if others is not None else ""
        # fewer threads were tried and ran no faster: what is left is the wait policy or the load
        fix = ("OMP_WAIT_POLICY=PASSIVE in the environment of the next run lets waiting threads sleep; "
               "fewer other jobs would help too") if self.threads > 1 else "fewer other jobs would help"
        self.log(
            f"threads: training slowed to {rate:.0f} images/s from {best:.0f} with "
            f"{_threads(self.threads)}{load}; no other number of threads ran faster ({fix})"
        )

    # -- helpers -------------------------------------------------------------------------

    def _suggested(self, others: float) -> int:
        """The cores that other work leaves free, rounded to the nearest, in [1, limit]."""
        return max(1, min(self.limit, int(self.cores - others + 0.5)))

    def _apply(self, n: int) -> None:
        if n != self.threads or not self.switches:
            self.switches.append((self._steps, n))
        self.threads = n
        self.set_threads(n)

    def _sample(self):
        if self.load is None:
            return None
        try:
            return self.load()
        except OSError:
            self.load = None
            return None

    def _others(self, t0: float, s0, t1: float, s1) -> float | None:
        if s0 is None or s1 is None or t1 <= t0:
            return None
        (busy0, own0), (busy1, own1) = s0, s1
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def auto_threads(log: Callable[[str], None] | None = None) -> tuple[ThreadGovernor | None, str]:
    """The governor of a CPU run whose number of threads is chosen automatically, and the
    reason when there is none: ``(None, reason)`` when ``OMP_NUM_THREADS`` fixes the number
    or the process has one thread to use (:func:`torch.get_num_threads`).

    The governor starts measuring the load at once, so make it before the run's setup."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return None, "OMP_NUM_THREADS"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = min(torch.get_num_threads(), cores)
    if limit < 2:
        return None, "one core" if cores < 2 else "the process's setting"
    try:
        load: Callable[[], tuple[float, float]] | None = CpuLoad()
    except (OSError, AttributeError, ValueError):
        load = None
    return ThreadGovernor(limit, cores=cores, load=load, log=log), ""
