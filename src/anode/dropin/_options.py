"""torchdiffeq's method names, options dicts and adjoint arguments, mapped onto anode's records.

The one place where torchdiffeq 0.2.5's meanings (``torchdiffeq/_impl/odeint.py``,
``adjoint.py``, ``fixed_grid.py``, ``rk_common.py``) become a
:class:`~anode._options.SolveOptions` (:func:`from_torchdiffeq`), used by :mod:`anode.dropin`.
The library does not import this module, with one exception that goes away with the
deprecated forms of the first release: ``anode.odeint(options=<dict>)`` and
``anode.odeint_adjoint`` reach :func:`anode_dict_options`, :func:`check_adjoint_arguments`
and :func:`adjoint_gradient` through ``anode._odeint._torchdiffeq_vocabulary``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

import torch

from .._adams import Adams, is_multistep
from .._gradients import Backsolve, GradientMethod
from .._methods import METHODS as ANODE_METHODS
from .._methods import Method, get_method
from .._options import SolveOptions
from .._solvers import ButcherTableau
from .._stepping.controller import Adaptive
from .._stepping.fixed_grid import FixedGrid

# Heun's third-order method, torchdiffeq's "heun3" (fixed_grid.py, Heun3).
HEUN3 = ButcherTableau("heun3", ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75), (0.0, 1 / 3, 2 / 3))
# Fehlberg's RK1(2) pair, torchdiffeq's "fehlberg2" (fehlberg2.py): order 2 in its controller.
FEHLBERG2 = ButcherTableau(
    "fehlberg2", ((), (0.5,), (1 / 256, 255 / 256)), (1 / 512, 255 / 256, 1 / 512), (0.0, 0.5, 1.0),
    b_error=(-1 / 512, 0.0, 1 / 512), order=2)

METHODS: MappingProxyType[str, Method] = MappingProxyType({
    "dopri5": ANODE_METHODS["dopri5"],
    "dopri8": ANODE_METHODS["dopri8"],
    "bosh3": ANODE_METHODS["bosh3"],
    "fehlberg2": FEHLBERG2,
    "adaptive_heun": ANODE_METHODS["adaptive_heun"],
    "euler": ANODE_METHODS["euler"],
    "midpoint": ANODE_METHODS["midpoint"],
    "heun2": ANODE_METHODS["heun"],
    "heun3": HEUN3,
    "rk4": ANODE_METHODS["rk38"],  # torchdiffeq's fixed-grid rk4 is Kutta's 3/8 rule (rk4_alt_step_func)
    "tsit5": ANODE_METHODS["tsit5"],  # not in torchdiffeq 0.2.5; anode's Tsitouras 5(4) pair
    "explicit_adams": ANODE_METHODS["explicit_adams"],  # anode._adams: the same fixed-grid Adams methods
    "implicit_adams": ANODE_METHODS["implicit_adams"],
    "fixed_adams": ANODE_METHODS["implicit_adams"],
})
"""torchdiffeq's method names and the anode method object each runs (read-only, as
:data:`anode.METHODS`, whose names differ: torchdiffeq's ``rk4`` is anode's ``rk38``)."""

UNSUPPORTED_METHODS: dict[str, str] = {}
"""torchdiffeq method names anode does not solve, each with the reason; empty: every method
of torchdiffeq 0.2.5 is supported."""

FIXED_OPTIONS = ("step_size", "perturb", "interp", "grid_constructor")
"""torchdiffeq options taken by the fixed-grid methods, → :class:`anode.FixedGrid`:
``step_size``, ``perturb`` and ``grid_constructor`` as there; ``interp`` accepted (anode
steps onto each output time, so nothing is interpolated)."""

ADAMS_OPTIONS = FIXED_OPTIONS + ("max_order", "max_iters")
"""torchdiffeq options taken by ``explicit_adams``/``implicit_adams``: the fixed-grid ones and
``max_order``, ``max_iters`` (→ :class:`~anode._adams.Adams`; ``max_iters`` is used by the
implicit method only, as in torchdiffeq). The implicit method's corrector takes ``rtol`` and
``atol``."""

ADAPTIVE_OPTIONS = ("first_step", "max_num_steps", "safety", "ifactor", "dfactor", "max_step",
                    "min_step", "dtype", "norm", "step_t", "jump_t")
"""torchdiffeq options taken by the adaptive methods, → :class:`anode.Adaptive`:
``first_step``, ``max_num_steps``, ``safety``, ``ifactor``, ``dfactor``, ``max_step``,
``norm``, ``step_t``, ``jump_t`` as there; ``min_step`` 0 only, ``dtype`` float64 only
(anode controls steps in float64)."""


def _number(name: str, value, kind=float):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number; per-element tensors (shape "
                             f"{tuple(value.shape)}) are not supported")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    return kind(value)


def _method(method) -> Method:
    if method is None:
        return METHODS["dopri5"]
    if isinstance(method, (ButcherTableau, Adams)):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a torchdiffeq method name, not {type(method).__name__}")
    if method in UNSUPPORTED_METHODS:
        raise NotImplementedError(
            f"method {method!r} is not supported: {UNSUPPORTED_METHODS[method]}. Supported: "
            f"{sorted(METHODS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]


def from_torchdiffeq(*, rtol=1e-7, atol=1e-9, method: str | Method | None = None,
                     options: Mapping | None = None,
                     gradient: str | GradientMethod = "anode") -> SolveOptions:
    """The :class:`~anode._options.SolveOptions` for torchdiffeq's ``rtol``, ``atol``,
    ``method`` and ``options`` dict (see the module docstring for the mapping).

    Args:
        rtol: relative tolerance of the adaptive methods and of implicit_adams' corrector
            (unused by the other fixed-grid methods, as in torchdiffeq): a number or a
            one-element tensor; a tuple or list per component of a tuple state; a tensor per
            element (see :class:`anode.Adaptive`).
        atol: absolute tolerance (state units), in the same forms as ``rtol``.
        method: a name in :data:`METHODS` (None: ``dopri5``), an anode tableau or an
            :class:`~anode._adams.Adams`.
        options: the options dict: :data:`FIXED_OPTIONS` for a fixed-grid method,
            :data:`ADAPTIVE_OPTIONS` for an adaptive one, :data:`ADAMS_OPTIONS` for the
            Adams methods.
        gradient: the gradient method.

    Raises:
        ValueError: an unknown method; an option the method does not take (naming it and
            listing those it takes); an option value anode cannot honour; out-of-range
            values (as :class:`anode.Adaptive`, :class:`anode.FixedGrid`).
        NotImplementedError: a torchdiffeq method anode does not implement; ``min_step``
            other than 0, ``dtype`` other than float64.
        TypeError: a non-numeric option or tolerance, ``options`` not a mapping.
    """
    resolved = _method(method)
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict of torchdiffeq options, not {type(options).__name__}")
    opts = dict(options or {})
    embedded, name = resolved.embedded, method if isinstance(method, str) else resolved.name
    supported = ADAPTIVE_OPTIONS if embedded else ADAMS_OPTIONS if is_multistep(resolved) else FIXED_OPTIONS
    for key in opts:
        if key not in supported:
            kind = "adaptive" if embedded else "fixed-grid"
            raise ValueError(f"unknown option {key!r} for the {kind} method {name!r}; "
                             f"its supported options are {list(supported)}")
    if not embedded:
        if opts.get("interp", "linear") not in ("linear", "cubic"):
            raise ValueError(f"option interp must be 'linear' or 'cubic', got {opts['interp']!r}")
        step = opts.get("step_size")
        perturb = opts.get("perturb", False)
        stepping = FixedGrid(step_size=None if step is None else _number("step_size", step),
                             perturb=bool(perturb) if isinstance(perturb, (bool, int)) else perturb,
                             grid_constructor=opts.get("grid_constructor"))
        if is_multistep(resolved):
            resolved = _adams(resolved, opts, rtol, atol)
        return SolveOptions(resolved, stepping, gradient)
    if _number("min_step", opts.pop("min_step", 0.0)) != 0:
        raise NotImplementedError("option 'min_step' other than 0 is not supported: anode's "
                                  "controller has no lower bound on the step size")
    if opts.pop("dtype", torch.float64) is not torch.float64:
        raise NotImplementedError("option 'dtype' other than torch.float64 is not supported: "
                                  "anode controls step sizes in float64")
    given = {k: opts.pop(k) for k in ("norm", "step_t", "jump_t") if k in opts}
    given = {k: () if k != "norm" and v is None else v for k, v in given.items()}
    if opts.get("first_step", 0.0) is None:  # torchdiffeq's default
        del opts["first_step"]
    kwargs = {k: _number(k, v, int if k == "max_num_steps" else float) for k, v in opts.items()}
    stepping = Adaptive(rtol=_tolerance("rtol", rtol), atol=_tolerance("atol", atol), **kwargs, **given)
    return SolveOptions(resolved, stepping, gradient)


def _tolerance(name: str, value):
    """torchdiffeq's rtol/atol as :class:`anode.Adaptive` takes them: a number
    (also a one-element tensor), a tuple per component, or a tensor per element."""
    if isinstance(value, torch.Tensor):
        return _number(name, value) if value.numel() == 1 and not value.requires_grad else value
    if isinstance(value, (tuple, list)):
        return tuple(v if isinstance(v, torch.Tensor) and (v.numel() != 1 or v.requires_grad)
                     else _number(name, v) for v in value)
    return _number(name, value)
def _adams(method: Adams, opts: dict, rtol, atol) -> Adams:
    """``method`` with the dict's ``max_order``/``max_iters`` and, when implicit, the
    corrector tolerances ``rtol``/``atol`` (as torchdiffeq's AdamsBashforthMoulton takes them)."""
    changes = {k: _number(k, opts[k], int) for k in ("max_order", "max_iters") if k in opts}
    if method.implicit:
        if isinstance(rtol, (tuple, list)) or isinstance(atol, (tuple, list)):
            raise ValueError("per-component tolerances (a tuple rtol/atol) are not supported; give numbers")
        changes.update(rtol=_number("rtol", rtol), atol=_number("atol", atol))
    return dataclasses.replace(method, **changes) if changes else method


def check_adjoint_arguments(*, rtol, atol, method, options, adjoint_rtol=None, adjoint_atol=None,
                            adjoint_method=None, adjoint_options=None):
    """Raise unless each of torchdiffeq's ``adjoint_*`` arguments is None or equal to the
    forward's value (``method`` the forward's method with its default filled in); return the
    reverse solve's error norm.

    ``adjoint_options`` is compared without its ``norm`` (the forward's ``norm`` never
    passes to the reverse solve, as in torchdiffeq): ``adjoint_options["norm"]`` is
    ``"seminorm"`` or a callable (see :func:`~anode._gradients.backsolve.adjoint_controller`).

    Returns:
        ``adjoint_options["norm"]``, or None (torchdiffeq's default adjoint norm).

    Raises:
        NotImplementedError: naming the first argument that differs.
    """
    adjoint_norm = None
    if adjoint_options is not None:
        if not isinstance(adjoint_options, Mapping):
            raise TypeError(f"adjoint_options must be a dict, not {type(adjoint_options).__name__}")
        adjoint_options = dict(adjoint_options)
        known = ("norm", "solver", *ADAPTIVE_OPTIONS, *ADAMS_OPTIONS)
        unknown = [k for k in adjoint_options if k not in known]
        if unknown:
            raise ValueError(f"unknown adjoint_options {unknown}; anode takes norm ('seminorm' or a "
                             "callable) and the forward's own options")
        adjoint_norm = adjoint_options.pop("norm", None)
        if adjoint_norm is not None and isinstance(options, Mapping) and "step_size" in options:
            raise ValueError("adjoint_options norm applies to an adaptive reverse solve; a "
                             "fixed-grid solve's reverse runs on its grid and measures no error")
        if isinstance(options, Mapping):
            options = {k: v for k, v in options.items() if k != "norm"}
        elif not adjoint_options:
            adjoint_options = None  # only a norm: nothing to compare with a record
    forward = {"adjoint_rtol": (adjoint_rtol, rtol), "adjoint_atol": (adjoint_atol, atol),
               "adjoint_method": (adjoint_method, method),
               "adjoint_options": (adjoint_options, options)}
    for name, (value, own) in forward.items():
        if value is not None and not _same(value, own):
            raise NotImplementedError(
                f"{name}={value!r} differs from the forward's {own!r}; anode's reverse solve uses "
                "the forward's method, tolerances and options (or use odeint for exact gradients)")
    return adjoint_norm


def adjoint_gradient(gradient, norm):
    """``gradient`` with the reverse solve's error ``norm`` of ``adjoint_options`` (None:
    unchanged): ``"backsolve"`` becomes ``Backsolve(norm=norm)``.

    Raises:
        ValueError: a norm with another gradient method, which has no reverse solve.
    """
    if norm is None:
        return gradient
    if gradient == "backsolve" or (isinstance(gradient, Backsolve) and gradient.norm is None):
        return Backsolve(norm=norm)
    raise ValueError(f"adjoint_options norm={norm!r} applies to the continuous adjoint's reverse solve "
                     f"(gradient='backsolve'), not to gradient={gradient!r}")


def _same(a, b) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            return not a and not b
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            x, y = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b))
            return x.shape == y.shape and bool(x.eq(y).all())
        except (TypeError, ValueError, RuntimeError):
            return False
    return a is b or a == b


