"""Binomial checkpointing (revolve): at most ``s`` snapshots, the fewest recomputed steps.

Griewank, "Achieving logarithmic growth of temporal and spatial complexity in reverse
automatic differentiation", Optim. Methods Softw. 1 (1992); Griewank & Walther, "Algorithm
799: revolve", ACM TOMS 26(1), 2000. With ``s`` snapshots (the one of the block input
included) the states of ``N_t`` steps can be walked backwards with the minimal number of
forward steps ``t(N_t, s) = r N_t - C(s + r, r - 1)``, where ``r`` is the smallest integer
with ``C(s + r, r) >= N_t`` (GW2000, §2: eqs. (1)–(2) and Prop. 1). The action sequence comes from the
checkpoint_schedules package (Dolci, Maddison, Ham; JOSS 2024): its
``MultistageCheckpointSchedule`` with the revolve trajectory (GW2000, p. 34), which for a
second storage level distributes the snapshots between the levels as in Stumm & Walther
(SIAM J. Sci. Comput. 31(3), 2009).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import MappingProxyType

from checkpoint_schedules import (
    Copy,
    EndForward,
    EndReverse,
    Forward,
    Move,
    MultistageCheckpointSchedule,
    Reverse,
    StorageType,
)

from .base import Schedule, State
from .storage import to_device, to_host

DEVICE, HOST, WORK = StorageType.RAM, StorageType.DISK, StorageType.WORK


@dataclass(frozen=True)
class RevolvePlan:
    """A checkpoint_schedules action sequence, split where the forward sweep ends.

    Attributes:
        n_steps: N_t.
        writes: the snapshots the forward sweep stores, step index → level
            (``StorageType.RAM`` for device memory, ``StorageType.DISK`` for the host).
        actions: the actions after ``EndForward``, up to and including ``EndReverse``.
        recomputed_steps: forward steps the backward takes without building a graph.
        peak_device_states: most states held in device memory at once (snapshots plus the
            working state).
        peak_host_states: most snapshots held in host memory at once.
    """

    n_steps: int
    writes: MappingProxyType
    actions: tuple
    recomputed_steps: int
    peak_device_states: int
    peak_host_states: int


def _simulate_levels(writes: dict, actions: tuple) -> tuple[int, int]:
    """Peak occupancy of device memory (snapshots + working state) and of the host level.

    The block input counts on the device even when its snapshot is assigned to the host:
    autograd holds it there as the block's input anyway, so it is never copied out.
    """
    held: dict[StorageType, set[int]] = {DEVICE: set(), HOST: set()}
    peak_dev = peak_host = 0

    def record():
        nonlocal peak_dev, peak_host
        on_host = held[HOST] - {0}
        peak_dev = max(peak_dev, len(held[DEVICE]) + (0 in held[HOST]) + 1)
        peak_host = max(peak_host, len(on_host))

    for j, level in writes.items():
        held[level].add(j)
    record()
    for a in actions:
        if isinstance(a, Forward) and a.write_ics:
            held[a.storage].add(a.n0)
        elif isinstance(a, Move):
            held[a.from_storage].discard(a.n)
        record()
    return peak_dev, peak_host


@functools.lru_cache(maxsize=128)
def revolve_plan(n_steps: int, snapshots: int, host_snapshots: int = 0) -> RevolvePlan:
    """The binomial schedule of ``n_steps`` steps with ``snapshots`` snapshots in device
    memory and ``host_snapshots`` in host memory, from checkpoint_schedules.

    The snapshot of the block input counts among them (it is the first one written). The
    forward sweep also leaves the start state of the last step as the working state: the
    backward of that step needs it, so a solve holds at most ``min(snapshots + host_snapshots,
    N_t - 1)`` snapshots plus one working state.

    Raises:
        ValueError: ``n_steps < 1`` or no snapshot at all.
        RuntimeError: the package produced an action this translation does not know (a
            version of checkpoint_schedules with another action vocabulary).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if snapshots + host_snapshots < 1:
        raise ValueError("revolve needs at least one snapshot")
    sched = MultistageCheckpointSchedule(n_steps, snapshots, host_snapshots, trajectory="revolve")
    writes: dict[int, StorageType] = {}
    actions = []
    in_forward = True
    for a in sched:
        if in_forward:
            if isinstance(a, EndForward):
                in_forward = False
            elif not isinstance(a, Forward):
                raise RuntimeError(f"unexpected action {a!r} in revolve's forward sweep")
            elif a.write_adj_deps and (a.n0, a.n1) != (n_steps - 1, n_steps):
                raise RuntimeError(f"unexpected action {a!r}: only the last step is taped")
            elif a.write_ics:
                writes[a.n0] = a.storage
            continue
        if isinstance(a, Forward) and a.write_adj_deps and len(a) != 1:
            raise RuntimeError(f"unexpected action {a!r}: a step is taped one at a time")
        if not isinstance(a, (Forward, Reverse, Copy, Move, EndReverse)):
            raise RuntimeError(f"unexpected action {a!r} in revolve's backward")
        actions.append(a)
        if isinstance(a, EndReverse):
            break
    recomputed = sum(len(a) for a in actions if isinstance(a, Forward) and not a.write_adj_deps)
    peak_dev, peak_host = _simulate_levels(writes, tuple(actions))
    return RevolvePlan(n_steps, MappingProxyType(writes), tuple(actions), recomputed, peak_dev, peak_host)


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class Revolve(Schedule):
    """Binomial checkpointing: at most ``snapshots`` states kept, optimal recomputation.

    The forward keeps the snapshots of the Griewank–Walther schedule (the block input is
    the first) and the start state of the last step; the backward restarts from snapshots
    and recomputes forward, writing new snapshots into freed slots, so that it takes the
    fewest forward steps possible with ``s`` snapshots (GW2000; see the module docstring for
    the formula). Between the forward and the backward, and throughout the backward, one
    block holds at most ``min(s, N_t - 1) + 1`` states (snapshots plus the working state)
    besides one step's stages and graph, against ``N_t`` for :class:`Store` and
    :class:`Recompute`. With ``s >= N_t - 1`` it keeps every state and recomputes nothing,
    like :class:`Store`. The states, hence the gradients, are exactly those of the other
    schedules.

    Prefer it when ``N_t`` states of one block do not fit; choose ``s`` by a memory budget
    with :class:`~anode._schedules.Auto`. Note that the snapshots are held from the forward to
    the backward, so a network of L blocks holds up to ``L (s + 1)`` states, where
    :class:`Recompute` holds ``L`` (plus ``N_t`` during one block's backward).

    Args:
        snapshots: s, the snapshots kept in device memory (the block input included);
            >= 1, or >= 0 when ``host_snapshots >= 1``.
        host_snapshots: further snapshots kept in host memory (pinned when the state is on
            CUDA; see :mod:`anode._schedules.storage`), a second storage level placed by the
            multistage rule of Stumm & Walther (2009). With ``snapshots=0`` the device holds
            only the working state and the block input (which autograd holds there as the
            block's input anyway): O(1) states. The binomial schedule uses
            ``snapshots + host_snapshots`` snapshots in all.

    Raises:
        TypeError: a count that is not an int.
        ValueError: ``snapshots < 1`` without host snapshots, or a negative count.
    """

    autograd_holds_kept = False  # snapshots are freed as the backward passes them

    def __init__(self, snapshots: int, host_snapshots: int = 0) -> None:
        self.host_snapshots = _check_count("host_snapshots", host_snapshots, 0)
        self.snapshots = _check_count("snapshots", snapshots, 0 if self.host_snapshots else 1)

    @property
    def name(self) -> str:
        """``"revolve(s)"``, or ``"revolve(s, host=h)"`` with a second level."""
        host = f", host={self.host_snapshots}" if self.host_snapshots else ""
        return f"revolve({self.snapshots}{host})"

    def plan(self, n_steps: int) -> RevolvePlan:
        """The action sequence for ``n_steps`` steps (cached)."""
        return revolve_plan(n_steps, self.snapshots, self.host_snapshots)

    def keeps(self, j: int, n_steps: int) -> bool:
        return j in self.plan(n_steps).writes or j == n_steps - 1

    def hold(self, j: int, n_steps: int, state: State) -> State:
        # The block input stays on the device: autograd holds it there as an input anyway.
        if j != 0 and self.plan(n_steps).writes.get(j) is HOST:
            return to_host(state)
        return state

    def reversed_states(self, kept, n_steps, advance):
        plan = self.plan(n_steps)
        levels: dict[StorageType, dict] = {DEVICE: {}, HOST: {}}
        devices = tuple(t.device for t in kept[0])
        for j, level in plan.writes.items():
            levels[level][j] = kept.pop(j)
        work_j, work = n_steps - 1, kept.pop(n_steps - 1)
        if kept:
            raise RuntimeError(f"the forward kept states {sorted(kept)} that revolve did not ask for")
        for a in plan.actions:
            if isinstance(a, Forward):
                if a.n0 != work_j:
                    raise RuntimeError(f"{a!r} starts at step {a.n0}, the working state is at {work_j}")
                if a.write_ics:
                    levels[a.storage][work_j] = to_host(work) if a.storage is HOST else work
                if not a.write_adj_deps:
                    for k in range(a.n0, a.n1):
                        work = advance(k, work)
                    work_j = a.n1
                # A taped step (write_adj_deps) is rebuilt with its graph by the consumer
                # from the working state, which the following Reverse hands over.
            elif isinstance(a, Reverse):
                if a.n0 != work_j:
                    raise RuntimeError(f"{a!r} needs step {a.n0}, the working state is at {work_j}")
                yield work_j, work
                work = None  # the consumer holds the only reference now
            elif isinstance(a, (Copy, Move)):
                source = levels[a.from_storage]
                item = source.pop(a.n) if isinstance(a, Move) else source[a.n]
                if a.to_storage is not WORK:
                    raise RuntimeError(f"unexpected action {a!r}: snapshots move only to work")
                work_j = a.n
                work = to_device(item, devices) if a.from_storage is HOST else item
            elif isinstance(a, EndReverse):
                break
        if any(levels.values()):
            raise RuntimeError("revolve's backward ended with snapshots left over")

    def recomputed_steps(self, n_steps: int) -> int:
        return self.plan(n_steps).recomputed_steps

    def peak_states(self, n_steps: int) -> int:
        return self.plan(n_steps).peak_device_states

    def __repr__(self) -> str:
        host = f", host_snapshots={self.host_snapshots}" if self.host_snapshots else ""
        return f"Revolve(snapshots={self.snapshots}{host})"
