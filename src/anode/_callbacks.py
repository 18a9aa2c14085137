"""torchdiffeq's step callbacks: methods of ``func`` that a solve calls as it takes its steps.

torchdiffeq 0.2.5 (``_impl/misc.py``, ``rk_common.py``, ``solvers.py``, ``adjoint.py``) looks
for six optional attributes of ``func``, each called as ``hook(t0, y0, dt)``, its return value
ignored:

* ``callback_step``: before every step attempt of the forward solve;
* ``callback_accept_step`` / ``callback_reject_step``: after an adaptive step attempt is
  accepted / rejected, with the same arguments (the step's start, not its result);
* ``callback_step_adjoint``, ``callback_accept_step_adjoint``,
  ``callback_reject_step_adjoint``: the same during the backward pass.

The arguments, as torchdiffeq passes them: ``t0`` the step's start time (a 0-d tensor in
``t``'s dtype, in the caller's time, also when ``t`` decreases), ``y0`` the state there (a
tensor, or a tuple for a tuple state), ``dt`` the step's size as a positive 0-d tensor (its
magnitude, also when time decreases).

When each is called, in anode (the rule: every hook is called once per step of the solve it
belongs to, never for a step that a backward pass merely recomputes):

* Forward hooks: once per step attempt of the forward solve, whatever the gradient method
  and grad mode. Steps that a backward pass takes again (the ``recompute`` and ``revolve``
  schedules, a backward with ``create_graph=True``, the second pass of ``direct`` when ``t``
  requires grad, ``backsolve``'s reverse solve of the state) call no forward hook: they
  replay steps already reported. An adaptive solve's initial step-size probe is no step.
* ``gradient="backsolve"`` (torchdiffeq's ``odeint_adjoint``): the adjoint hooks are the
  reverse solve's forward hooks, as in torchdiffeq: once per reverse step (and, adaptive,
  accepted or rejected), ``t0`` the reverse step's start (the later time), ``y0`` the
  augmented state in torchdiffeq's layout ``(t adjoint, y, y adjoint, *parameter
  adjoints)`` (the ``t`` adjoint is zero when ``t`` does not require grad, where torchdiffeq
  integrates it anyway; ``y`` and its
  adjoint have the state's structure; the parameters are those differentiated).
* ``gradient="anode"`` (the discrete adjoint): the backward differentiates the forward's
  accepted steps, last first. Before the vector–Jacobian product of each, it calls
  ``callback_step_adjoint`` and then ``callback_accept_step_adjoint`` with that step's forward
  arguments, the ``(t0, y0, dt)`` that ``callback_step`` received for it (``y0`` recomputed or
  kept, without a graph); ``callback_reject_step_adjoint`` is never called (no backward step
  is rejected). A backward with ``create_graph=True`` differentiates the rebuilt solve as a
  whole and raises RuntimeError if an adjoint hook is set.
* ``gradient="direct"`` takes no backward steps (autograd differentiates the forward): an
  adjoint hook raises ValueError when the solve records a graph (grad enabled and an input
  or parameter requiring grad), as under a ``torch.func`` transform that differentiates.
* Fixed-grid methods accept every step: ``callback_accept_step`` and
  ``callback_reject_step`` (and their ``_adjoint`` forms) are never called there, and a
  warning says so, as torchdiffeq warns.

An attribute of ``func`` whose name starts with ``callback_`` but is none of the six (a
misspelling: ``callback_steps``) is reported by a warning rather than ignored silently.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
"""torchdiffeq's forward step hooks."""
ADJOINT_CALLBACK_NAMES = tuple(f"{name}_adjoint" for name in CALLBACK_NAMES)
"""Their counterparts called during the backward pass."""


