"""Rebuilding a step without the one operation whose value its backward never reads.

A whole rebuilt step ``y' = y + h sum_i b_i k_i`` is differentiated, never evaluated: the
backward needs the tensors autograd saves, not the step's result. The last stage's
``k_s = f(Y_s)`` is read only by that final sum, which saves nothing, so the last operation
of ``f`` need not run when its derivative needs only its inputs (a linear layer, a
convolution: autograd saves their inputs before the kernel runs). ``torch.utils.checkpoint``'s
non-reentrant mode skips the same work by stopping its recomputation once every saved tensor
is back (PyTorch, ``torch/utils/checkpoint.py``, "early stopping"); the step's graph there
comes from the forward, here from the rebuild, so the skip is made below autograd: a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` counts the operations of the last
stage's evaluation and hands autograd zeros of the right shape for the last one. Autograd
still records the operation with its saved inputs, so the vector–Jacobian product is the one
of the full step, bit for bit.

What makes it safe, checked on every step it is used. The first rebuilt step of each
backward evaluates in full and learns: the evaluation's operation count; that ``f`` returns
the last operation's own output (so nothing read it after, not even outside torch's
dispatcher); that the operation's backward node does not save that output (``tanh`` saves
it: no skip) and is not a custom autograd Function's (whose ``ctx`` may hold anything); and
that the output has no hook. A later step skips only if its evaluation takes the same count,
returns the skipped tensor itself and passes the same checks; otherwise the step is rebuilt
in full and skipping stops for the rest of the backward. A function (or module) whose first
step found its last operation not skippable is remembered, weakly, and not counted again in
later backwards: only speed depends on that. It is never tried where the
result's value is read (gradients with respect to time), where the step draws random
numbers, for states of several tensors, under functorch transforms, for tensor subclasses
and sparse tensors, or once ``torch.compile`` has compiled anything in the process (compiled
code would run eagerly under the mode).

What no check can see: Python code outside autograd's records that keeps the output and
reads its value later, in that evaluation's side effects (a value ``func`` stores on itself)
or during the backward (a hook registered on the output's ``grad_fn`` node rather than on
the tensor). Such code sees zeros where without the skip it would see the rebuilt value; the
values of the forward pass are not touched.

Measured on one thread (docs/benchmarks.md, the frontier): 2 % off a forward+backward of W3
(one convolution skipped per step, 1 of 32 convolution passes), nothing on W2, whose matrix
product costs about what the mode's Python costs.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .._solvers import State


def _plain(x) -> bool:
    return isinstance(x, torch.Tensor) and x.layout == torch.strided and (
        type(x) is torch.Tensor or isinstance(x, torch.nn.Parameter))


def _tensors(args) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(_tensors(a))
    return out


def _skippable(op, args, kwargs) -> bool:
    """An out-of-place, deterministic operation returning one fresh tensor, of plain tensors."""
    schema = op._schema
    if schema.is_mutable or len(schema.returns) != 1 or torch.Tag.nondeterministic_seeded in op.tags:
        return False
    ret = schema.returns[0]
    if ret.alias_info is not None or str(ret.type) != "Tensor":
        return False
    tensors = _tensors(args) + _tensors(kwargs.values())
    return bool(tensors) and all(_plain(t) for t in tensors) and any(t.requires_grad for t in tensors)


def _signature(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.stride(), value.dtype, value.device)
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _signature(v)) for k, v in value.items()))
    return value


_RESULTS: dict = {}  # (op, signature of its arguments) -> (shape, stride, dtype) of its result


def _placeholder(op, args, kwargs) -> torch.Tensor | None:
    """Zeros shaped as ``op``'s result; None without a meta kernel. The shape comes from the
    meta kernel once per operation and argument shapes (a meta kernel written in Python costs
    about as much as a small matrix product). Zeros, not an unfilled tensor: the final sum
    still adds the value, and an unfilled tensor may hold denormal numbers, which make that
    addition slow."""
    device = _tensors(args)[0].device
    try:
        key = (op, _signature(args), _signature(kwargs))
        hash(key)
    except TypeError:  # an argument without a hash: look it up each time
        key = None
    found = _RESULTS.get(key) if key is not None else None
    if found is None:
        def meta(x):
            return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta") \
                if isinstance(x, torch.Tensor) else x
        try:
            result = op(*pytree.tree_map(meta, args), **pytree.tree_map(meta, kwargs))
        except Exception:  # no meta kernel: the operation runs
            return None
        found = (tuple(result.shape), result.stride(), result.dtype)
        if key is not None and len(_RESULTS) < 256:
            _RESULTS[key] = found
    shape, stride, dtype = found
    return torch.empty_strided(shape, stride, dtype=dtype, device=device).zero_()


class _Counter(TorchDispatchMode):
    """Counts the operations below autograd; skips the ``skip_at``-th if it may (0: none)."""

    def __init__(self, skip_at: int = 0) -> None:
        super().__init__()
        self.count, self.skip_at = 0, skip_at
        self.last = self.skipped = None

    def __torch_dispatch__(self, op, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.count += 1
        if self.count == self.skip_at and _skippable(op, args, kwargs):
            self.skipped = _placeholder(op, args, kwargs)
            if self.skipped is not None:
                return self.skipped
        out = op(*args, **kwargs)
        self.last = out
        return out


def _may_read(x: torch.Tensor) -> bool:
    """Whether the backward may read ``x``'s value: its node saved a tensor sharing its memory,
    or keeps what it likes (a custom autograd Function's ``ctx``, whose attributes autograd
    does not list), or ``x`` has a hook (which may read it). Unknown counts as yes."""
    node = x.grad_fn
    if node is None or isinstance(node, torch.autograd.function.BackwardCFunction) or x._backward_hooks:
        return True
    try:
        ptr = x.untyped_storage().data_ptr()
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # freed: nothing of x's
                continue
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == ptr:
                    return True
    except Exception:  # a saved tensor without storage (sparse): cannot tell
        return True
    return False


def _transforms_active() -> bool:
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is None or peek() is not None


def _compiled_anything() -> bool:
    """Whether ``torch.compile`` has compiled code in this process: compiled code runs
    eagerly under a dispatch mode, so the skip is not tried once any may be in ``func``."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:
        return False
    try:
        return bool(dynamo.utils.counters["frames"]["ok"])
    except (AttributeError, KeyError, TypeError):  # another torch: assume it has
        return True


