"""The forward sweep shared by gradient methods that build no graph in the forward pass, and
its start: the first evaluation, which finds the tensors func reaches by closure."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._adaptive import integrate
from .._ivp import IVP
from .._recompute import ForwardRecord
from .._solvers import State, rk_step
from .closures import ClosureFinder, check_closed, closure_modules, closure_tensors

__all__ = ["ForwardStart", "check_closed", "forward_sweep", "start_forward", "unflatten", "zeros_if_none"]


@dataclass
class ForwardStart:
    """What :func:`start_forward` hands the forward sweep.

    Attributes:
        record: the forward's record, made before func first ran.
        slope: ``func(t0, y0)``, detached: the first stage of the first step.
        graph_bytes: the bytes autograd saved for that evaluation's graph besides the
            state and the parameters (:class:`GraphBytes`), when measured; else 0.
    """

    record: ForwardRecord
    slope: State
    graph_bytes: int = 0


def _detached(x):
    return x.detach()


def _same(x):
    return x


def _eager():
    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


def start_forward(ivp: IVP, measure: bool = False) -> ForwardStart:
    """Evaluate func once at the initial state, with a graph, and find the tensors it reaches.

    Those requiring grad besides the state and ``ivp.params`` (closure tensors, found as
    :mod:`anode._gradients.closures` describes) are appended to ``ivp.params``, so that they
    become inputs of the solve's autograd Function and get gradients like parameters. Called
    by the methods that build no graph in the forward (anode, backsolve) before that Function
    is applied; from then on func's graph-free evaluations return detached outputs
    (:attr:`~anode._ivp.CheckedFunc.detach_without_grad`). The evaluation is the first stage
    of the solve's first step, which the forward sweep takes from here, so no evaluation is
    added; the record is made before it, so that a replay of the first step reproduces its
    random numbers and module buffers. The record replays the modes and buffers of func
    when it is a module (or a bound method of one), else of the modules a plain function
    names (:func:`~anode._gradients.closures.closure_modules`).

    With ``measure``, the bytes of that evaluation's graph are counted
    (:attr:`ForwardStart.graph_bytes`): what a backward rebuilding one stage holds, and
    ``s`` times what one rebuilding a whole step of ``s`` stages holds.

    Raises:
        ValueError: as :func:`~anode._gradients.closures.closure_tensors`.
    """
    graph = GraphBytes([*ivp.y0, *ivp.params]) if measure else None
    module = ivp.func.module
    if module() is None:  # a lambda over modules: replay their modes and buffers too
        named = closure_modules(ivp.func.func)
        if named:
            held = nn.ModuleList(named)  # held as strongly as the function holds them
            module = lambda: held  # noqa: E731
    record = ForwardRecord(module, ivp.y0)
    if ivp.grid is None:  # the time integrate() evaluates first
        t0 = torch.tensor(ivp.times[0], dtype=ivp.t.dtype, device=ivp.t.device)
    else:
        t0 = ivp.step_times(ivp.t.detach())[0][0, 0]
    # The graph lives only for the search, so the user's saved-tensor hooks (save_on_cpu)
    # need not see it. Saved tensors are kept detached: a function that differentiates inside
    # needs their values, and a saved output that kept its grad_fn would form a reference
    # cycle that is never freed.
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(graph or _detached, _same):
        # the state requires grad, as in a backward rebuild: a function that differentiates
        # with respect to it then creates no leaf of its own
        y_leaf = tuple(v.detach().requires_grad_() for v in ivp.y0)
        finder = ClosureFinder([*y_leaf, t0])
        # A compiled func runs this one evaluation eagerly: traced, the mode would split its
        # graph at every operation and compile it once more.
        with _eager(), finder:
            k = ivp.func(t0, y_leaf)
    found = closure_tensors(k, [*y_leaf, *ivp.params], finder)
    listed = {id(p) for p in ivp.params}
    ivp.params = (*ivp.params, *(x for x in found if id(x) not in listed))
    ivp.func.detach_without_grad = True
    return ForwardStart(record, tuple(v.detach() for v in k), graph.total if graph else 0)


def forward_sweep(
    ivp: IVP, start: ForwardStart, keep: Callable[[int, State], None] | None = None,
) -> list[torch.Tensor]:
    """Integrate without a graph; return the states at ``ivp.grid.solve_outputs``, flattened.

    Args:
        ivp: the problem (its ``y0`` are the inputs of the calling autograd Function).
        start: from :func:`start_forward`: the record, which notes each step's generator
            state for replay (see :class:`ForwardRecord`), and the first stage.
        keep: called as ``keep(j, y_j)`` with the state at the start of every step.
        saved: sees each tensor autograd saves for the first step's graph (the first
            evaluation's, for an adaptive problem) and returns it detached; e.g. a
            :class:`GraphBytes` that measures the graph a backward rebuild will hold.

    Returns:
        The output states, output major, state component minor.

    An adaptive problem (``ivp.grid is None``) is solved by the controller loop
    (:func:`anode._adaptive.integrate`), which sets ``ivp.grid`` to the accepted grid and
    calls ``keep`` for the accepted steps only. torchdiffeq's forward step callbacks
    (``ivp.callbacks.forward``) are called for every step (attempt) of this sweep, and only
    here.

    Raises:
        anode._adaptive.AdaptiveSolveError: as :func:`anode._adaptive.integrate`.
    """
    record = start.record
    if ivp.grid is None:
        outputs, ivp.grid = integrate(ivp, ivp.controller, record=record, keep=keep,
                                      first_eval=lambda t0, y: start.slope, hooks=ivp.callbacks.forward)
        record.finish()
        return [y for state in outputs for y in state]
    stage_times, sizes = ivp.step_times(ivp.t.detach())
    outputs = set(ivp.grid.solve_outputs)
    y, result = tuple(ivp.y0), []
    first = [start.slope]

    def first_step(t: torch.Tensor, y: State) -> State:  # its first stage is known
        return first.pop() if first else ivp.func(t, y)

    hooks = ivp.callbacks.forward
    for j in range(ivp.grid.n_steps):
        if keep is not None:
            keep(j, y)
        if hooks:
            hooks.on_step(stage_times[j][0], y, sizes[j])
        y = rk_step(first_step if j == 0 else ivp.func, y, stage_times[j], sizes[j], ivp.tableau)
        record.after_step(j)
        if j + 1 in outputs:
            result.extend(y)
    record.finish()
    ivp.stats.count_fixed_forward(ivp.grid.n_steps, ivp.tableau.solution_stages)
    return result


class GraphBytes:
    """A pack hook for :func:`forward_sweep`'s ``saved``: the bytes of the distinct storages
    autograd saves for a graph, besides those of ``exclude`` (the step's input and the
    parameters, which are held anyway), in :attr:`total`. An estimate of the memory a
    rebuilt graph holds: temporaries that autograd does not save are not counted."""

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        self.seen = {_storage(t) for t in exclude}
        self.total = 0

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        try:
            key = _storage(t)
        except (RuntimeError, NotImplementedError):  # no plain storage (sparse, subclasses)
            return t.detach()
        if key not in self.seen:
            self.seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t.detach()


def _storage(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def zeros_if_none(grads, like) -> State:
    """``grads`` with each None replaced by zeros shaped like the matching ``like``."""
    return tuple(torch.zeros_like(y) if g is None else g for g, y in zip(grads, like))


def unflatten(flat, n_y: int) -> list[State]:
    """Consecutive groups of ``n_y`` tensors: the tuple states of a flattened output list."""
    return [tuple(flat[k : k + n_y]) for k in range(0, len(flat), n_y)]