def _as_time(x, like: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(like.dtype)
    return torch.tensor(x, dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class StepHooks:
    """One set of hooks (forward or adjoint) and how they see the solver's tuple state.

    Attributes:
        step, accept, reject: the hooks, None where ``func`` has none.
        view: turns the solver's tuple state into what a hook receives.
        like: a tensor whose dtype and device the time arguments take (``t``).
    """

    step: Callable | None = None
    accept: Callable | None = None
    reject: Callable | None = None
    view: Callable = lambda y: y
    like: torch.Tensor | None = None

    def __bool__(self) -> bool:
        return any(h is not None for h in (self.step, self.accept, self.reject))

    def _call(self, hook, t0, y, dt) -> None:
        if hook is not None:
            dt = dt.detach().abs() if isinstance(dt, torch.Tensor) else abs(dt)
            hook(_as_time(t0, self.like), self.view(y), _as_time(dt, self.like))

    def on_step(self, t0, y, dt) -> None:
        """Before a step from ``y`` at ``t0`` (a float or 0-d tensor) of size ``dt`` (signed)."""
        self._call(self.step, t0, y, dt)

    def on_accept(self, t0, y, dt) -> None:
        """After that step is accepted."""
        self._call(self.accept, t0, y, dt)

    def on_reject(self, t0, y, dt) -> None:
        """After that step is rejected."""
        self._call(self.reject, t0, y, dt)

    def with_view(self, view: Callable) -> StepHooks:
        """The same hooks seeing the state through ``view``."""
        return replace(self, view=view)


@dataclass(frozen=True)
class Callbacks:
    """The forward and adjoint hooks found on ``func`` (see the module docstring)."""

    forward: StepHooks = StepHooks()
    adjoint: StepHooks = StepHooks()

    def check_backward(self, gradient_name: str) -> None:
        """Raise ValueError if adjoint hooks are set but ``gradient_name`` takes no backward
        steps to call them on."""
        if self.adjoint:
            raise ValueError(
                f"{self._adjoint_names()} cannot be called by gradient={gradient_name!r}: it takes no "
                "backward steps (autograd differentiates the forward as a whole); use gradient='anode' "
                "or 'backsolve', or remove the hook")

    def check_double_backward(self) -> None:
        """Raise RuntimeError if adjoint hooks are set (a backward with ``create_graph=True``
        takes no backward steps to call them on)."""
        if self.adjoint:
            raise RuntimeError(
                f"{self._adjoint_names()} cannot be called by a backward with create_graph=True: it "
                "differentiates the rebuilt solve as a whole, without backward steps; remove the "
                "hook for double backward")

    def _adjoint_names(self) -> str:
        hooks = (self.adjoint.step, self.adjoint.accept, self.adjoint.reject)
        return "/".join(n for n, h in zip(ADJOINT_CALLBACK_NAMES, hooks) if h is not None)


NO_CALLBACKS = Callbacks()


@functools.lru_cache(maxsize=256)
def _class_names(cls: type) -> tuple[str, ...]:
    return tuple(n for n in dir(cls) if n.startswith("callback_"))


def _hook(func, name: str) -> Callable | None:
    hook = getattr(func, name, None)
    if hook is not None and not callable(hook):
        raise TypeError(f"func.{name} must be callable as {name}(t0, y0, dt), not {type(hook).__name__}")
    return hook


def find_callbacks(func, is_tuple: bool, t: torch.Tensor, adaptive: bool, method: str) -> Callbacks:
    """The hooks ``func`` carries, wrapped to receive the state with its own structure.

    Args:
        func: the user's function (a module, a bound method, any callable).
        is_tuple: whether the state is a tuple (else hooks receive its one tensor).
        t: the output times (the hooks' time arguments take its dtype and device).
        adaptive: whether steps are chosen by a controller (else accept/reject hooks warn).
        method: the method's name, for the warning.

    Raises:
        TypeError: a hook attribute that is not callable.

    Warns:
        UserWarning: accept/reject hooks with a fixed-grid method (never called, as in
        torchdiffeq); an attribute named ``callback_...`` that is not a known hook.
    """
    names = set(_class_names(type(func)))
    names.update(n for n in getattr(func, "__dict__", ()) if n.startswith("callback_"))
    if not names:
        return NO_CALLBACKS
    unknown = sorted(names - set(CALLBACK_NAMES) - set(ADJOINT_CALLBACK_NAMES))
    if unknown:
        warnings.warn(f"func has {unknown}, which no solve calls; the step callbacks are "
                      f"{[*CALLBACK_NAMES, *ADJOINT_CALLBACK_NAMES]}", UserWarning, stacklevel=4)
    hooks = {n: _hook(func, n) for n in (*CALLBACK_NAMES, *ADJOINT_CALLBACK_NAMES)}
    if not adaptive:
        never = [n for n in ("callback_accept_step", "callback_reject_step",
                             "callback_accept_step_adjoint", "callback_reject_step_adjoint")
                 if hooks[n] is not None]
        if never:
            warnings.warn(f"{never} are never called: the fixed-grid method {method!r} accepts every "
                          "step (only callback_step and callback_step_adjoint are called)",
                          UserWarning, stacklevel=4)

    def view(y):
        return y if is_tuple else y[0]

    def hook_set(step, accept, reject) -> StepHooks:
        return StepHooks(hooks[step], hooks[accept] if adaptive else None,
                         hooks[reject] if adaptive else None, view, t)

    return Callbacks(hook_set(*CALLBACK_NAMES), hook_set(*ADJOINT_CALLBACK_NAMES))


__all__ = ["CALLBACK_NAMES", "ADJOINT_CALLBACK_NAMES", "Callbacks", "StepHooks", "NO_CALLBACKS",
           "find_callbacks"]