_NEVER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""The user's functions (or their modules) whose first rebuilt step found the last operation
not skippable: later backwards do not count their operations again. Only speed depends on
it; a function that would have passed is rebuilt in full."""


def _owner(func):
    """What a function that evaluates the field is remembered by: the module it belongs to,
    or the user's function itself; None where neither can be held weakly."""
    module = getattr(func, "module", None)
    owner = module() if callable(module) else None
    if owner is None:
        try:
            owner = func.func
        except (AttributeError, RuntimeError):
            return None
    try:
        weakref.ref(owner)
    except TypeError:
        return None
    return None if hasattr(owner, "__self__") else owner


class LastOperation:
    """The skip of one backward (see the module docstring); :meth:`rebuild` takes a step.

    Attributes:
        count: operations of one evaluation of ``func``, learnt on the first rebuilt step;
            None before, 0 once skipping has stopped for this backward.
        skipped: the steps rebuilt without their last operation.
    """

    def __init__(self) -> None:
        self.count: int | None = None
        self.skipped = 0

    def usable(self, y: State, *, need_t: bool, drew: bool) -> bool:
        """Whether a step from ``y`` may be rebuilt with the skip."""
        return (self.count != 0 and not need_t and not drew and len(y) == 1 and _plain(y[0])
                and not torch.jit.is_scripting() and not torch.jit.is_tracing() and not _transforms_active()
                and not _compiled_anything())

    def rebuild(self, build: Callable[[Callable], tuple], func: Callable, n_evaluations: int) -> tuple:
        """``build(func)`` (a step's rebuild calling ``func`` ``n_evaluations`` times), its last
        evaluation under the skip; rebuilt in full once more where a check fails."""
        owner = _owner(func) if self.count is None else None
        if owner is not None and owner in _NEVER:
            self.count = 0
            return build(func)
        calls, seen = [0], []

        def last_skipped(t, y):
            calls[0] += 1
            if calls[0] < n_evaluations:
                return func(t, y)
            with _Counter(self.count or 0) as counter:
                out = func(t, y)
            seen.append((counter, out))
            return out

        result = build(last_skipped)
        if len(seen) != 1:
            self.count = 0
            return result
        counter, out = seen[0]
        single = isinstance(out, tuple) and len(out) == 1 and isinstance(out[0], torch.Tensor)
        k = out[0] if single else None
        if self.count is None:  # the learning step: full values, so a saved alias is real
            fits = k is not None and k is counter.last and not _may_read(k)
            self.count = counter.count if fits else 0
            if not fits and owner is not None:
                _NEVER[owner] = True
            return result
        if counter.skipped is None:
            return result  # nothing skipped: a full rebuild
        if counter.count == self.count and k is counter.skipped and not _may_read(k):
            self.skipped += 1
            return result
        self.count = 0  # func changed between steps: this step again, in full
        seen.clear()
        del result, out, k, counter
        return build(func)
