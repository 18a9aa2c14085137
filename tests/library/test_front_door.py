"""The front door and the names: one keyword signature for anode.odeint, one way to build a
SolveOptions, one registry of methods, dir(anode) == __all__, and the first release's forms
still working for one release, each with a DeprecationWarning and the result of its new form."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchdiffeq

import anode
import anode.models
from anode import dropin
from anode._options import keyword_options
from problems import TimeMLP, rel_err

F64 = torch.float64
SRC = Path(__file__).resolve().parents[2] / "src"
KEYWORDS = ["method", "n_steps", "step_size", "rtol", "atol", "gradient", "params", "stats", "options"]


def _problem(seed=0):
    torch.manual_seed(seed)
    return TimeMLP(3).double(), torch.randn(2, 3, dtype=F64), torch.tensor([0.0, 0.4, 1.0], dtype=F64)


def _deprecated(match):
    """Expect one DeprecationWarning matching ``match``, attributed to this file (the
    warning's stacklevel points at the caller)."""
    return pytest.warns(DeprecationWarning, match=match)


def _from_here(record):
    assert all(w.filename == __file__ for w in record if issubclass(w.category, DeprecationWarning))


# ----------------------------------------------------------------------------- signatures

@pytest.mark.parametrize("function, positional", [(anode.odeint, ["func", "y0", "t"]),
                                                  (anode.ODEBlock, ["func", "end_time"])])
def test_signature_has_keywords_only_and_no_kwargs(function, positional):
    params = inspect.signature(function).parameters.values()
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params)
    assert [p.name for p in params if p.kind is not p.KEYWORD_ONLY] == positional
    keyword = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    assert keyword == (KEYWORDS if function is anode.odeint else [k for k in KEYWORDS if k != "stats"])
    assert all(p.default is None for p in params if p.kind is p.KEYWORD_ONLY)


def test_an_unknown_keyword_is_a_type_error():
    func, y0, t = _problem()
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_step'"):
        anode.odeint(func, y0, t, n_step=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_step'"):
        anode.ODEBlock(func, n_step=3)


def test_options_with_other_arguments_name_them():
    func, y0, t = _problem()
    record = anode.SolveOptions("rk4", anode.FixedGrid(3), anode.Direct())
    for extra in (dict(n_steps=3), dict(gradient="anode"), dict(rtol=1e-3, atol=1e-4), dict(method="euler")):
        with pytest.raises(ValueError, match=f"options= and {'=, '.join(extra)}="):
            anode.odeint(func, y0, t, options=record, **extra)
        with pytest.raises(ValueError, match="not both"):
            anode.ODEBlock(func, options=record, **extra)
    # the record's own method repeated is no conflict
    assert torch.equal(anode.odeint(func, y0, t, method="rk4", options=record),
                       anode.odeint(func, y0, t, options=record))


# ------------------------------------------------------------------------ one construction

def test_a_solve_builds_and_validates_its_record_once(monkeypatch):
    from anode import _options

    calls = {"post_init": 0, "resolve": 0}
    post_init, resolve = _options.SolveOptions.__post_init__, _options.resolve

    def counting_post_init(self):
        calls["post_init"] += 1
        post_init(self)

    def counting_resolve(*args, **kwargs):
        calls["resolve"] += 1
        return resolve(*args, **kwargs)

    monkeypatch.setattr(_options.SolveOptions, "__post_init__", counting_post_init)
    monkeypatch.setattr(_options, "resolve", counting_resolve)
    func, y0, t = _problem()
    anode.odeint(func, y0, t, method="rk4", n_steps=2, gradient="direct")
    assert calls == {"post_init": 1, "resolve": 1}
    anode.odeint(func, y0, t, rtol=1e-4, gradient=anode.DiscreteAdjoint(anode.Store()))
    assert calls == {"post_init": 2, "resolve": 1}  # an object needs no resolving
    record = anode.SolveOptions("midpoint", anode.FixedGrid(2))
    anode.odeint(func, y0, t, options=record)
    anode.ODEBlock(func, options=record)(y0)
    assert calls == {"post_init": 3, "resolve": 2}


def test_keywords_make_the_records_a_constructor_makes():
    assert keyword_options(method="rk4", n_steps=3) == anode.SolveOptions("rk4", anode.FixedGrid(3))
    assert keyword_options(rtol=1e-5) == anode.SolveOptions("dopri5", anode.Adaptive(rtol=1e-5))
    assert keyword_options(method="implicit_adams", step_size=0.1, atol=1e-5) == anode.SolveOptions(
        anode.Adams(atol=1e-5), anode.FixedGrid(step_size=0.1))
    assert keyword_options() == anode.SolveOptions("rk4", anode.FixedGrid(), anode.DiscreteAdjoint())
    with pytest.raises(ValueError, match="not both"):
        keyword_options(n_steps=2, rtol=1e-3)
    with pytest.raises(ValueError, match="no use in explicit_adams"):
        keyword_options(method="explicit_adams", rtol=1e-3)


# ----------------------------------------------------------------------------------- names

def test_dir_of_anode_is_its_all():
    public = "print(sorted(n for n in dir(anode) if not n.startswith('_')))"
    code = (f"import sys, anode; assert not {{'anode.dropin', 'anode.models'}} & set(sys.modules); {public}; "
            f"import anode.dropin, anode.models; {public}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": ""}).stdout.splitlines()
    assert out[0] == out[1] == repr(sorted(anode.__all__))
    assert len(set(anode.__all__)) == len(anode.__all__)
    assert all(hasattr(anode, name) for name in anode.__all__)