NAMES_DIFFER = "anode.dropin takes torchdiffeq's method names (its 'rk4' is anode's 'rk38')"
"""The warning that goes with every advice to move to :mod:`anode.dropin`, whose method names
are torchdiffeq's (:data:`METHODS`), not anode's (:data:`anode.METHODS`)."""


def renamed_method_note(method) -> str:
    """What anode's method name ``method`` is called in :mod:`anode.dropin`, when that
    differs: ``""`` for a name that means the same method in both (``"dopri5"``), a method
    object or None. For a name that means another method there (``"rk4"``) or none
    (``"ralston"``), the drop-in's name of the same method, or the tableau to pass."""
    if not isinstance(method, str) or method not in ANODE_METHODS:
        return ""
    own = ANODE_METHODS[method]
    if METHODS.get(method) is own:
        return ""
    same = [name for name, m in METHODS.items() if m is own]
    instead = (f"write method={same[0]!r} there" if same else
               f"pass method=anode.METHODS[{method!r}] there")
    if method in METHODS:
        return (f"method={method!r} here is anode's {own.name}, but anode.dropin's method={method!r} is "
                f"anode's {METHODS[method].name}: write method={method!r} there only if you want "
                f"{METHODS[method].name}; for anode's {own.name} {instead}")
    return f"method={method!r} here is anode's {own.name}, which anode.dropin names otherwise: {instead}"


