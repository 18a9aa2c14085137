"""The small records the discrete adjoints (Runge–Kutta and Adams) pass around: the tensors
a forward saves for its backward, by group, and what every step's vector–Jacobian product
shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .._ivp import IVP
from .._recompute import ForwardRecord
from .._solvers import State
from .last_operation import LastOperation


@dataclass(frozen=True)
class _Layout:
    """How :class:`SavedSolve` lies in ``ctx.saved_tensors``: the group sizes, in order."""

    n_y: int
    n_params: int
    n_closure: int
    kept_steps: tuple[int, ...]
    width: int


@dataclass(frozen=True)
class SavedSolve:
    """What a discrete adjoint's forward keeps for its backward, by group.

    Everything goes through ``ctx.save_for_backward``: in-place changes to inputs and kept
    states then raise autograd's usual error, and saved-tensor hooks (e.g.
    ``torch.autograd.graph.save_on_cpu``) see the kept states. The outputs are not saved:
    the backward does not read them, and the front door stacks copies of them, so saving
    them would hold every output twice. A schedule that frees kept states during the
    backward (revolve, :attr:`~anode._schedules.Schedule.autograd_holds_kept` False) holds
    them itself instead, as autograd holds saved tensors until the backward ends; such a
    solve can be differentiated once (twice after a ``create_graph=True`` backward, which
    keeps them for every later pass).

    Attributes:
        y0: the initial state (the state at step 0).
        t: the output times, 1-D.
        params: the parameters the caller listed.
        closure: the tensors func reached by closure, found on its first evaluation
            (:mod:`anode._gradients.closures`).
        kept: the states the schedule kept, by step index (step 0's is ``y0``); each a
            tuple of tensors (a Runge–Kutta state, or an Adams extended state).
    """

    y0: State
    t: torch.Tensor
    params: tuple[torch.Tensor, ...] = ()
    closure: tuple[torch.Tensor, ...] = ()
    kept: Mapping[int, State] = field(default_factory=dict)

    @classmethod
    def of(cls, inputs: Sequence[torch.Tensor], *, n_y: int, n_listed: int,
           kept: Mapping[int, State]) -> SavedSolve:
        """The record of a Function's tensor inputs ``(*y0, t, *params, *closure)`` and the
        states kept (step 0's, the input itself, is dropped)."""
        params = tuple(inputs[n_y + 1:])
        return cls(tuple(inputs[:n_y]), inputs[n_y], params[:n_listed], params[n_listed:],
                   {j: y for j, y in kept.items() if j != 0})

    def save(self, ctx, *, autograd_holds_kept: bool) -> None:
        """Hand the groups to ``ctx`` (kept states to autograd, or to ``ctx`` itself when the
        schedule frees them during the backward)."""
        by_autograd = dict(self.kept) if autograd_holds_kept else {}
        width = len(next(iter(by_autograd.values()))) if by_autograd else 0
        ctx.save_for_backward(*self.y0, self.t, *self.params, *self.closure,
                              *(y for state in by_autograd.values() for y in state))
        ctx.saved_layout = _Layout(len(self.y0), len(self.params), len(self.closure),
                                   tuple(by_autograd), width)
        ctx.kept_by_schedule = {} if autograd_holds_kept else dict(self.kept)
        ctx.differentiated_twice = False

    @classmethod
    def load(cls, ctx) -> SavedSolve:
        """The record :meth:`save` handed to ``ctx``, kept states from autograd only."""
        lay, saved = ctx.saved_layout, ctx.saved_tensors
        ends = [lay.n_y, lay.n_y + 1, lay.n_y + 1 + lay.n_params, lay.n_y + 1 + lay.n_params + lay.n_closure]
        start, w = ends[-1], lay.width
        kept = {j: tuple(saved[start + k * w:start + (k + 1) * w]) for k, j in enumerate(lay.kept_steps)}
        return cls(tuple(saved[:ends[0]]), saved[ends[0]], tuple(saved[ends[1]:ends[2]]),
                   tuple(saved[ends[2]:ends[3]]), kept)

    def states(self, ctx, schedule_name: str) -> dict[int, State]:
        """The kept states with those the schedule held itself, which are handed over once.

        Raises:
            RuntimeError: a second backward of a solve whose schedule freed its states.
        """
        held = ctx.kept_by_schedule
        if held is None:
            raise RuntimeError(
                f"schedule {schedule_name} frees its snapshots during the backward, so a solve can "
                "be differentiated only once; use schedule='store' or 'recompute' with retain_graph"
            )
        if held and not ctx.differentiated_twice:
            ctx.kept_by_schedule = None
        return {**self.kept, **held}


@dataclass(frozen=True)
class StepContext:
    """What the vector–Jacobian product of every step of one backward shares.

    Attributes:
        ivp: the problem: its checked ``func(t, y) -> dy/dt``, its method (a Butcher
            tableau or an :class:`~anode._adams.Adams`) and its statistics.
        record: the forward's record: replays a step's random numbers, modes and buffers.
        params: the parameters and closure tensors whose adjoints are wanted.
        param_adj: their adjoints so far (None where none yet), one per tensor of
            ``params``, accumulated in place by :meth:`accumulate`.
        need_t: whether the adjoints of the stage times and step sizes are wanted.
        wanted: the positions of ``params`` among all the solve's parameters.
        last_operation: the skip of the last operation of whole rebuilt steps
            (:mod:`anode._gradients.last_operation`), one per backward.
    """

    ivp: IVP
    record: ForwardRecord
    params: tuple[torch.Tensor, ...]
    param_adj: list[torch.Tensor | None]
    need_t: bool
    wanted: tuple[int, ...] = ()
    last_operation: LastOperation = field(default_factory=LastOperation)

    @property
    def func(self) -> Callable[[torch.Tensor, State], State]:
        return self.ivp.func

    @property
    def tableau(self):
        return self.ivp.tableau

    @classmethod
    def make(cls, ivp: IVP, record: ForwardRecord, *, need_params: Sequence[bool],
             need_t: bool) -> StepContext:
        """The context of a backward of ``ivp`` that wants the parameters flagged in
        ``need_params`` (one flag per tensor of ``ivp.params``)."""
        wanted = tuple(i for i, n in enumerate(need_params) if n)
        return cls(ivp, record, tuple(ivp.params[i] for i in wanted), [None] * len(wanted), need_t, wanted)

    def param_grads(self, n_params: int) -> list[torch.Tensor | None]:
        """The accumulated adjoints at their places among ``n_params`` parameters."""
        grads: list[torch.Tensor | None] = [None] * n_params
        for i, g in zip(self.wanted, self.param_adj):
            grads[i] = g
        return grads

    def accumulate(self, i: int, g: torch.Tensor) -> None:
        """``param_adj[i] += g`` in place into a copy of the first term: autograd may hand
        back a cotangent itself as a gradient (``y + p``), which must not change, and an
        in-place sum holds no third parameter-sized tensor while the two terms are added
        (the same bits as ``a + b``)."""
        if self.param_adj[i] is None:
            self.param_adj[i] = g.clone()
        else:
            self.param_adj[i].add_(g)


class StepTimes:
    """The stage times and step sizes (and the fractions θ of the dense outputs) rebuilt
    from the output times ``t``, with a graph when ``t``'s gradient is wanted, and their
    adjoints, accumulated step by step and carried back to ``t`` by :meth:`grad`.

    Attributes:
        stage: ``[N_t, s]`` stage times; size: ``[N_t]`` step sizes (time units);
        thetas: ``[taps]`` fractions of the steps holding dense outputs, or None.
    """

    def __init__(self, ivp: IVP, t: torch.Tensor, need_t: bool) -> None:
        self.leaf = t.detach().requires_grad_(need_t)
        with torch.enable_grad():
            self.stage, self.size = ivp.step_times(self.leaf)
        self.g_stage = torch.zeros_like(self.stage) if need_t else None
        self.g_size = torch.zeros_like(self.size) if need_t else None
        with torch.enable_grad():
            self.thetas = ivp.grid.tap_thetas(self.leaf) if ivp.grid.taps else None
        self.g_theta = torch.zeros_like(self.thetas) if need_t and self.thetas is not None else None
        self.theta_values = self.thetas.tolist() if self.thetas is not None else []

    def add(self, j: int, g_st, g_h, taps: Sequence[int] = (), g_th=None) -> None:
        """Add step ``j``'s stage-time and step-size adjoints, and those of its taps' θ."""
        if g_st is not None:
            self.g_stage[j] += g_st
        if g_h is not None:
            self.g_size[j] += g_h
        for k, g in zip(taps, g_th or ()):
            self.g_theta[k] += g

    def grad(self) -> torch.Tensor | None:
        """The adjoint of ``t`` (None when not wanted)."""
        if self.g_stage is None:
            return None
        dense = (self.thetas,) if self.thetas is not None else ()
        return torch.autograd.grad((self.stage, self.size, *dense), self.leaf,
                                   (self.g_stage, self.g_size, *(self.g_theta,) * len(dense)),
                                   allow_unused=True)[0]