def test_one_registry_covers_every_method_name_of_the_old_ones():
    from anode import _adams, _tableaus

    old = {*_tableaus.TABLEAUS, *_tableaus.EMBEDDED_TABLEAUS, *_adams.ADAMS_METHODS}
    assert set(anode.METHODS) == old
    assert all(isinstance(m, (anode.ButcherTableau, anode.Adams)) for m in anode.METHODS.values())
    for name, method in anode.METHODS.items():
        assert anode.get_method(name) is method and anode.get_method(method) is method
    assert {n for n, m in anode.METHODS.items() if isinstance(m, anode.ButcherTableau) and m.embedded} == set(
        _tableaus.EMBEDDED_TABLEAUS)
    with pytest.raises(TypeError):
        anode.METHODS["mine"] = anode.METHODS["rk4"]
    with pytest.raises(TypeError):
        anode.SCHEDULES["mine"] = anode.Store
    with pytest.raises(ValueError, match="unknown method 'rk5'"):
        anode.get_method("rk5")
    # the drop-in's names map onto method objects too
    assert dropin.METHODS["rk4"] is anode.METHODS["rk38"] and dropin.METHODS["heun2"] is anode.METHODS["heun"]


# ------------------------------------------------------------- deprecated forms, one each

def test_deprecated_options_dict_names_the_dropin_and_solves_as_a_record():
    func, y0, t = _problem()
    with _deprecated("anode.dropin.odeint") as record:
        old = anode.odeint(func, y0, t, rtol=1e-6, atol=1e-8, options={"first_step": 0.05})
    _from_here(record)
    new = anode.odeint(func, y0, t, options=anode.SolveOptions(
        "dopri5", anode.Adaptive(rtol=1e-6, atol=1e-8, first_step=0.05)))
    assert torch.equal(old, new)
    # anode's method names there: rk4 is the classic method
    with _deprecated("anode.dropin.odeint"):
        old = anode.odeint(func, y0, t, method="rk4", options={"step_size": 0.05})
    assert torch.equal(old, anode.odeint(func, y0, t, method="rk4", step_size=0.05))
    with _deprecated("anode.dropin.odeint"), pytest.raises(ValueError, match="give the step size in it"):
        anode.odeint(func, y0, t, method="euler", n_steps=3, options={})
    with _deprecated("anode.dropin.odeint"), pytest.raises(ValueError, match="'euler' has none"):
        anode.odeint(func, y0, t, method="euler", rtol=1e-3, options={"step_size": 0.1})


@pytest.mark.parametrize("method, advice, dropin_method", [
    ("rk4", "method=anode.METHODS['rk4']", anode.METHODS["rk4"]), ("heun", "method='heun2'", "heun2")])
def test_advice_to_use_the_dropin_names_its_method_and_following_it_keeps_the_solve(method, advice,
                                                                                     dropin_method):
    # anode.dropin's names are torchdiffeq's: its "rk4" is Kutta's 3/8 rule, anode's "rk38"
    func, y0, t = _problem()
    with _deprecated("anode.dropin takes torchdiffeq's method names .*'rk38'") as record:
        old = anode.odeint(func, y0, t, method=method, options={"step_size": 0.25})
    (message,) = [str(w.message) for w in record if issubclass(w.category, DeprecationWarning)]
    assert f"method={method!r} here is anode's {method}" in message and advice in message
    followed = dropin.odeint(func, y0, t, method=dropin_method, options={"step_size": 0.25})
    assert torch.equal(old, followed)
    if method == "rk4":  # the drop-in's own rk4 is another method: the advice says so
        assert "only if you want rk38" in message
        assert not torch.equal(old, dropin.odeint(func, y0, t, method="rk4", options={"step_size": 0.25}))
    with _deprecated("anode.dropin takes torchdiffeq's method names") as record:
        anode.odeint(func, y0, t, method="dopri5", options={})  # the same name: no method advice
    assert not any("here is anode's" in str(w.message) for w in record)
    with _deprecated("torchdiffeq's method names .*'rk38'"):
        old_function = anode.odeint_adjoint
    with _deprecated(re.escape(advice)):
        old = old_function(func, y0, t, method=method, step_size=0.25)
    assert torch.equal(old, followed)


