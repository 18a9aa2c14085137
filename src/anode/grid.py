"""The fixed time grid on which every solve runs.

The grid splits each interval ``[t[i], t[i+1]]`` between consecutive output times into
``n_i`` equal steps. All grid arithmetic is done in float64 so that the grid does not
depend on the dtype of ``t`` and every output time is hit exactly (the last step of an
interval ends *at* the output time because the next interval starts from it, never from
an accumulated sum of step sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# A length within this relative tolerance of a whole number of steps is that many steps:
# float32 output times such as 0.3 (= 0.30000001192...) must not gain an extra tiny step.
_STEP_COUNT_RTOL = 1e-6


@dataclass(frozen=True)
class TimeGrid:
    """Equal steps inside each interval between output times.

    Attributes:
        times: the output times as Python floats (float64), length M >= 1.
        steps_per_interval: ``n_i`` for each of the ``M - 1`` intervals: ``>= 1``, or 0 for
            a zero-length interval (a repeated output time), where no step is taken.
    """

    times: tuple[float, ...]
    steps_per_interval: tuple[int, ...]

    @property
    def n_steps(self) -> int:
        """Total number of steps N_t over all intervals."""
        return sum(self.steps_per_interval)

    @property
    def output_steps(self) -> tuple[int, ...]:
        """For output times ``t[1:]``, the number of steps taken when each is reached."""
        out, total = [], 0
        for n in self.steps_per_interval:
            total += n
            out.append(total)
        return tuple(out)

    @property
    def solve_outputs(self) -> tuple[int, ...]:
        """The distinct positive entries of :attr:`output_steps`, increasing: the step counts
        at which a solve hands out a state (a repeated output time, or one reached after
        zero steps, reuses a state rather than producing a new one)."""
        return tuple(sorted({s for s in self.output_steps if s > 0}))

    def step_sizes(self) -> list[float]:
        """The step size of every step as Python floats (time units; negative backwards)."""
        sizes = []
        for i, n in enumerate(self.steps_per_interval):
            sizes += [(self.times[i + 1] - self.times[i]) / n] * n if n else []
        return sizes

    def step_times(self, t: torch.Tensor, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage times and step sizes of every step, differentiable in ``t``.

        Args:
            t: the output times, 1-D tensor of length M (any float dtype, may require grad).
            nodes: the tableau's nodes ``c``, 1-D float64 tensor of length s.

        Returns:
            ``(stage_times, step_sizes)``: float64 tensors of shapes ``[N_t, s]`` and
            ``[N_t]`` on ``t``'s device. Step ``j`` in interval ``i`` with ``k`` steps before it
            in that interval starts at ``t[i] + k * (t[i+1] - t[i]) / n_i``.
        """
        t64 = t.to(torch.float64)
        starts, sizes = [], []
        for i, n in enumerate(self.steps_per_interval):
            if n == 0:
                continue
            h = (t64[i + 1] - t64[i]) / n
            k = torch.arange(n, dtype=torch.float64, device=t.device)
            starts.append(t64[i] + k * h)
            sizes.append(h.expand(n))
        if not starts:
            empty = t64.new_zeros(0)
            return empty.new_zeros(0, nodes.numel()), empty
        start = torch.cat(starts)
        size = torch.cat(sizes)
        stage_times = start[:, None] + nodes.to(t.device)[None, :] * size[:, None]
        return stage_times, size


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
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise TypeError(f"n_steps must be an int, not {type(n_steps).__name__}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return TimeGrid(tuple(times), tuple(n_steps if length > 0 else 0 for length in intervals))
