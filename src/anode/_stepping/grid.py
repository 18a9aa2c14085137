"""The time grid on which every solve runs (and every backward replays it).

The grid splits each interval ``[t[i], t[i+1]]`` between consecutive output times into
``n_i`` steps: equal steps (a fixed grid, :func:`make_grid`), or steps given as fractions of
the interval's length (the accepted steps of an adaptive solve, see
:mod:`anode._stepping.controller`). All grid arithmetic is done in float64 so that the grid does not
depend on the dtype of ``t`` and every output time is hit exactly (the last step of an
interval ends *at* the output time because the next interval starts from it, never from
an accumulated sum of step sizes).

Non-uniform steps are held as fractions so that the stage times stay functions of the
output times (gradients with respect to ``t`` scale the steps of an interval with its
length) while the step pattern itself is a constant of the solve.

An adaptive solve with dense output steps across the whole span ``[t[0], t[-1]]`` as one
interval and takes the output times in between from the interpolant of the step that
contains them (``taps``): the fraction ``θ = (t[i] - start) / h`` of that step is then a
function of ``t`` too, so gradients reach every output time.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

# A length within this relative tolerance of a whole number of steps is that many steps:
# float32 output times such as 0.3 (= 0.30000001192...) must not gain an extra tiny step.
_STEP_COUNT_RTOL = 1e-6


@dataclass(frozen=True)
class TimeGrid:
    """Steps inside each interval between output times: equal, or at given fractions.

    Attributes:
        times: the output times as Python floats (float64), length M >= 1.
        steps_per_interval: ``n_i`` for each of the ``M - 1`` intervals: ``>= 1``, or 0 for
            a zero-length interval (a repeated output time), where no step is taken.
        fractions: None for equal steps; else, per interval, the ``n_i + 1`` increasing
            step boundaries as fractions of the interval (dimensionless, ``0.0`` first and
            ``1.0`` last; an empty tuple for a zero-length interval). Step ``k`` of interval
            ``i`` starts at ``t[i] + f[k] (t[i+1] - t[i])`` and ends where step ``k + 1``
            starts, the last one at ``t[i+1]`` itself; a stage with node ``c = 1`` is
            evaluated at the step's end (as for an FSAL pair, whose last stage is then the
            next step's first, bit for bit).
        taps: None, or dense output: pairs ``(i, n)``, one per output time strictly
            between ``t[0]`` and ``t[-1]`` (repeats included), in order: ``y(t[i])`` comes from the
            interpolant of step ``n``, which contains ``t[i]`` (its start excluded). The
            steps then span ``[t[0], t[-1]]`` as one interval: ``steps_per_interval`` and
            ``fractions`` have one entry, fractions of that span.
        perturbed: where ``func`` is evaluated from inside the steps (torchdiffeq's
            ``perturb``, for a function discontinuous in time at those step boundaries):
            False (nowhere), True (at every step boundary), or the indices ``b`` of the
            boundaries (``b`` in ``0..N_t``, counted over all steps: boundary ``b`` is the
            start of step ``b`` and the end of step ``b - 1``). There a stage with node
            ``c = 0`` is evaluated at the next representable time after the step's start (in
            the direction of integration) and a stage with ``c = 1`` at the last one before
            its end, in the time's dtype (:meth:`nudge`).
        pinned: ``(b, time)`` pairs: step boundary ``b`` (as in ``perturbed``, ``0 < b < N_t``)
            lies at the given absolute time (time units; a ``step_t``/``jump_t`` time or a
            point of a constructed grid) rather than at its fraction of the interval, so it
            is hit exactly and does not move with ``t``. Needs ``fractions``.

    Raises:
        ValueError: fractions that do not match ``steps_per_interval``, do not run from 0
            to 1, or do not increase; taps with more than one interval or out of range.
    """

    times: tuple[float, ...]
    steps_per_interval: tuple[int, ...]
    fractions: tuple[tuple[float, ...], ...] | None = None
    taps: tuple[tuple[int, int], ...] | None = None
    perturbed: bool | tuple[int, ...] = False
    pinned: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if self.pinned and (self.fractions is None or not all(
                0 < b < self.n_steps for b, _ in self.pinned)):
            raise ValueError(f"pinned step boundaries need fractions and 0 < b < N_t, got {self.pinned}")
        if self.taps is not None:
            n = self.steps_per_interval[0] if len(self.steps_per_interval) == 1 else -1
            if self.fractions is None or n < 1 or not all(
                    0 < i < len(self.times) and 0 <= k < n for i, k in self.taps):
                raise ValueError("dense output needs one interval of steps over the whole span "
                                 f"and taps (output, step) within it, got {self.taps}")
        if self.fractions is None:
            return
        if len(self.fractions) != len(self.steps_per_interval):
            raise ValueError("fractions needs one entry per interval")
        for i, (n, f) in enumerate(zip(self.steps_per_interval, self.fractions)):
            ok = len(f) == 0 if n == 0 else (
                len(f) == n + 1 and f[0] == 0.0 and f[-1] == 1.0 and all(a < b for a, b in zip(f, f[1:])))
            if not ok:
                raise ValueError(
                    f"interval {i}: {n} steps need {n + 1} increasing fractions from 0.0 to 1.0, got {f}")

    def _spans(self) -> list[tuple[int, int, int, tuple[float, ...] | None]]:
        """``(first output index, last output index, steps, fractions or None)`` per interval
        of steps: one per pair of consecutive output times, or one over the whole span for
        dense output."""
        if self.taps is not None:
            return [(0, len(self.times) - 1, self.steps_per_interval[0], self.fractions[0])]
        return [(i, i + 1, n, None if self.fractions is None else self.fractions[i])
                for i, n in enumerate(self.steps_per_interval)]

    @property
    def uniform(self) -> bool:
        """Whether every interval is split into equal steps."""
        return self.fractions is None

    @property
    def n_steps(self) -> int:
        """Total number of steps N_t over all intervals."""
        return sum(self.steps_per_interval)

    @property
    def output_steps(self) -> tuple[int | None, ...]:
        """For output times ``t[1:]``, the number of steps taken when each is reached (None
        for one taken from dense output)."""
        if self.taps is not None:
            first, last, n = self.times[0], self.times[-1], self.steps_per_interval[0]
            return tuple(0 if x == first else n if x == last else None for x in self.times[1:])
        out, total = [], 0
        for n in self.steps_per_interval:
            total += n
            out.append(total)
        return tuple(out)

    @property
    def solve_outputs(self) -> tuple[int, ...]:
        """The distinct positive entries of :attr:`output_steps`, increasing: the step counts
        at which a solve hands out a state (a repeated output time, or one reached after
        zero steps, reuses a state rather than producing a new one). A solve hands out these
        states, then one per tap (:attr:`output_sources`)."""
        return tuple(sorted({s for s in self.output_steps if s}))

    @property
    def output_sources(self) -> tuple[tuple[str, int], ...]:
        """Where the state at each output time ``t[1:]`` comes from: ``("step", s)``, the
        state after ``s`` steps (the input for 0), or ``("tap", k)``, the dense output of
        ``taps[k]``."""
        taps = {i: k for k, (i, _) in enumerate(self.taps or ())}
        return tuple(("step", s) if s is not None else ("tap", taps[i])
                     for i, s in enumerate(self.output_steps, start=1))

    def tap_thetas(self, t: torch.Tensor) -> torch.Tensor:
        """The fraction ``θ = (t[i] - start) / h`` of its step at which each tap is taken,
        a float64 tensor ``[len(taps)]`` differentiable in ``t`` (by the operations of
        :meth:`step_times`, and of :func:`tap_theta` on the floats of the forward).

        Raises:
            ValueError: the grid has no dense output.
        """
        if self.taps is None:
            raise ValueError("this time grid has no dense output")
        # a node c = 0 gives each step's start exactly
        starts, sizes = self.step_times(t, torch.zeros(1, dtype=torch.float64))
        steps = [n for _, n in self.taps]
        outputs = [i for i, _ in self.taps]
        return (t.to(torch.float64)[outputs] - starts[steps, 0]) / sizes[steps]

    def nudge(self, stage_times: torch.Tensor, nodes, reverse: bool = False) -> torch.Tensor:
        """Move the stage times of :attr:`perturbed` boundaries inside their steps
        (:func:`nudge_stages`).

        Args:
            stage_times: ``[N_t, s]`` stage times in the dtype ``func`` receives them
                (from :meth:`step_times`, or the reverse solve's, whose row ``j`` runs step
                ``j`` backwards: its ``c = 0`` stage at the step's end).
            nodes: the tableau's nodes ``c``.
            reverse: rows are steps taken backwards.

        Returns:
            The stage times, unchanged when nothing is perturbed.
        """
        if self.perturbed is False or self.n_steps == 0:
            return stage_times
        n = self.n_steps
        marks = set(range(n + 1)) if self.perturbed is True else set(self.perturbed)
        first = [j for j in range(n) if j in marks]
        last = [j for j in range(n) if j + 1 in marks]
        direction = 1.0 if self.times[-1] > self.times[0] else -1.0
        if reverse:
            first, last, direction = last, first, -direction
        return nudge_stages(stage_times, nodes, first, last, direction)

    def step_sizes(self) -> list[float]:
        """The step size of every step as Python floats (time units; negative backwards)."""
        sizes, offset, pins = [], 0, dict(self.pinned)
        for i0, i1, n, f in self._spans():
            if f is not None:
                sizes += [step_geometry(self.times[i0], self.times[i1], f[k], f[k + 1], (),
                                        start_at=pins.get(offset + k),
                                        end_at=pins.get(offset + k + 1))[1]
                          for k in range(n)]
            else:
                sizes += [(self.times[i1] - self.times[i0]) / n] * n if n else []
            offset += n
        return sizes

    def step_times(self, t: torch.Tensor, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage times and step sizes of every step, differentiable in ``t``.

        Args:
            t: the output times, 1-D tensor of length M (any float dtype, may require grad).
            nodes: the tableau's nodes ``c``, 1-D float64 tensor of length s.

        Returns:
            ``(stage_times, step_sizes)``: float64 tensors of shapes ``[N_t, s]`` and
            ``[N_t]`` on ``t``'s device. Step ``j`` in interval ``i`` with ``k`` steps before it
            in that interval starts at ``t[i] + k * (t[i+1] - t[i]) / n_i`` on a uniform grid,
            at ``t[i] + f[k] * (t[i+1] - t[i])`` on a grid with fractions ``f`` (see the
            class; its step sizes are end minus start).
        """
        t64 = t.to(torch.float64)
        nodes = nodes.to(t.device)
        starts, sizes, ends = [], [], []
        offset, pins = 0, dict(self.pinned)
        for i, j, n, fractions in self._spans():
            offset += n
            if n == 0:
                continue
            if fractions is not None:
                # the same operations as step_geometry, which the adaptive forward uses
                f = torch.tensor(fractions, dtype=torch.float64, device=t.device)
                length = t64[j] - t64[i]
                start = t64[i] + f[:-1] * length
                end = torch.cat([t64[i] + f[1:-1] * length, t64[j : j + 1]])
                here = [(b - (offset - n), x) for b, x in pins.items() if offset - n < b < offset]
                if here:  # a pinned boundary is a constant: the end of one step, the start of the next
                    at = torch.tensor([k for k, _ in here], device=t.device)
                    value = torch.tensor([x for _, x in here], dtype=torch.float64, device=t.device)
                    start = start.index_put((at,), value)
                    end = end.index_put((at - 1,), value)
                starts.append(start)
                ends.append(end)
                sizes.append(end - start)
                continue
            h = (t64[j] - t64[i]) / n
            k = torch.arange(n, dtype=torch.float64, device=t.device)
            starts.append(t64[i] + k * h)
            sizes.append(h.expand(n))
        if not starts:
            empty = t64.new_zeros(0)
            return empty.new_zeros(0, nodes.numel()), empty
        start = torch.cat(starts)
        size = torch.cat(sizes)
        stage_times = start[:, None] + nodes[None, :] * size[:, None]
        if self.fractions is not None:
            stage_times = torch.where(nodes[None, :] == 1.0, torch.cat(ends)[:, None], stage_times)
        return stage_times, size


def nudge_stages(stage_times: torch.Tensor, nodes, starts, ends, direction: float) -> torch.Tensor:
    """``stage_times`` ``[N, s]`` with the stages of node ``c = 0`` in rows ``starts`` moved to
    the next representable time in ``direction`` (+1 or -1), and those of node ``c = 1`` in
    rows ``ends`` to the next one against it: torchdiffeq's ``Perturb.NEXT`` and
    ``Perturb.PREV`` (``torchdiffeq/_impl/misc.py``, ``_PerturbFunc``), which evaluate a
    function discontinuous in time from inside the step. The values move by one unit in the
    last place of the times' dtype; their derivative stays 1 (as torchdiffeq's
    ``_StitchGradient``)."""
    out = stage_times
    for col, c in enumerate(nodes):
        rows = list(starts) if c == 0.0 else list(ends) if c == 1.0 else []
        if not rows:
            continue
        sign = direction if c == 0.0 else -direction
        at = (torch.tensor(rows, device=out.device), torch.full((len(rows),), col, device=out.device))
        current = out[at]
        moved = torch.nextafter(current.detach(), torch.full_like(current.detach(), sign * math.inf))
        out = out.index_put(at, current + (moved - current).detach())
    return out


def step_geometry(t_start: float, t_end: float, f0: float, f1: float, nodes, *,
                  start_at: float | None = None, end_at: float | None = None) -> tuple[list[float], float]:
    """Stage times and size of one step between fractions ``f0 < f1`` of the interval
    ``[t_start, t_end]``, as Python floats, by exactly the operations that
    :meth:`TimeGrid.step_times` applies to a grid with fractions (so a step taken with these
    times is replayed bit for bit).

    Args:
        t_start, t_end: the interval's output times (time units).
        f0, f1: the step's boundaries as fractions of the interval; ``f1 == 1.0`` ends at
            ``t_end`` exactly.
        nodes: the tableau's nodes ``c``.
        start_at, end_at: a pinned start or end time (:attr:`TimeGrid.pinned`), used
            instead of its fraction.

    Returns:
        ``([t + c_i h for each node, t + h for c_i == 1], h)``, h signed (time units).
    """
    length = t_end - t_start
    start = t_start + f0 * length if start_at is None else start_at
    end = (t_end if f1 == 1.0 else t_start + f1 * length) if end_at is None else end_at
    h = end - start
    return [end if c == 1.0 else start + c * h for c in nodes], h


def tap_theta(t_out: float, start: float, h: float) -> float:
    """The fraction of a step (start time ``start``, size ``h``) at which output time
    ``t_out`` lies, by the operation :meth:`TimeGrid.tap_thetas` repeats."""
    return (t_out - start) / h


def make_grid(times: list[float], n_steps: int | None, step_size: float | None) -> TimeGrid:
    """Build the grid for output times, from a step count or a maximum step size.

    Rule: with ``n_steps``, every interval gets ``n_steps`` equal steps. With ``step_size``,
    interval ``i`` gets ``n_i = ceil(|t[i+1] - t[i]| / step_size)`` equal steps, where a
    ratio within a relative 1e-6 of a whole number counts as that whole number; so steps
    never exceed ``step_size`` by more than that tolerance, are never shorter than the
    others in their interval, and no tiny final step appears. With neither, one step per
    interval (the output times are the grid, as in torchdiffeq's fixed-grid solvers). A
    zero-length interval (a repeated output time) gets no step.

    Args:
        times: output times as Python floats, monotonic (checked by the caller).
        n_steps: steps per interval, an int >= 1, or None.
        step_size: the largest step (time units), > 0, or None.

    Raises:
        ValueError: both given, ``n_steps < 1``, or ``step_size`` not positive and finite.
        TypeError: ``n_steps`` not an integer.
    """
    if n_steps is not None and step_size is not None:
        raise ValueError("give n_steps or step_size, not both")
    intervals = [abs(b - a) for a, b in zip(times[:-1], times[1:])]
    if step_size is not None:
        step_size = float(step_size)
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive finite number, got {step_size}")
        counts = []
        for length in intervals:
            ratio = length / step_size
            nearest = round(ratio)
            n = nearest if abs(ratio - nearest) <= _STEP_COUNT_RTOL * max(1.0, ratio) else math.ceil(ratio)
            counts.append(max(1, int(n)) if length > 0 else 0)
        return TimeGrid(tuple(times), tuple(counts))
    if n_steps is None:
        n_steps = 1
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral):
        raise TypeError(f"n_steps must be an int, not {type(n_steps).__name__}")
    n_steps = int(n_steps)  # e.g. a numpy integer
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return TimeGrid(tuple(times), tuple(n_steps if length > 0 else 0 for length in intervals))

