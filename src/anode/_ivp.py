"""The normalised initial value problem that every gradient method receives.

``odeint`` checks the user's input once and hands gradient methods one simple case: a
tuple state, a function on tuple states whose output is checked, a fixed time grid, a
Butcher tableau and the tensors to differentiate.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ._callbacks import NO_CALLBACKS, Callbacks
from ._recompute import FREED, autocast_state
from ._solvers import ButcherTableau, State
from ._stepping.controller import Adaptive
from ._stepping.grid import TimeGrid


@dataclass
class SolveStats:
    """Counts of the work done by solves, accumulated over calls.

    ``forward_steps`` are the (accepted) steps of the forward pass and
    ``forward_evaluations`` its evaluations of ``func``: ``forward_steps x stages`` on a
    fixed grid; for an adaptive solve also those of ``rejected_steps`` and of the initial
    step-size probe, less the first stages an FSAL pair reuses. ``recomputed_steps`` are
    forward steps taken again in the backward without a graph (to recover states a schedule
    did not keep, or, for the continuous adjoint, the reverse solve of the augmented
    system); ``backward_steps`` are steps whose graph the backward rebuilt to take a
    vector–Jacobian product. Both replay accepted steps, ``stages`` evaluations each: the
    tableau's stage count of the last solve, less a trailing stage that only an error
    estimate uses (:attr:`~anode._solvers.ButcherTableau.solution_stages`).
    ``stage_replays`` are the evaluations the discrete adjoint takes once more when it
    rebuilds one stage's graph at a time (``stages - 1`` per backward step of a multi-stage
    method, :func:`anode._gradients.stages.stagewise_vjp`; 0 for whole-step rebuilds).
    ``reverse_evaluations`` are the evaluations of ``backsolve``'s backward that replay no
    forward step: its adaptive reverse solve after an adaptive forward (its own steps), and
    ``func(t_i, y(t_i))`` at each output time for gradients with respect to ``t``.
    ``dense_evaluations`` are the trailing stages (the last of an FSAL pair) that
    replayed steps containing a dense-output time evaluate beyond ``stages``: the
    interpolant needs them.
    ``replayed_evaluations`` are the evaluations of the recomputed and backward steps of a
    multistep (Adams) solve, whose steps differ in their number of evaluations (``stages``
    is 0 for it; see :mod:`anode._adams`).
    ``skipped_operations`` are the backward steps rebuilt without the last operation of
    their last stage, whose value their vector–Jacobian product never reads
    (:mod:`anode._gradients.last_operation`).
    """

    forward_steps: int = 0
    recomputed_steps: int = 0
    backward_steps: int = 0
    stages: int = 0
    schedule: str = ""
    rejected_steps: int = 0
    forward_evaluations: int = 0
    reverse_evaluations: int = 0
    stage_replays: int = 0
    dense_evaluations: int = 0
    replayed_evaluations: int = 0
    skipped_operations: int = 0

    @property
    def function_evaluations(self) -> int:
        """All evaluations of ``func`` in forward and backward."""
        replayed = (self.recomputed_steps + self.backward_steps) * self.stages
        return (self.forward_evaluations + replayed + self.stage_replays + self.reverse_evaluations
                + self.dense_evaluations + self.replayed_evaluations)

    def count_fixed_forward(self, n_steps: int, stages: int) -> None:
        """Count a forward pass of ``n_steps`` steps on a given grid, ``stages`` evaluations each."""
        self.forward_steps += n_steps
        self.forward_evaluations += n_steps * stages
        self.stages = stages

    def reset(self) -> None:
        """Set every count to zero."""
        self.forward_steps = self.recomputed_steps = self.backward_steps = 0
        self.rejected_steps = self.forward_evaluations = self.reverse_evaluations = 0
        self.stage_replays = self.dense_evaluations = self.replayed_evaluations = 0
        self.skipped_operations = 0


def check_stats(stats) -> SolveStats:
    """``stats``, or a new :class:`SolveStats` for None.

    Raises:
        TypeError: anything else (a dict, say), which would otherwise fail in the middle of
            the solve or count nothing.
    """
    if stats is None:
        return SolveStats()
    if not isinstance(stats, SolveStats):
        raise TypeError(f"stats must be an anode.SolveStats (or None), not {type(stats).__name__}; "
                        "pass stats=anode.SolveStats() and read its counts after the solve")
    return stats


def _reference(func: Callable) -> Callable[[], Callable | None]:
    """A callable returning ``func``; weak for modules and bound methods of modules.

    A solve's graph must not keep a module alive: a module that stores the output of its
    own solve (a cached trajectory) would otherwise form a cycle through autograd's C++
    graph that the garbage collector cannot see. Other callables (functions, lambdas) are
    usually referenced by nothing else and are held strongly.
    """
    if isinstance(func, nn.Module):
        return weakref.ref(func)
    if inspect.ismethod(func) and isinstance(func.__self__, nn.Module):
        return weakref.WeakMethod(func)
    return lambda: func


def check_signature(func: Callable) -> None:
    """Raise TypeError unless ``func`` can be called as ``func(t, y)``.

    The common mistake is a module of the state alone (``nn.Sequential``); the message shows
    the fix. Callables whose signature Python cannot read are let through.
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), not {type(func).__name__}")
    try:
        sig = inspect.signature(func.forward if isinstance(func, nn.Module) else func)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None, None)
    except TypeError:
        name = type(func).__name__ if isinstance(func, nn.Module) else getattr(func, "__name__", "func")
        raise TypeError(
            f"func must be callable as func(t, y) with the time first; {name}{sig} is not. "
            "For a module of the state alone wrap it: anode.Autonomous(net), or use "
            "lambda t, y: net(y)"
        ) from None