def anode_dict_options(options: Mapping, *, method=None, n_steps=None, step_size=None, rtol=None,
                       atol=None, gradient=None) -> SolveOptions:
    """The record of the deprecated ``anode.odeint(options=<dict>)`` (and ``anode.odeint_adjoint``)
    form of the first release: a torchdiffeq options dict with anode's method names (``rk4``
    the classic method) and anode's gradient; default method dopri5. Remove with that form.

    Raises:
        ValueError: ``n_steps``/``step_size`` given beside the dict; ``rtol``/``atol`` with a
            method without an error estimate; as :func:`from_torchdiffeq`.
    """
    if n_steps is not None or step_size is not None:
        raise ValueError("with an options dict give the step size in it (options=dict(step_size=...)), "
                         "not n_steps=/step_size=")
    resolved = get_method("dopri5" if method is None else method)  # anode's names, e.g. rk4
    corrector = is_multistep(resolved) and resolved.implicit  # rtol/atol: its convergence test
    if not (resolved.embedded or corrector) and (rtol is not None or atol is not None):
        raise ValueError(f"rtol/atol need a method with an error estimate; {resolved.name!r} has none "
                         "(an embedded pair: dopri5, bosh3, tsit5, adaptive_heun)")
    return from_torchdiffeq(rtol=1e-7 if rtol is None else rtol, atol=1e-9 if atol is None else atol,
                            method=resolved, options=options,
                            gradient="anode" if gradient is None else gradient)


__all__ = ["METHODS", "UNSUPPORTED_METHODS", "FIXED_OPTIONS", "ADAPTIVE_OPTIONS", "ADAMS_OPTIONS",
           "from_torchdiffeq", "check_adjoint_arguments", "adjoint_gradient", "anode_dict_options",
           "NAMES_DIFFER", "renamed_method_note"]