@pytest.mark.parametrize("old, new", [
    (dict(schedule="store"), anode.DiscreteAdjoint(anode.Store())),
    (dict(schedule="revolve", snapshots=2), anode.DiscreteAdjoint(anode.Revolve(2))),
    (dict(snapshots=2), anode.DiscreteAdjoint(anode.Revolve(2))),
    (dict(schedule="auto", memory_budget=4 * 48), anode.DiscreteAdjoint(anode.Auto(memory_budget=4 * 48))),
])
def test_deprecated_schedule_keywords_give_the_gradient_object(old, new):
    func, y0, t = _problem()
    results = []
    for kwargs in (old, dict(gradient=new)):
        x0 = y0.clone().requires_grad_()
        stats = anode.SolveStats()
        if "gradient" in kwargs:
            out = anode.odeint(func, x0, t, n_steps=6, stats=stats, **kwargs)
        else:
            with _deprecated("pass a gradient object") as record:
                out = anode.odeint(func, x0, t, n_steps=6, stats=stats, **kwargs)
            _from_here(record)
        grads = torch.autograd.grad(out.square().sum(), [x0, *func.parameters()])
        results.append((out, grads, stats.schedule))
    (out_old, g_old, s_old), (out_new, g_new, s_new) = results
    assert torch.equal(out_old, out_new) and s_old == s_new
    assert all(torch.equal(a, b) for a, b in zip(g_old, g_new))
    with _deprecated("pass a gradient object") as record:
        block = anode.ODEBlock(func, method="midpoint", **old)
    _from_here(record)
    assert block.options == anode.ODEBlock(func, method="midpoint", gradient=new).options


def test_deprecated_odeint_adjoint_names_both_new_forms_and_solves_as_the_dropin():
    func, y0, t = _problem()
    params = list(func.parameters())
    kw = dict(rtol=1e-8, atol=1e-10, method="dopri5")
    with _deprecated(r"anode.dropin.odeint_adjoint .* gradient='backsolve'") as record:
        old_function = anode.odeint_adjoint
    _from_here(record)
    x0 = y0.clone().requires_grad_()
    old = old_function(func, x0, t, adjoint_params=params, **kw)
    x1 = y0.clone().requires_grad_()
    new = anode.odeint(func, x1, t, gradient="backsolve", **kw)
    assert torch.equal(old, new)
    g_old = torch.autograd.grad(old.sum(), [x0, *params])
    g_new = torch.autograd.grad(new.sum(), [x1, *params])
    assert all(torch.equal(a, b) for a, b in zip(g_old, g_new))
    # with an options dict and an adjoint norm: torchdiffeq's own gradient, to its tolerance
    ref = torchdiffeq.odeint_adjoint(func, y0, t, adjoint_params=params, options={"first_step": 0.05}, **kw)
    with _deprecated("odeint_adjoint"):
        adj = anode.odeint_adjoint(func, y0, t, adjoint_params=params, options={"first_step": 0.05},
                                   **kw)
    assert rel_err(adj, ref) < 1e-6
    differs = pytest.raises(NotImplementedError, match="adjoint_method='rk4' differs")
    with _deprecated("odeint_adjoint"), differs:
        anode.odeint_adjoint(func, y0, t, rtol=1e-5, adjoint_method="rk4")


@pytest.mark.parametrize("old, new", [("TABLEAUS", "METHODS"), ("EMBEDDED_TABLEAUS", "METHODS"),
                                      ("get_tableau", "get_method")])
def test_deprecated_registry_names_warn_on_access_and_stay_out_of_dir(old, new):
    with _deprecated(f"anode.{new}") as record:
        value = getattr(anode, old)
    _from_here(record)
    assert old not in dir(anode) and old not in anode.__all__
    if old == "get_tableau":
        assert value("dopri5") is anode.get_method("dopri5")
    else:
        assert all(anode.METHODS[name] is method for name, method in value.items())


def test_deprecated_record_builders_warn_and_build_the_same_record():
    with _deprecated("SolveOptions.make") as record:
        made = anode.SolveOptions.make("rk4", 3, schedule="revolve", snapshots=2)
    _from_here(record)
    assert made == anode.SolveOptions("rk4", anode.FixedGrid(3), anode.DiscreteAdjoint(anode.Revolve(2)))
    named = {"method": "euler", "n_steps": 2, "gradient": "anode", "schedule": "store", "end_time": 2.0}
    with _deprecated("anode.models.from_named_options"):
        old = anode.models.solve_options(named)
    assert old == anode.models.from_named_options(named)
    assert old == (anode.SolveOptions("euler", anode.FixedGrid(2), anode.DiscreteAdjoint(anode.Store())), 2.0)
    with _deprecated("anode.dropin.from_torchdiffeq"):
        old = dropin.solve_options(1e-5, 1e-7, "bosh3", {"first_step": 0.01})
    assert old == dropin.from_torchdiffeq(rtol=1e-5, atol=1e-7, method="bosh3", options={"first_step": 0.01})