def time_dtypes(t: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.dtype]:
    """torchdiffeq's dtype rules (``_impl/misc.py``, ``rk_common.py``): ``t`` at no less
    precision than the state (a float32 ``t`` with a float64 state is promoted, differentiably,
    so the time grid loses nothing), and ``func`` called with time in the state's dtype (the
    promoted dtype of a tuple's components), so a float64 ``t`` cannot promote func's output
    (e.g. a 0-d float32 state times ``t``). Returns ``(t, the dtype func's time takes)``."""
    dtype = state[0].dtype
    for y in state[1:]:
        dtype = torch.promote_types(dtype, y.dtype)
    wider = torch.promote_types(t.dtype, dtype)
    return (t if wider == t.dtype else t.to(wider)), dtype


class CheckedFunc:
    """``func`` on tuple states, checking each output against the state it was given.

    Holds ``func`` weakly when it is an ``nn.Module`` or a bound method of one. With
    ``time_dtype`` the time argument is cast to it (the state's dtype, as torchdiffeq does).

    Raises:
        TypeError: the output has the wrong structure (not a tensor / tuple of the right
            length) or a component has the wrong dtype.
        ValueError: a component has the wrong shape.
        RuntimeError: the module was garbage-collected before a backward pass needed it.
    """

    #: Whether an evaluation with grad mode off returns its outputs detached. Set by the
    #: methods that never differentiate such an evaluation (anode, backsolve): a function that
    #: builds a graph inside (FFJORD's divergence with ``create_graph=True``) then keeps none
    #: past its own call, where the stages of a step would otherwise hold theirs to its end.
    detach_without_grad = False

    def __init__(self, func: Callable, is_tuple: bool, time_dtype: torch.dtype | None = None) -> None:
        self._ref = _reference(func)
        self.is_tuple = is_tuple
        self.time_dtype = time_dtype
        # the time tensors handed to func (while they live): one that func makes require
        # grad in place (FFJORD's t.requires_grad_(True)) is no closure tensor
        self._times: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def was_given(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is a time tensor this function was called with (and still lives)."""
        return self._times.get(id(x)) is x

    @property
    def func(self) -> Callable:
        """The user's function (raises RuntimeError if it has been freed)."""
        func = self._ref()
        if func is None:
            raise RuntimeError(FREED)
        return func

    def module(self) -> nn.Module | None:
        """The ``nn.Module`` whose modes and buffers a recomputation replays, if any."""
        func = self._ref()
        return func.__self__ if inspect.ismethod(func) else func if isinstance(func, nn.Module) else None

    def __call__(self, t: torch.Tensor, y: State) -> State:
        if self.time_dtype is not None and t.dtype != self.time_dtype:
            t = t.to(self.time_dtype)  # torchdiffeq's rule: func sees time in the state's dtype
        if isinstance(t, torch.Tensor):
            self._times[id(t)] = t
        out = self.func(t, y if self.is_tuple else y[0])
        if not self.is_tuple:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"func must return a tensor, got {type(out).__name__}")
            out = (out,)
        elif not isinstance(out, (tuple, list)) or len(out) != len(y):
            got = f"{type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) \
                else type(out).__name__
            raise TypeError(f"func must return a tuple of {len(y)} tensors like the state, got {got}")
        for i, (o, s) in enumerate(zip(out, y)):
            where = f"component {i} of " if self.is_tuple else ""
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"{where}func's output is {type(o).__name__}, not a tensor")
            if o.shape != s.shape:
                raise ValueError(
                    f"{where}func's output has shape {tuple(o.shape)}; the state has {tuple(s.shape)}"
                )
            # Under autocast func computes in lower precision; the step's update promotes its
            # output back to the state's dtype, which keeps the state in full precision.
            lowered = o.is_floating_point() and autocast_state().get(s.device.type, (False,))[0]
            if o.dtype != s.dtype and not lowered:
                raise TypeError(f"{where}func's output has dtype {o.dtype}; the state has {s.dtype}")
        if self.detach_without_grad and not torch.is_grad_enabled():
            return tuple(o.detach() for o in out)
        return tuple(out)


