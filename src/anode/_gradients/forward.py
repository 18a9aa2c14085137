"""The start of the forward of the gradient methods that build no graph in it: the first
evaluation, which finds the tensors func reaches by closure (the sweep that follows it is
:func:`anode._stepping.loops.forward_sweep`)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .._ivp import IVP
from .._recompute import ForwardRecord
from .._solvers import State
from .._stepping.loops import ForwardStart
from .closures import ClosureFinder, check_closed, closure_modules, closure_tensors

__all__ = ["check_closed", "start_forward", "unflatten", "zeros_if_none"]


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


class GraphBytes:
    """A pack hook for :func:`start_forward`'s measured evaluation: the bytes of the distinct storages
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
