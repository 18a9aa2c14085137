"""The forward sweep shared by gradient methods that build no graph in the forward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..adaptive import integrate
from ..ivp import IVP
from ..recompute import ForwardRecord
from ..solvers import State, rk_step


def check_closed(outputs: State, inputs: list[torch.Tensor]) -> None:
    """Raise if ``outputs`` depend on a tensor requiring grad that is not among ``inputs``.

    Such a tensor (e.g. a module parameter captured by a closure but not passed in
    ``params``) would silently receive no gradient from a method that differentiates
    only with respect to known inputs.

    Raises:
        ValueError: naming the shape of the first unknown tensor found.
    """
    known_leaves = {id(x) for x in inputs}
    known_nodes = {x.grad_fn for x in inputs if x.grad_fn is not None}
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in known_nodes:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) not in known_leaves:
                raise ValueError(
                    f"func uses a tensor of shape {tuple(variable.shape)} that requires grad but "
                    "is not among the parameters being differentiated; its gradient would be "
                    "lost. Pass it in params= (or make func an nn.Module that owns it)."
                )
            continue
        stack.extend(fn for fn, _ in node.next_functions)


def _detached(x):
    return x.detach()


def _same(x):
    return x


def forward_sweep(
    ivp: IVP, params: list[torch.Tensor], record: ForwardRecord,
    keep: Callable[[int, State], None] | None = None,
    saved: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Integrate without a graph; return the states at ``ivp.grid.solve_outputs``, flattened.

    Args:
        ivp: the problem (its ``y0`` are the inputs of the calling autograd Function).
        params: the tensors the gradient is taken with respect to, besides the state.
        record: notes each step's generator state for replay (see :class:`ForwardRecord`).
        keep: called as ``keep(j, y_j)`` with the state at the start of every step.
        saved: sees each tensor autograd saves for the first step's graph (the first
            evaluation's, for an adaptive problem) and returns it detached; e.g. a
            :class:`GraphBytes` that measures the graph a backward rebuild will hold.

    Returns:
        The output states, output major, state component minor.

    An adaptive problem (``ivp.grid is None``) is solved by the controller loop
    (:func:`anode.adaptive.integrate`), which sets ``ivp.grid`` to the accepted grid and
    calls ``keep`` for the accepted steps only; the closure check is then made on the first
    evaluation of ``func``.

    Raises:
        ValueError: func reaches a tensor that requires grad but is not in ``params``
            (checked on the first step, which is the only one taken with a graph).
        anode.adaptive.AdaptiveSolveError: as :func:`anode.adaptive.integrate`.
    """
    pack = _detached if saved is None else saved
    if ivp.grid is None:
        def first_eval(t0: torch.Tensor, y: State) -> State:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, _same):
                y_leaf = tuple(v.detach().requires_grad_() for v in y)
                k = ivp.func(t0, y_leaf)
            check_closed(k, [*y_leaf, *params])
            return tuple(v.detach() for v in k)

        outputs, ivp.grid = integrate(ivp, ivp.controller, record=record, keep=keep,
                                      first_eval=first_eval)
        record.finish()
        return [y for state in outputs for y in state]
    stage_times, sizes = ivp.step_times(ivp.t.detach())
    outputs = set(ivp.grid.solve_outputs)
    y, result = tuple(ivp.y0), []
    for j in range(ivp.grid.n_steps):
        if keep is not None:
            keep(j, y)
        if j == 0:
            # One step with a graph shows whether func reaches tensors that require grad
            # but are not inputs here: fail now rather than lose their gradient. The graph
            # lives only for this check, so the user's saved-tensor hooks (save_on_cpu)
            # need not see it. Saved tensors are kept detached: a function that
            # differentiates inside needs their values, and a saved output that kept its
            # grad_fn would form a reference cycle that is never freed.
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, _same):
                # the state requires grad, as in a backward rebuild: a function that
                # differentiates with respect to it then creates no leaf of its own
                y_leaf = tuple(v.detach().requires_grad_() for v in y)
                y = rk_step(ivp.func, y_leaf, stage_times[j], sizes[j], ivp.tableau)
            check_closed(y, [*y_leaf, *params])
            y = tuple(v.detach() for v in y)
        else:
            y = rk_step(ivp.func, y, stage_times[j], sizes[j], ivp.tableau)
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