@dataclass
class IVP:
    """An initial value problem and its time stepping, as gradient methods receive it.

    Attributes:
        func: checked function on tuple states, ``func(t, y) -> dy/dt``.
        y0: the initial state, a tuple of tensors.
        t: the output times, 1-D tensor of length M.
        grid: the time grid; for an adaptive solve None until its forward sweep
            (:func:`anode._stepping.adaptive.integrate`) sets the accepted grid, which the backward
            then replays.
        tableau: the Runge–Kutta method, or an :class:`~anode._adams.Adams` multistep
            method (fixed grid only; :mod:`anode._gradients.multistep`).
        params: tensors ``func`` depends on whose gradients are wanted.
        stats: counts to accumulate into.
        controller: the step-size options of an adaptive solve
            (:class:`~anode._stepping.controller.Adaptive`), else None.
        times: the output times as Python floats (float64).
        callbacks: torchdiffeq's step hooks found on the user's function
            (:mod:`anode._callbacks`); the forward loops call ``callbacks.forward``, the
            backward of ``anode`` and ``backsolve`` calls ``callbacks.adjoint``.
    """

    func: CheckedFunc
    y0: State
    t: torch.Tensor
    grid: TimeGrid | None
    tableau: ButcherTableau
    params: tuple[torch.Tensor, ...]
    stats: SolveStats = field(default_factory=SolveStats)
    controller: Adaptive | None = None
    times: tuple[float, ...] = ()
    callbacks: Callbacks = NO_CALLBACKS

    @property
    def adaptive_pending(self) -> bool:
        """Whether the steps are still to be chosen by the controller (no grid yet)."""
        return self.grid is None

    def step_times(self, t: torch.Tensor | None = None):
        """``(stage_times [N_t, s] in t's dtype, step_sizes)`` from ``t`` (default self.t).

        Step sizes are Python floats when ``t`` does not require grad (cheapest), else a
        float64 tensor so that gradients reach ``t``.
        """
        t = self.t if t is None else t
        nodes = torch.tensor(self.tableau.c, dtype=torch.float64)
        stage_times, sizes = self.grid.step_times(t, nodes)
        # torchdiffeq's perturb: stages at perturbed step boundaries move inside the step
        stage_times = self.grid.nudge(stage_times.to(t.dtype), self.tableau.c)
        if not t.requires_grad:
            return stage_times, self.grid.step_sizes()
        return stage_times, sizes
