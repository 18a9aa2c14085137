"""The tensors a vector field reaches besides its arguments, found on its first evaluation.

``lambda t, y: net(y)``, a bound method ``model.dynamics`` or a field that uses a
hypernetwork's output ``w = hyper(z)`` reach tensors that need gradients by closure, not
as arguments. The methods whose backward rebuilds evaluations of ``func`` and takes their
vector–Jacobian products with respect to a list of tensors (the discrete adjoint, the
continuous adjoint) must know every such tensor; any other would silently get no gradient.
As ``torch.utils.checkpoint``'s non-reentrant mode learns what a segment touches while it
runs, they are found while ``func`` runs once, with a graph, at the start of the forward:

* a :class:`~torch.overrides.TorchFunctionMode` sees every tensor handed to a torch
  operation. Those that require grad and were neither arguments of ``func`` nor made by an
  operation inside it are the candidates: leaves (parameters) and non-leaf tensors (a
  hypernetwork's output, a view of a parameter), each as the tensor object itself, so that
  it can become an input of the solve's autograd Function and the gradient can flow on into
  its own graph;
* that evaluation's graph, walked from the outputs, keeps the candidates the outputs depend
  on, adds leaves reached through operations the mode cannot see (TorchScript), and raises
  where it meets a leaf that requires grad made inside ``func`` (a fresh one per call,
  which no backward could differentiate). A non-leaf tensor reached only through such
  operations cannot be named; the walk goes on to its leaves, which become inputs: their
  gradient is then taken through its graph, and its second use raises autograd's
  "backward through the graph a second time" unless it saved nothing.

A tensor that reaches ``func`` only in a later evaluation (a branch on ``t``) is met by the
check of the backward's rebuilt graphs (:func:`check_closed`), which raises naming it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


def _tensors(value) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class ClosureFinder(TorchFunctionMode):
    """Records, while active, the tensors requiring grad that torch operations receive from
    outside (see the module docstring).

    Args:
        arguments: the tensors handed to ``func`` (state, time): never candidates.

    Attributes:
        external: id → tensor, in the order of first use: tensors requiring grad that an
            operation received and that no operation seen made.
        internal: id → tensor (weakly): tensors the operations seen returned.
    """

    def __init__(self, arguments: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.arguments = {id(a) for a in arguments}
        self.external: dict[int, torch.Tensor] = {}
        self.internal: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def made_inside(self, x: torch.Tensor) -> bool:
        """Whether an operation seen while active returned ``x``."""
        return self.internal.get(id(x)) is x

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for x in _tensors((args, kwargs)):
            i = id(x)
            if x.requires_grad and i not in self.arguments and i not in self.external \
                    and not self.made_inside(x):
                self.external[i] = x
        out = func(*args, **kwargs)
        for x in _tensors(out):
            if id(x) not in self.external:
                self.internal[id(x)] = x
        return out


def closure_modules(func) -> list[nn.Module]:
    """The ``nn.Module`` objects a plain function names (its closure cells and the globals
    its code uses), e.g. ``net`` for ``lambda t, y: net(y)``: the modules whose train/eval
    modes and buffers a recomputation replays when ``func`` is not a module itself. Not
    followed: attributes of other objects, ``functools.partial`` arguments."""
    if not inspect.isfunction(func):
        return []
    try:
        names = inspect.getclosurevars(func)
    except (TypeError, ValueError):
        return []
    found = {}
    for value in [*names.nonlocals.values(), *names.globals.values()]:
        if isinstance(value, nn.Module):
            found.setdefault(id(value), value)
    return list(found.values())


def _edge(x: torch.Tensor):
    return x.grad_fn, x.output_nr


def closure_tensors(
    outputs: Sequence[torch.Tensor],
    known: Sequence[torch.Tensor],
    finder: ClosureFinder,
) -> list[torch.Tensor]:
    """The tensors requiring grad, other than ``known`` and func's arguments, that
    ``outputs`` depend on, in the order func first used them.

    Args:
        outputs: func's outputs, evaluated with a graph under ``finder``.
        known: the tensors already differentiated (state arguments, listed parameters).
        finder: the mode that was active during the evaluation.

    Raises:
        ValueError: the graph reaches a leaf requiring grad that func made itself.
    """
    known_edges = {_edge(x) for x in known if x.grad_fn is not None}
    known_leaves = {id(x) for x in known if x.grad_fn is None} | finder.arguments
    candidates = {_edge(x): x for x in finder.external.values() if x.grad_fn is not None}
    found: dict[int, torch.Tensor] = {}
    stack = [_edge(o) for o in outputs if o.grad_fn is not None]
    edges, nodes = set(), set()
    while stack:
        edge = stack.pop()
        node = edge[0]
        if node is None or edge in edges:
            continue
        edges.add(edge)
        if edge in known_edges:
            continue
        if edge in candidates:
            found.setdefault(id(candidates[edge]), candidates[edge])
            continue
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) in known_leaves:
                continue
            if finder.made_inside(variable):
                raise ValueError(
                    f"func makes a tensor of shape {tuple(variable.shape)} that requires grad (a new leaf "
                    "on every call) and its output depends on it; no gradient method but 'direct' can "
                    "differentiate with respect to it. Create it outside func, or detach it")
            found.setdefault(id(variable), variable)  # a leaf used where the mode cannot see
            continue
        if node not in nodes:
            nodes.add(node)
            stack.extend(node.next_functions)
    order = {i: k for k, i in enumerate(finder.external)}
    return sorted(found.values(), key=lambda x: order.get(id(x), len(order)))


def check_closed(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], func=None) -> None:
    """Raise if ``outputs`` depend on a tensor requiring grad that is not among ``inputs``.

    Called on the graphs the backward rebuilds: a tensor that first reached ``func`` after
    its first evaluation (when the tensors it reaches were found) would otherwise silently
    receive no gradient from a method that differentiates only with respect to known inputs.

    Args:
        outputs: outputs of evaluations of func, with their graph.
        inputs: the tensors differentiated.
        func: the :class:`~anode._ivp.CheckedFunc` evaluated: a time tensor it was handed and
            that func made require grad (FFJORD's ``t.requires_grad_(True)``) is its own.

    Raises:
        ValueError: naming the shape of the first unknown tensor found.
    """
    known_leaves = {id(x) for x in inputs}
    known_edges = {_edge(x) for x in inputs if x.grad_fn is not None}
    stack = [_edge(o) for o in outputs if o.grad_fn is not None]
    edges, nodes = set(), set()
    while stack:
        edge = stack.pop()
        node = edge[0]
        if node is None or edge in edges or edge in known_edges:
            continue
        edges.add(edge)
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) not in known_leaves and not (func is not None and func.was_given(variable)):
                raise ValueError(
                    f"func uses a tensor of shape {tuple(variable.shape)} that requires grad but "
                    "is not among the tensors being differentiated; its gradient would be lost. The "
                    "tensors func reaches are found on its first evaluation: this one reached it "
                    "only later (or func makes it anew on every call). Pass it in params=."
                )
            continue
        if node not in nodes:
            nodes.add(node)
            stack.extend(node.next_functions)


def graph_ends(outputs: Sequence[torch.Tensor]) -> list:
    """``outputs`` as :func:`torch.autograd.grad` takes them without their values: their graph
    edges (:func:`torch.autograd.graph.get_gradient_edge`; the tensors themselves on a torch
    whose ``grad`` does not take edges). A vector–Jacobian product needs only where each
    output enters the graph; once the caller drops the tensors, their memory (a rebuilt
    step's result: one state) is free while the product runs, as under
    ``torch.utils.checkpoint``, whose recomputation keeps only what the backward saves."""
    if not _grad_takes_edges():
        return list(outputs)
    return [torch.autograd.graph.get_gradient_edge(y) for y in outputs]


@functools.cache
def _grad_takes_edges() -> bool:
    get_edge = getattr(torch.autograd.graph, "get_gradient_edge", None)
    if get_edge is None:
        return False
    with torch.enable_grad():
        x = torch.zeros((), requires_grad=True)
        try:
            torch.autograd.grad([get_edge(x * 2.0)], [x], [torch.ones(())])
        except (TypeError, RuntimeError, AttributeError):  # torch < 2.4
            return False
    return True


def _blocked(grad_outputs):
    return tuple(None if g is None else torch.zeros_like(g) for g in grad_outputs)


@contextlib.contextmanager
def independent(inputs: Sequence[torch.Tensor]) -> Iterator[None]:
    """While active, no gradient flows past a non-leaf tensor of ``inputs`` into its graph.

    A vector–Jacobian product taken with respect to a tensor and one computed from it outside
    func (a hypernetwork's output ``w`` and a view ``w[:2]``, or a parameter and a tensor
    made from it) would otherwise count the view's share twice: once in ``w``'s gradient,
    which autograd sums over every path, and once more when the solve's backward returns the
    view's gradient and autograd carries it on into ``w``. Each input's gradient is captured
    before its node runs; the node's pre-hook then passes zeros on. It also keeps the inner
    products out of graphs that are not the solve's.
    """
    nodes = {x.grad_fn for x in inputs if x.grad_fn is not None}
    handles = [node.register_prehook(_blocked) for node in nodes]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
