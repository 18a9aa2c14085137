"""torchdiffeq's step callbacks (``func.callback_step`` and kin) through anode: when each is
called and with what, checked against torchdiffeq 0.2.5 itself where it defines the answer."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchdiffeq

import anode
from anode import dropin
from problems import CallbackField

F64 = torch.float64


FORWARD = ("callback_step", "callback_accept_step", "callback_reject_step")
ADJOINT = tuple(n + "_adjoint" for n in FORWARD)
Y0 = torch.tensor([0.5, -0.3], dtype=F64)


def _steps(calls):
    return [(float(t0), float(dt)) for _, t0, _, dt in calls]


# ------------------------------------------------------------------------- forward hooks
@pytest.mark.parametrize("t", [[0.0, 1.0], [1.0, 0.0]], ids=["increasing", "decreasing"])
def test_fixed_grid_steps_match_torchdiffeq(t):
    t = torch.tensor(t, dtype=F64)
    ours, theirs = CallbackField().listen("callback_step"), CallbackField().listen("callback_step")
    out = dropin.odeint(ours, Y0, t, method="euler", options=dict(step_size=0.1))
    ref = torchdiffeq.odeint(theirs, Y0, t, method="euler", options=dict(step_size=0.1))
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    assert len(ours.calls) == len(theirs.calls) == 10
    for (_, t0, y0, dt), (_, r_t0, r_y0, r_dt) in zip(ours.calls, theirs.calls):
        assert t0.shape == dt.shape == () and t0.dtype == dt.dtype == F64
        assert abs(float(t0 - r_t0)) < 1e-12 and abs(float(dt - r_dt)) < 1e-12 and float(dt) > 0
        assert torch.allclose(y0, r_y0, rtol=0, atol=1e-12)


def test_adaptive_steps_match_torchdiffeq():
    t = torch.tensor([0.0, 0.7, 2.0], dtype=F64)
    ours, theirs = CallbackField().listen(*FORWARD), CallbackField().listen(*FORWARD)
    dropin.odeint(ours, Y0, t, rtol=1e-6, atol=1e-8)
    torchdiffeq.odeint(theirs, Y0, t, rtol=1e-6, atol=1e-8)
    for field in (ours, theirs):
        assert len(field.named("callback_step")) == (
            len(field.named("callback_accept_step")) + len(field.named("callback_reject_step")))
    # the same controller accepts the same steps; anode cuts the last one to end on t[-1]
    ours_steps, their_steps = _steps(ours.named("callback_step")), _steps(theirs.named("callback_step"))
    assert len(ours_steps) == len(their_steps) > 3
    for (a, da), (b, db) in zip(ours_steps[:-1], their_steps[:-1]):
        assert abs(a - b) < 1e-9 and abs(da - db) < 1e-9
    assert abs(sum(float(c[3]) for c in ours.named("callback_accept_step")) - 2.0) < 1e-12
    # accept/reject receive the attempt's start, as callback_step did
    attempts = {(round(a, 12), round(d, 12)) for a, d in ours_steps}
    assert all((round(a, 12), round(d, 12)) in attempts
               for a, d in _steps(ours.named("callback_accept_step") + ours.named("callback_reject_step")))


def test_rejected_steps_are_reported():
    field = CallbackField().listen(*FORWARD)
    dropin.odeint(field, Y0, torch.tensor([0.0, 2.0], dtype=F64), rtol=1e-8, atol=1e-10,
                  options=dict(first_step=1.0))  # far too large: rejected first
    rejected = field.named("callback_reject_step")
    assert rejected and float(rejected[0][1]) == 0.0 and float(rejected[0][3]) == 1.0
    steps = field.named("callback_step")
    assert len(steps) == len(field.named("callback_accept_step")) + len(rejected)
    assert [c[0] for c in field.calls[:2]] == ["callback_step", "callback_reject_step"]


def test_tuple_state_hooks_receive_a_tuple():
    field = CallbackField(tuple_state=True).listen("callback_step")
    y0 = (Y0.clone(), torch.zeros(2, dtype=F64))
    out = dropin.odeint(field, y0, torch.tensor([0.0, 0.4], dtype=F64), method="rk4",
                        options=dict(step_size=0.1))
    assert len(field.calls) == 4
    first, last = field.calls[0][2], field.calls[-1][2]
    assert isinstance(first, tuple) and torch.equal(first[0], Y0)
    steps3 = dropin.odeint(CallbackField(tuple_state=True), y0, torch.tensor([0.0, 0.3], dtype=F64),
                           method="rk4", options=dict(step_size=0.1))
    assert all(torch.allclose(a, b[-1], rtol=0, atol=1e-14) for a, b in zip(last, steps3))
    assert out[0].shape == (2, 2)


@pytest.mark.parametrize("gradient", ["direct", "anode", "revolve", "store", "backsolve"])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_forward_hooks_once_per_step_whatever_the_gradient(gradient, method):
    """Recomputation in the backward (recompute, revolve, backsolve, t requiring grad)
    reports no step again."""
    grad = {"revolve": anode.DiscreteAdjoint(anode.Revolve(2)),
            "store": anode.DiscreteAdjoint(anode.Store())}.get(gradient, gradient)
    steps = dict(n_steps=6) if method == "rk4" else dict(rtol=1e-6, atol=1e-8)
    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64, requires_grad=True)
    reference = CallbackField().listen("callback_step")
    with torch.no_grad():
        anode.odeint(reference, Y0, t, method=method, **steps)
    field = CallbackField().listen("callback_step")
    y0 = Y0.clone().requires_grad_()
    out = anode.odeint(field, y0, t, method=method, gradient=grad, **steps)
    n = len(field.calls)
    assert n == len(reference.calls) > 0
    out.square().sum().backward()
    assert len(field.calls) == n
    assert _steps(field.calls) == _steps(reference.calls)


# ------------------------------------------------------------------------- adjoint hooks
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
@pytest.mark.parametrize("schedule", ["recompute", "revolve"])
def test_discrete_adjoint_calls_adjoint_hooks_per_backward_step(method, schedule):
    """gradient='anode': one call per backward step, last first, with that forward step's
    own (t0, y0, dt)."""
    names = (*FORWARD, *ADJOINT) if method == "dopri5" else ("callback_step", "callback_step_adjoint")
    field = CallbackField().listen(*names)
    steps = dict(n_steps=5) if method == "rk4" else dict(rtol=1e-6, atol=1e-8)
    y0 = Y0.clone().requires_grad_()
    out = anode.odeint(field, y0, torch.tensor([0.0, 0.6, 1.2], dtype=F64), method=method,
                       gradient=anode.DiscreteAdjoint(
                           anode.Revolve(2) if schedule == "revolve" else anode.Recompute()),
                       **steps)
    forward = field.named("callback_accept_step" if method == "dopri5" else "callback_step")
    assert not field.named("callback_step_adjoint")
    out.sum().backward()
    adjoint = field.named("callback_step_adjoint")
    assert len(adjoint) == len(forward) > 0
    for (_, t0, y, dt), (_, f_t0, f_y, f_dt) in zip(adjoint, reversed(forward)):
        assert torch.equal(t0, f_t0) and torch.equal(dt, f_dt)
        assert torch.allclose(y, f_y, rtol=0, atol=1e-14)
    if method == "dopri5":
        assert _steps(field.named("callback_accept_step_adjoint")) == _steps(adjoint)
    assert not field.named("callback_reject_step_adjoint")


def test_backsolve_adjoint_hooks_as_torchdiffeq_fixed_grid():
    """torchdiffeq's test: 10 reverse steps for step_size 0.1 on [0, 1]; the augmented state
    in its layout (t adjoint, y, y adjoint, *parameter adjoints)."""
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ours, theirs = (CallbackField().listen("callback_step_adjoint") for _ in range(2))
    for func, solve in ((ours, dropin.odeint_adjoint), (theirs, torchdiffeq.odeint_adjoint)):
        y0 = Y0.clone().requires_grad_()
        solve(func, y0, t, method="rk4", options=dict(step_size=0.1))[-1].sum().backward()
    assert len(ours.calls) == len(theirs.calls) == 10
    for (_, t0, aug, dt), (_, r_t0, r_aug, r_dt) in zip(ours.calls, theirs.calls):
        assert abs(float(t0 - r_t0)) < 1e-12 and abs(float(dt - r_dt)) < 1e-12
        assert len(aug) == len(r_aug) == 4  # (t adjoint, y, y adjoint, W adjoint)
        assert float(aug[0]) == 0.0  # t does not require grad (torchdiffeq integrates it anyway)
        for a, b in zip(aug[1:], r_aug[1:]):
            assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_backsolve_adjoint_hooks_adaptive():
    field = CallbackField().listen(*ADJOINT)
    y0 = Y0.clone().requires_grad_()
    out = dropin.odeint_adjoint(field, y0, torch.tensor([0.0, 0.5, 1.0], dtype=F64), rtol=1e-6, atol=1e-8)
    assert not field.calls
    out.sum().backward()
    steps = field.named("callback_step_adjoint")
    assert len(steps) > 2
    assert len(steps) == len(field.named("callback_accept_step_adjoint")) + len(
        field.named("callback_reject_step_adjoint"))
    assert float(steps[0][1]) == 1.0 and all(float(c[3]) > 0 for c in steps)


def test_direct_cannot_call_adjoint_hooks():
    field = CallbackField().listen("callback_step_adjoint")
    with pytest.raises(ValueError, match="callback_step_adjoint cannot be called by gradient='direct'"):
        anode.odeint(field, Y0, torch.tensor([0.0, 1.0], dtype=F64), gradient="direct")
    with torch.no_grad():  # nothing is differentiated: nothing to call them on
        anode.odeint(field, Y0, torch.tensor([0.0, 1.0], dtype=F64), gradient="direct")


def test_torch_func_grad_cannot_call_adjoint_hooks():
    field = CallbackField().listen("callback_step_adjoint")
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"callback_step_adjoint cannot be called by "
                                         r"gradient='direct \(under torch.func Grad\)'"):
        torch.func.grad(lambda y: anode.odeint(field, y, t, n_steps=2)[-1].sum())(Y0)
    field = CallbackField().listen("callback_step")  # forward hooks are called under vmap
    torch.func.vmap(lambda y: anode.odeint(field, y, t, n_steps=2))(torch.stack([Y0, Y0]))
    assert len(field.calls) == 2


def test_double_backward_with_adjoint_hooks_raises():
    field = CallbackField().listen("callback_step_adjoint")
    y0 = Y0.clone().requires_grad_()
    out = anode.odeint(field, y0, torch.tensor([0.0, 1.0], dtype=F64), n_steps=3)
    with pytest.raises(RuntimeError, match="callback_step_adjoint.*create_graph=True"):
        torch.autograd.grad(out.sum(), y0, create_graph=True)


# ------------------------------------------------------------------------- hooks never called
@pytest.mark.parametrize("name", ["callback_accept_step", "callback_reject_step_adjoint"])
def test_accept_reject_hooks_with_a_fixed_grid_warn(name):
    field = CallbackField().listen(name)
    with pytest.warns(UserWarning, match=f"{name}.*never called.*fixed-grid method"):
        dropin.odeint(field, Y0, torch.tensor([0.0, 1.0], dtype=F64), method="euler")
    assert not field.calls


def test_misspelt_hook_warns_and_a_non_callable_raises():
    field = CallbackField().listen("callback_steps")
    with pytest.warns(UserWarning, match=r"callback_steps.*no solve calls"):
        dropin.odeint(field, Y0, torch.tensor([0.0, 1.0], dtype=F64), method="euler")
    field = CallbackField()
    field.callback_step = 3
    with pytest.raises(TypeError, match="callback_step must be callable"):
        dropin.odeint(field, Y0, torch.tensor([0.0, 1.0], dtype=F64))
    field = CallbackField()
    field.callbacks = []  # not named like a hook
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no hooks, no warning
        dropin.odeint(field, Y0, torch.tensor([0.0, 1.0], dtype=F64), method="euler")


def test_hooks_on_a_plain_function_and_in_an_ode_block():
    calls = []

    def f(t, y):
        return -y

    f.callback_step = lambda t0, y0, dt: calls.append(float(t0))
    anode.odeint(f, Y0, torch.tensor([0.0, 1.0], dtype=F64), n_steps=4)
    assert calls == [0.0, 0.25, 0.5, 0.75]
    field = CallbackField().listen("callback_step", "callback_step_adjoint")
    block = anode.ODEBlock(field, 1.0, n_steps=2)
    block(Y0.clone().requires_grad_()).sum().backward()
    assert [c[0] for c in field.calls] == ["callback_step"] * 2 + ["callback_step_adjoint"] * 2


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
@pytest.mark.parametrize("gradient", ["anode", "backsolve"])
def test_adams_methods_call_step_hooks_as_torchdiffeq(method, gradient):
    """The multistep solves report each step forward at torchdiffeq's times and step sizes,
    and each backward step (anode: the forward step's arguments, last first)."""
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    options = dict(step_size=0.125)
    ref = CallbackField().listen("callback_step")
    torchdiffeq.odeint(ref, Y0, t, method=method, options=options)
    expected = _steps(ref.named("callback_step"))
    ours = CallbackField().listen("callback_step", "callback_step_adjoint")
    ys = dropin.odeint(ours, Y0.clone().requires_grad_(), t, method=method, options=options,
                       gradient=gradient)
    got = _steps(ours.named("callback_step"))
    assert len(got) == len(expected) == 8
    assert max(abs(a - b) for x, y in zip(got, expected) for a, b in zip(x, y)) < 1e-12
    ys.sum().backward()
    backward = _steps(ours.named("callback_step_adjoint"))
    assert len(backward) == 8
    if gradient == "anode":
        assert backward == got[::-1]
