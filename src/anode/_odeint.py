"""The front door: check the input once, normalise it, dispatch to a gradient method.

:func:`odeint` takes anode's own vocabulary only: keywords (``method``, ``n_steps`` or
``step_size`` or ``rtol``/``atol``, ``gradient``) or one :class:`~anode._options.SolveOptions`
record. torchdiffeq's vocabulary (options dicts, ``odeint_adjoint``, ``adjoint_*`` arguments,
its method names) lives in :mod:`anode.dropin`, which the library does not import; the forms
of the first release that used it here (an options dict, :func:`odeint_adjoint`, ``schedule=``
and schedule options) still work for one release and warn.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

from ._adams import is_multistep
from ._callbacks import find_callbacks
from ._gradients import GradientMethod, resolve, schedule_keywords_gradient
from ._inputs import check_state, check_times, default_params, functorch_transforms
from ._ivp import IVP, CheckedFunc, SolveStats, check_signature, check_stats, time_dtypes
from ._methods import Method, get_method
from ._options import SolveOptions, keyword_options
from ._solvers import State
from ._stepping.controller import Adaptive
from ._stepping.grid import TimeGrid
from ._stepping.loops import forward_solve

Tensors = torch.Tensor | tuple[torch.Tensor, ...]


def takes_deprecated_schedule(function: Callable) -> Callable:
    """Let ``function`` (:func:`odeint`, ``ODEBlock.__init__``) take the first release's
    ``schedule=`` keyword and schedule options (``snapshots=``, ``memory_budget=``, ...) for one
    more release: they warn (DeprecationWarning) and become the ``gradient`` object they
    describe, ``anode.DiscreteAdjoint(schedule=...)``. ``function``'s own signature, which
    :func:`inspect.signature` reports, has no ``**kwargs``; remove this with the deprecation.

    Raises:
        TypeError: a keyword that is neither ``function``'s nor an option of a registered
            schedule (as Python's own message for an unexpected keyword).
        ValueError: as :func:`~anode._gradients.schedule_keywords_gradient`.
    """
    own = set(inspect.signature(function).parameters)
    caller = "anode." + function.__qualname__.removesuffix(".__init__")

    @functools.wraps(function)
    def with_schedule_keywords(*args, **kwargs):  # deprecated: remove with schedule=
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in own}
        if extra:
            kwargs["gradient"] = schedule_keywords_gradient(caller, kwargs, extra)
        return function(*args, **kwargs)

    return with_schedule_keywords


def _torchdiffeq_vocabulary():
    """:mod:`anode.dropin._options`, torchdiffeq's vocabulary, for the deprecated forms only
    (an options dict, :func:`odeint_adjoint`): the one place the library reaches the drop-in."""
    from .dropin import _options  # deprecated: remove with the dict form
    return _options


@takes_deprecated_schedule
def odeint(
    func: Callable,
    y0: Tensors,
    t: torch.Tensor,
    *,
    method: str | Method | None = None,
    n_steps: int | None = None,
    step_size: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    gradient: str | GradientMethod | None = None,
    params: Sequence[torch.Tensor] | None = None,
    stats: SolveStats | None = None,
    options: SolveOptions | None = None,
) -> Tensors:
    """Solve dy/dt = func(t, y), y(t[0]) = y0; return y at every time in t.

    Steps are taken on a fixed grid (``n_steps``, ``step_size``) or, for an embedded pair
    such as ``dopri5``, chosen by a step-size controller (:class:`anode.Adaptive`,
    given through ``options``); every gradient method then differentiates the accepted steps
    with their sizes held fixed (see :mod:`anode._stepping.adaptive`). An adaptive dopri5, bosh3 or
    tsit5 solve takes the output times between the first and the last from the interpolant of the
    step containing them (dense output, as torchdiffeq; ``Adaptive(dense_output=False)``
    steps onto them instead).

    The API follows torchdiffeq's ``odeint`` so that code can switch: ``func(t, y)`` takes a
    0-d time tensor and the state and returns dy/dt with the state's structure.

    Args:
        func: the vector field; an ``nn.Module`` or any callable. A module (or a bound
            method of one) is held weakly by the solve's graph: keep a reference to it until
            the backward pass.
        y0: the initial state: a floating-point tensor of any shape ``S``, or a tuple of
            such tensors (shapes ``S_i``).
        t: 1-D tensor of ``M`` output times (time units), increasing or decreasing;
            ``t[0]`` is the initial time. A repeated time (a zero-length interval) takes no
            step and repeats the state; ``M == 1`` returns ``y0``. May require grad.
        method: a Runge–Kutta method name (``euler``, ``midpoint``, ``heun``, ``ralston``,
            ``rk4`` (the classic one; torchdiffeq's ``rk4`` is ``rk38``), ``rk38``), an
            embedded pair (``dopri5``, ``bosh3``, ``tsit5``, ``dopri8``, ``adaptive_heun``; adaptive with
            default tolerances unless ``n_steps`` or ``step_size`` is given) or any explicit
            :class:`ButcherTableau`; or an Adams multistep method on a fixed grid
            (``explicit_adams``, ``implicit_adams`` (alias ``fixed_adams``) or an
            :class:`anode.Adams`; see :mod:`anode._adams`). None (the default): ``dopri5`` when
            ``rtol``/``atol`` are given, else ``rk4``.
        n_steps: number of equal steps in each interval between consecutive output times.
        step_size: alternative to ``n_steps``: the largest step; each interval gets the fewest
            equal steps no longer than it (see :func:`anode._stepping.grid.make_grid`). With neither
            (and no tolerances), one step per interval.
        rtol: relative tolerance (dimensionless) of adaptive stepping, :class:`anode.Adaptive`'s
            meaning (torchdiffeq's); giving it or ``atol`` selects adaptive steps (default
            method dopri5), the other at its default (``1e-7``, ``1e-9``). Not with
            ``n_steps``/``step_size``, except for ``implicit_adams``, whose corrector the
            tolerances set (as torchdiffeq). Other controller options (``first_step``,
            ``max_num_steps``, ...) go in an :class:`anode.Adaptive` through ``options``.
        atol: absolute tolerance (state units), as ``rtol``.
        gradient: ``"anode"`` (discrete adjoint, exact, low memory; Gholami et al. 2019),
            ``"direct"`` (autograd through the solver; exact, O(N_t) activations),
            ``"backsolve"`` (continuous adjoint of Chen et al. 2018, as torchdiffeq's
            ``odeint_adjoint``: a reverse-time solve; approximate, see docs/backsolve.md), or
            a gradient object such as ``anode.DiscreteAdjoint(schedule=anode.Revolve(4))`` (the schedule:
            ``anode.Recompute()``, the default, keeps the input only, the paper's scheme;
            ``anode.Store()`` keeps all states; ``anode.Revolve(snapshots)``;
            ``anode.Auto(memory_budget)``). None (the default): ``"anode"``.
        params: optional: tensors func depends on whose gradients are wanted besides the
            parameters of func when it is an ``nn.Module`` (like torchdiffeq's
            ``adjoint_params``, but added to ``func.parameters()`` rather than replacing them).
            Not needed for closures: ``anode`` and ``backsolve`` find the tensors requiring
            grad that func reaches on its first evaluation (parameters of a module a lambda or
            a bound method uses, non-leaf tensors such as a hypernetwork's output, whose
            gradient flows on into their graph; see :mod:`anode._gradients.closures`). A tensor
            that reaches func only in a later evaluation raises ValueError in the backward
            rather than lose its gradient: list it here.
        stats: a :class:`SolveStats` to accumulate step and function-evaluation counts into.
        options: a :class:`~anode._options.SolveOptions` record instead of ``method``,
            ``n_steps``, ``step_size``, ``rtol``, ``atol`` and ``gradient``, e.g.
            ``SolveOptions("dopri5", Adaptive(rtol=1e-6, max_num_steps=1000))``; ``method`` may
            repeat the record's own method, no other of those arguments may be given with it.
            torchdiffeq's options dicts belong to :func:`anode.dropin.odeint`.

    Deprecated forms (one release; each warns with DeprecationWarning and solves as before):
    ``options=`` a torchdiffeq options dict (use :func:`anode.dropin.odeint`), and
    ``schedule=`` with schedule options such as ``snapshots=`` (pass a gradient object,
    ``gradient=anode.DiscreteAdjoint(schedule=anode.Revolve(4))``).

    Returns:
        A tensor of shape ``(M, *S)``, or for a tuple ``y0`` a tuple of tensors of shapes
        ``(M, *S_i)``; entry ``i`` along the leading axis is the state at ``t[i]``.

    Under ``torch.no_grad()`` or ``torch.inference_mode()`` every gradient method runs the
    same graph-free forward (func may still differentiate inside, e.g. a Hamiltonian or a
    trace estimator). Under a ``torch.func`` transform (``vmap``, ``grad``, ...) the exact
    methods solve as ``direct`` does, which those transforms differentiate exactly (with
    direct's memory); ``backsolve`` runs its forward without a graph under ``vmap`` and
    raises under ``grad``, ``jacrev``, ``jvp``. Adaptive stepping raises under any of them
    (its step sizes depend on the state's values); use a fixed grid there. ``t`` batched by
    ``vmap`` (a time grid per sample) raises ValueError saying what to do instead.

    Dtypes (torchdiffeq's rules): ``func`` receives time in the state's dtype (a tuple's
    promoted dtype); a ``t`` of lower precision than the state is promoted to it. The
    step-size controller computes its norms in at least float32 (float16/bfloat16 states).

    torchdiffeq's step callbacks (``func.callback_step``, ``callback_accept_step``,
    ``callback_reject_step`` and their ``_adjoint`` forms) are called as
    :mod:`anode._callbacks` describes.

    Raises:
        TypeError: y0, t or params of the wrong type or dtype; options not a
            SolveOptions; an unknown keyword argument; func returns a wrong type,
            structure or dtype (the tuple component is named).
        ValueError: t not 1-D or not monotonic, NaN/Inf in t or y0, func's output depends
            on a leaf requiring grad that func makes itself (anode, backsolve), unknown method,
            implicit_adams under a ``torch.func`` transform, unknown gradient or schedule,
            ``n_steps < 1``, ``step_size <= 0``, both given, a fixed grid and tolerances both
            given, tolerances with a method that has no error estimate, ``options=`` given with
            other solve arguments (naming them), func returns a wrong shape; adaptive stepping
            under a ``torch.func`` transform or with func NaN/Inf at y0; tolerances below a
            float16/bfloat16 state's resolution (naming the dtype); ``t`` batched by
            ``vmap``; ``*_adjoint`` callbacks with a method that takes no backward steps.
        anode.AdaptiveSolveError: an adaptive solve exceeds ``max_num_steps`` between two
            output times or its step size underflows; the message names the time reached.
    """
    check_signature(func)
    keywords = {"method": method, "n_steps": n_steps, "step_size": step_size, "rtol": rtol,
                "atol": atol, "gradient": gradient}
    if isinstance(options, Mapping):
        names = _torchdiffeq_vocabulary()
        note = "; ".join(filter(None, [names.NAMES_DIFFER, names.renamed_method_note(method)]))
        warnings.warn("anode.odeint(options=<dict>) is deprecated: torchdiffeq's options dicts go to "
                      f"anode.dropin.odeint; anode.odeint takes an anode.SolveOptions. {note}",
                      DeprecationWarning, stacklevel=3)
        options = names.anode_dict_options(options, **keywords)
    else:
        options = options_record(options, keywords)
    return _stacked(func, y0, t, options, params=params, stats=stats)


def options_record(options: SolveOptions | None, keywords: dict) -> SolveOptions:
    """The record of one solve: ``options`` itself, or the record of the keyword arguments.

    Raises:
        TypeError: ``options`` neither None nor a SolveOptions.
        ValueError: ``options`` with another keyword than a ``method`` equal to its own.
    """
    if options is None:
        return keyword_options(**keywords)
    if not isinstance(options, SolveOptions):
        raise TypeError("options must be an anode.SolveOptions (torchdiffeq's options dicts go to "
                        f"anode.dropin.odeint), not {type(options).__name__}")
    given = [name for name, value in keywords.items() if value is not None]
    if given == ["method"] and get_method(keywords["method"]) == options.method:
        given = []  # repeating the record's own method is no conflict
    if given:
        raise ValueError(f"give either options= or the separate solve arguments, not both: got "
                         f"options= and {'=, '.join(given)}=")
    return options


def _stacked(func, y0, t, options: SolveOptions, *, params, stats) -> Tensors:
    """:func:`odeint`'s result: the states at the output times stacked on a new leading axis."""
    state, is_tuple, rows = solve(func, y0, t, options, params=params, stats=stats)
    stacked = tuple(torch.stack([row[i] for row in rows]) for i in range(len(state)))
    return stacked if is_tuple else stacked[0]


def odeint_adjoint(
    func: Callable,
    y0: Tensors,
    t: torch.Tensor,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    method: str | Method | None = None,
    options: Mapping | SolveOptions | None = None,
    adjoint_rtol=None,
    adjoint_atol=None,
    adjoint_method=None,
    adjoint_options=None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    gradient: str | GradientMethod = "backsolve",
    **kwargs,
) -> Tensors:
    """Deprecated (``anode.odeint_adjoint`` warns on access): use
    :func:`anode.dropin.odeint_adjoint` (torchdiffeq's vocabulary) or
    ``anode.odeint(..., gradient="backsolve")``.

    The first release's ``odeint_adjoint``: :func:`odeint` with the continuous adjoint
    (``gradient="backsolve"``, Chen et al., NeurIPS 2018) as the default gradient, anode's
    method names, and torchdiffeq's ``adjoint_*`` arguments, each None or equal to the
    forward's (``adjoint_options`` may name the reverse solve's error norm).

    Args:
        func, y0, t, rtol, atol, method, options: as :func:`odeint`; ``options`` may be a
            torchdiffeq options dict.
        adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options: None or the forward's value.
        adjoint_params: as :func:`odeint`'s ``params``.
        gradient: default ``"backsolve"``.
        **kwargs: ``n_steps``, ``step_size``, ``stats``, ``schedule`` and schedule options.

    Raises:
        NotImplementedError: an ``adjoint_*`` argument that differs from the forward's.
        ValueError, TypeError: as :func:`odeint`.
    """
    vocabulary = _torchdiffeq_vocabulary()
    adaptive = rtol is not None or atol is not None or isinstance(options, Mapping)
    default = options.method.name if isinstance(options, SolveOptions) else "dopri5" if adaptive else "rk4"
    norm = vocabulary.check_adjoint_arguments(
        rtol=1e-7 if rtol is None else rtol, atol=1e-9 if atol is None else atol,
        method=default if method is None else method, options=options, adjoint_rtol=adjoint_rtol,
        adjoint_atol=adjoint_atol, adjoint_method=adjoint_method, adjoint_options=adjoint_options)
    if note := vocabulary.renamed_method_note(default if method is None else method):
        warnings.warn(f"anode.odeint_adjoint is deprecated: {note}", DeprecationWarning, stacklevel=2)
    stats = kwargs.pop("stats", None)
    keywords = {"method": method, "n_steps": kwargs.pop("n_steps", None),
                "step_size": kwargs.pop("step_size", None), "rtol": rtol, "atol": atol}
    if kwargs:  # schedule= and schedule options
        gradient = resolve(gradient, kwargs.pop("schedule", None), **kwargs)
    keywords["gradient"] = vocabulary.adjoint_gradient(gradient, norm)
    if isinstance(options, Mapping):
        options = vocabulary.anode_dict_options(options, **keywords)
    else:
        options = options_record(options, keywords)
    return _stacked(func, y0, t, options, params=adjoint_params, stats=stats)


# torch.compile runs the solve itself eagerly (a graph break around it) and compiles what is
# compiled inside it: the vector field (anode_workbench.accel.compile_model compiles it in place).
# Traced, the solver's Python bookkeeping (step counters, records, schedules) would guard and
# recompile on every block and grad mode, and a compiled custom Function would not replay
# its forward in the backward as anode's does.
@torch.compiler.disable
def solve(
    func: Callable, y0: Tensors, t: torch.Tensor, options: SolveOptions, *,
    params: Sequence[torch.Tensor] | None = None, stats: SolveStats | None = None,
    grid: TimeGrid | None = None,
) -> tuple[State, bool, list[State]]:
    """:func:`odeint` without stacking: ``(y0 as a tuple, whether y0 was a tuple, the tuple
    state at every output time)``. Used by :class:`~anode._nn.ODEBlock`, which needs only the
    last state and should not copy the input into a stacked result.

    ``grid`` replays given steps (for ``t``'s output times) instead of choosing them: the
    accepted steps of an event search (:mod:`anode._events`). The options' controller then
    serves only ``backsolve``'s adaptive reverse solve."""
    transforms = functorch_transforms()
    state, is_tuple = check_state(y0, check_values=not transforms)
    times = check_times(t)
    t, func_time_dtype = time_dtypes(t, state)
    adaptive = isinstance(options.stepping, Adaptive)
    if adaptive and transforms:
        raise ValueError(
            f"adaptive stepping cannot run under torch.func {'/'.join(sorted(transforms))}: its step "
            "sizes depend on the values of the state; use a FixedGrid (n_steps= or step_size=)")
    if transforms and is_multistep(options.method) and options.method.implicit:
        raise ValueError(
            f"implicit_adams cannot run under torch.func {'/'.join(sorted(transforms))}: its corrector "
            "iterates until the values converge; use explicit_adams or a Runge-Kutta method")
    # an adaptive solve's grid is the accepted steps of its forward sweep, set on the IVP
    if grid is None and not adaptive:
        grid = options.stepping.grid(times, func, y0, t)
    stats = check_stats(stats)
    if len(set(times)) == 1:  # no step to take (one output time, or only repeats of it)
        return state, is_tuple, [state] * len(times)
    inference = torch.is_inference_mode_enabled()
    if inference:
        # func may differentiate inside, which inference tensors forbid: solve outside
        # inference mode (still without a graph) on ordinary copies.
        with torch.inference_mode(False):
            state = tuple(y.clone() if y.is_inference() else y for y in state)
            t = t.clone() if t.is_inference() else t
    ivp = IVP(
        func=CheckedFunc(func, is_tuple, time_dtype=func_time_dtype),
        y0=state,
        t=t,
        grid=grid,
        tableau=options.method,
        params=default_params(func, params),
        stats=stats,
        controller=options.stepping if adaptive else None,
        times=tuple(times),
        callbacks=find_callbacks(func, is_tuple, t, adaptive, options.method.name),
    )
    # Evaluations without grad return detached outputs, so that a graph func builds inside
    # (FFJORD's divergence) dies with its evaluation; not where forward-mode AD, which
    # no_grad leaves on, or a torch.func transform needs the outputs' tangents.
    forward_ad = getattr(torch.autograd.forward_ad, "_current_level", 0) >= 0
    ivp.func.detach_without_grad = not (transforms or forward_ad)
    if inference:
        with torch.inference_mode(False), torch.no_grad():
            outputs = forward_solve(ivp)
    elif transforms or not torch.is_grad_enabled():
        # torch.func transforms differentiate plain operations only. For an exact method
        # that is the same gradient; an approximate one cannot be had there.
        if transforms - {"Vmap", "Functionalize"}:
            ivp.callbacks.check_backward(f"direct (under torch.func {'/'.join(sorted(transforms))})")
        if transforms and not options.gradient.exact:
            if transforms - {"Vmap", "Functionalize"}:
                raise ValueError(
                    f"gradient={options.gradient.name!r} cannot run under torch.func "
                    f"{'/'.join(sorted(transforms))}: its gradient is not that of the operations "
                    "run; use gradient='anode' or 'direct'"
                )
            with torch.no_grad():
                outputs = forward_solve(ivp)
        else:
            outputs = forward_solve(ivp)
    else:
        if not options.gradient.calls_adjoint_callbacks and any(
                x.requires_grad for x in (*state, t, *ivp.params)):
            ivp.callbacks.check_backward(options.gradient.name)
        outputs = options.gradient.solve(ivp)
    grid = ivp.grid
    n_states = len(grid.solve_outputs)
    by_step = dict(zip(grid.solve_outputs, outputs[:n_states]))
    by_step[0] = state
    tapped = outputs[n_states:]
    return state, is_tuple, [state, *(by_step[k] if kind == "step" else tapped[k]
                                      for kind, k in grid.output_sources)]
