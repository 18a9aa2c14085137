"""torchdiffeq's method names, options dicts and adjoint arguments, mapped onto anode's records.

The one place where torchdiffeq 0.2.5's meanings (``torchdiffeq/_impl/odeint.py``,
``adjoint.py``, ``fixed_grid.py``, ``rk_common.py``) become a
:class:`~anode.options.SolveOptions`: used by :mod:`anode.dropin` (torchdiffeq's names
throughout) and by :func:`anode.odeint` / :func:`anode.odeint_adjoint` for an options dict
(with anode's method names, given there as a tableau).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .controllers import Adaptive
from .gradients import GradientMethod
from .options import FixedGrid, SolveOptions
from .solvers import ButcherTableau, get_tableau

# Heun's third-order method, torchdiffeq's "heun3" (fixed_grid.py, Heun3).
HEUN3 = ButcherTableau("heun3", ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75), (0.0, 1 / 3, 2 / 3))
# Fehlberg's RK1(2) pair, torchdiffeq's "fehlberg2" (fehlberg2.py): order 2 in its controller.
FEHLBERG2 = ButcherTableau(
    "fehlberg2", ((), (0.5,), (1 / 256, 255 / 256)), (1 / 512, 255 / 256, 1 / 512), (0.0, 0.5, 1.0),
    b_error=(-1 / 512, 0.0, 1 / 512), order=2)

METHODS: dict[str, str | ButcherTableau] = {
    "dopri5": "dopri5",
    "dopri8": "dopri8",
    "bosh3": "bosh3",
    "fehlberg2": FEHLBERG2,
    "adaptive_heun": "adaptive_heun",
    "euler": "euler",
    "midpoint": "midpoint",
    "heun2": "heun",
    "heun3": HEUN3,
    "rk4": "rk38",  # torchdiffeq's fixed-grid rk4 is Kutta's 3/8 rule (rk4_alt_step_func)
    "tsit5": "tsit5",  # not in torchdiffeq 0.2.5; anode's Tsitouras 5(4) pair
}
"""torchdiffeq's method names and the anode method each runs (a name of
:func:`anode.get_tableau` or a tableau)."""

UNSUPPORTED_METHODS: dict[str, str] = {
    "explicit_adams": "a multistep method; anode's gradients are for Runge–Kutta methods",
    "implicit_adams": "a multistep method; anode's gradients are for Runge–Kutta methods",
    "fixed_adams": "a multistep method; anode's gradients are for Runge–Kutta methods",
}

FIXED_OPTIONS = ("step_size", "perturb", "interp")
"""torchdiffeq options taken by the fixed-grid methods: ``step_size`` (→
:class:`~anode.options.FixedGrid`), ``perturb`` (False only) and ``interp`` (accepted: anode
steps onto each output time, so nothing is interpolated)."""

ADAPTIVE_OPTIONS = ("first_step", "max_num_steps", "safety", "ifactor", "dfactor", "max_step",
                    "min_step", "dtype", "norm")
"""torchdiffeq options taken by the adaptive methods, → :class:`~anode.controllers.Adaptive`:
``first_step``, ``max_num_steps``, ``safety``, ``ifactor``, ``dfactor``, ``max_step`` as
there; ``min_step`` 0 only, ``dtype`` float64 only (anode controls steps in float64),
``norm`` None only (torchdiffeq's default norm is anode's)."""

_NOT_SUPPORTED_OPTIONS = {
    "grid_constructor": "give step_size, or call anode.odeint with a FixedGrid",
    "step_t": "anode cannot force steps onto given times (it steps onto the last output time, and "
              "onto every output time with anode.Adaptive(dense_output=False))",
    "jump_t": "anode cannot restart steps at discontinuities other than the output times",
}


def _number(name: str, value, kind=float):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number; per-element tensors (shape "
                             f"{tuple(value.shape)}) are not supported")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    return kind(value)


def _tableau(method) -> ButcherTableau | str:
    if isinstance(method, ButcherTableau):
        return method
    if method is None:
        return "dopri5"
    if not isinstance(method, str):
        raise TypeError(f"method must be a torchdiffeq method name, not {type(method).__name__}")
    if method in UNSUPPORTED_METHODS:
        raise NotImplementedError(
            f"method {method!r} is not supported: {UNSUPPORTED_METHODS[method]}. Supported: "
            f"{sorted(METHODS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]


def solve_options(rtol=1e-7, atol=1e-9, method: str | ButcherTableau | None = None,
                  options: Mapping | None = None,
                  gradient: str | GradientMethod = "anode") -> SolveOptions:
    """The :class:`~anode.options.SolveOptions` for torchdiffeq's ``rtol``, ``atol``,
    ``method`` and ``options`` dict (see the module docstring for the mapping).

    Args:
        rtol, atol: tolerances of the adaptive methods (floats or one-element tensors;
            ignored by fixed-grid methods, as in torchdiffeq).
        method: a name in :data:`METHODS` (None: ``dopri5``) or an anode tableau.
        options: the options dict: :data:`FIXED_OPTIONS` for a fixed-grid method,
            :data:`ADAPTIVE_OPTIONS` for an adaptive one.
        gradient: the gradient method.

    Raises:
        ValueError: an unknown method; an option the method does not take (naming it and
            listing those it takes); an option value anode cannot honour; per-element
            tolerances; out-of-range values (as :class:`~anode.controllers.Adaptive`).
        NotImplementedError: a torchdiffeq method or option anode does not implement
            (the Adams methods; ``grid_constructor``,
            ``step_t``, ``jump_t``, ``perturb=True``, a custom ``norm``).
        TypeError: a non-numeric option or tolerance, ``options`` not a mapping.
    """
    tableau = _tableau(method)
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict of torchdiffeq options, not {type(options).__name__}")
    opts = dict(options or {})
    resolved = get_tableau(tableau)
    embedded, name = resolved.embedded, method if isinstance(method, str) else resolved.name
    supported = ADAPTIVE_OPTIONS if embedded else FIXED_OPTIONS
    for key in opts:
        if key in _NOT_SUPPORTED_OPTIONS:
            raise NotImplementedError(f"option {key!r} is not supported: {_NOT_SUPPORTED_OPTIONS[key]}")
        if key not in supported:
            kind = "adaptive" if embedded else "fixed-grid"
            raise ValueError(f"unknown option {key!r} for the {kind} method {name!r}; "
                             f"its supported options are {list(supported)}")
    if not embedded:
        if opts.get("perturb", False):
            raise NotImplementedError("option 'perturb=True' is not supported: anode evaluates "
                                      "func at the step times themselves")
        if opts.get("interp", "linear") not in ("linear", "cubic"):
            raise ValueError(f"option interp must be 'linear' or 'cubic', got {opts['interp']!r}")
        step = opts.get("step_size")
        stepping = FixedGrid(step_size=None if step is None else _number("step_size", step))
        return SolveOptions(resolved, stepping, gradient)
    if _number("min_step", opts.pop("min_step", 0.0)) != 0:
        raise NotImplementedError("option 'min_step' other than 0 is not supported: anode's "
                                  "controller has no lower bound on the step size")
    if opts.pop("dtype", torch.float64) is not torch.float64:
        raise NotImplementedError("option 'dtype' other than torch.float64 is not supported: "
                                  "anode controls step sizes in float64")
    if opts.pop("norm", None) is not None:
        raise NotImplementedError("option 'norm' is not supported: anode uses torchdiffeq's "
                                  "default norm (RMS; the largest over a tuple's components)")
    if isinstance(rtol, (tuple, list)) or isinstance(atol, (tuple, list)):
        raise ValueError("per-component tolerances (a tuple rtol/atol) are not supported; give numbers")
    kwargs = {k: _number(k, v, int if k == "max_num_steps" else float) for k, v in opts.items()}
    stepping = Adaptive(rtol=_number("rtol", rtol), atol=_number("atol", atol), **kwargs)
    return SolveOptions(resolved, stepping, gradient)


def check_adjoint_arguments(rtol, atol, method, options, adjoint_rtol=None, adjoint_atol=None,
                            adjoint_method=None, adjoint_options=None, default_method="dopri5") -> None:
    """Raise unless each of torchdiffeq's ``adjoint_*`` arguments is None or equal to the
    forward's value (``method`` None standing for ``default_method``).

    Raises:
        NotImplementedError: naming the first argument that differs.
    """
    forward = {"adjoint_rtol": (adjoint_rtol, rtol), "adjoint_atol": (adjoint_atol, atol),
               "adjoint_method": (adjoint_method, method or default_method),
               "adjoint_options": (adjoint_options, options)}
    for name, (value, own) in forward.items():
        if value is not None and not _same(value, own):
            raise NotImplementedError(
                f"{name}={value!r} differs from the forward's {own!r}; anode's reverse solve uses "
                "the forward's method, tolerances and options (or use odeint for exact gradients)")


def _same(a, b) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return dict(a or {}) == dict(b or {})
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return bool(torch.as_tensor(a, dtype=torch.float64).eq(torch.as_tensor(b, dtype=torch.float64)).all())
    return a == b


__all__ = ["METHODS", "UNSUPPORTED_METHODS", "FIXED_OPTIONS", "ADAPTIVE_OPTIONS", "solve_options",
           "check_adjoint_arguments"]
