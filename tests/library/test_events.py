"""Terminal events (anode._events through anode.dropin): event times, the state there and
their gradients against finite differences, closed forms and torchdiffeq."""

import math

import pytest
import torch
import torchdiffeq

import anode
from anode import dropin
from anode._events import EventNotFoundError, solve_until_event
from anode._options import SolveOptions
from anode._stepping import until as event_steps
from anode._stepping.fixed_grid import FixedGrid
from problems import BouncingBall, Pendulum, decay


@pytest.fixture(autouse=True)
def float64_default():
    """The reference dtype: float64 for every tensor made here (torchdiffeq's examples do the
    same), restored after each test."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _problem():
    f = Pendulum()
    c = torch.tensor(0.3, requires_grad=True)  # reaches event_fn by closure only
    y0 = torch.tensor([1.0, 0.2], requires_grad=True)
    t0 = torch.tensor(0.1, requires_grad=True)
    return f, c, y0, t0, [y0, t0, c, f.a, f.w]


def _loss(event_t, y):
    return 1.3 * event_t + (y * torch.tensor([0.5, -2.0])).sum()


def _central_differences(fn, inputs, eps=1e-6):
    out = []
    with torch.no_grad():
        for x in inputs:
            grad, flat = torch.zeros_like(x), x.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                up = fn()
                flat[i] = old - eps
                down = fn()
                flat[i] = old
                grad.view(-1)[i] = (up - down) / (2 * eps)
            out.append(grad)
    return out


# Steps that do not depend on the inputs: a fixed step_size, or an adaptive pair whose
# tolerances accept every step of max_step (so finite differences see the same steps).
FROZEN = {"rtol": 1.0, "atol": 1.0}
CASES = {
    "dopri5": dict(method="dopri5", options=dict(first_step=0.4, max_step=0.4), **FROZEN),
    "bosh3": dict(method="bosh3", options=dict(first_step=0.1, max_step=0.1), **FROZEN),
    "tsit5": dict(method="tsit5", options=dict(first_step=0.4, max_step=0.4), **FROZEN),
    "adaptive_heun-cubic": dict(method="adaptive_heun", options=dict(first_step=0.05, max_step=0.05),
                                **FROZEN),
    "rk4-linear": dict(method="rk4", options=dict(step_size=0.1)),
    "rk4-cubic": dict(method="rk4", options=dict(step_size=0.1, interp="cubic")),
    "euler-linear": dict(method="euler", options=dict(step_size=0.1)),
}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_finite_differences(case, reverse):
    """Exact for the discrete solve: the root on the event step's interpolant, differentiated
    with the steps. The slope in the implicit function theorem is the interpolant's: with
    func's (torchdiffeq's choice) these cases miss by 4e-7 to 1e-1, against 2e-9 here."""
    f, c, y0, t0, inputs = _problem()
    target = -0.3 if reverse else 0.3
    kwargs = CASES[case]

    def run():
        event_t, sol = dropin.odeint_event(f, y0, t0, event_fn=lambda t, y: y[0] - c * target / 0.3
                                           + 0.05 * (t - 1), reverse_time=reverse, **kwargs)
        return _loss(event_t, sol[-1])

    grads = torch.autograd.grad(run(), inputs)
    for g, ref, x in zip(grads, _central_differences(run, inputs), inputs):
        assert (g - ref).abs().max() <= 1e-7 * max(1.0, ref.abs().max()), (case, x.shape)


def test_free_fall_closed_form_with_tuple_state():
    """dopri5 is exact on a parabola, so the event time and its gradient are the closed form's."""
    g = torch.tensor(9.8, requires_grad=True)
    h = torch.tensor([10.0], requires_grad=True)
    v = torch.tensor([1.0], requires_grad=True)
    t0 = torch.tensor(0.5, requires_grad=True)

    def f(t, s):
        return s[1], -g * torch.ones_like(s[1])

    event_t, (pos, vel) = dropin.odeint_event(f, (h, v), t0, event_fn=lambda t, s: s[0], params=[g])
    assert pos.shape == vel.shape == (2, 1) and event_t.shape == ()
    exact_t = t0 + (v + torch.sqrt(v**2 + 2 * g * h)) / g
    exact_vel = -torch.sqrt(v**2 + 2 * g * h)
    for out, exact in ((event_t, exact_t), (vel[-1], exact_vel)):
        assert torch.allclose(out, exact.reshape(out.shape), rtol=1e-13)
        got = torch.autograd.grad(out.sum(), [g, h, v, t0], allow_unused=True, retain_graph=True)
        want = torch.autograd.grad(exact.sum(), [g, h, v, t0], allow_unused=True)
        for a, b in zip(got, want):
            assert torch.allclose(a, torch.zeros_like(a) if b is None else b, rtol=1e-11, atol=1e-13)
    assert abs(pos[-1].item()) < 1e-13


def _grads(out, inputs):
    grads = torch.autograd.grad(out, inputs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def test_bouncing_ball_forward_and_reverse_time():
    """Two bounces by chained odeint_event calls, then the first bounce found again by
    solving backwards from a time after it (reverse_time): times and gradients against the
    closed form of the parabolas."""
    ball, t0 = BouncingBall(), torch.tensor([0.0], requires_grad=True)
    params = [ball.gravity, ball.log_radius, ball.init_pos, ball.init_vel, ball.absorption, t0]
    state, t, times = (ball.init_pos, ball.init_vel, ball.log_radius), t0, []
    for _ in range(2):
        t, sol = dropin.odeint_event(ball, state, t, event_fn=ball.event_fn, rtol=1e-10, atol=1e-12)
        times.append(t)
        pos, vel, log_r = (s[-1] for s in sol)
        state = (pos + 1e-7, -vel * (1 - ball.absorption), log_r)
    g, r = ball.gravity, torch.exp(ball.log_radius)
    speed = torch.sqrt(ball.init_vel**2 + 2 * g * (ball.init_pos - r))
    first = t0 + (ball.init_vel + speed) / g
    up = speed * (1 - ball.absorption)
    second = first + (up + torch.sqrt(up**2 + 2 * g * 1e-7)) / g
    for got, exact in zip(times, (first, second)):
        assert torch.allclose(got, exact.reshape(()), rtol=1e-12)
        for a, b in zip(_grads(got, params), _grads(exact.sum(), params)):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)

    # after the first bounce, at T: rising with velocity v from position p
    T = (first + 0.5).reshape(())
    p = r + 1e-7 + up * 0.5 - g * 0.125
    v = up - g * 0.5
    back, sol = dropin.odeint_event(ball, (p, v, ball.log_radius), T, event_fn=ball.event_fn,
                                    reverse_time=True, rtol=1e-10, atol=1e-12)
    exact = T - (-v + torch.sqrt(v**2 + 2 * g * (p - r))) / g
    assert torch.allclose(back, exact.reshape(()), rtol=1e-12)
    assert torch.allclose(sol[0][-1], r, rtol=1e-12)
    for a, b in zip(_grads(back, params), _grads(exact.sum(), params)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_values_and_gradients_agree_with_torchdiffeq():
    """torchdiffeq's bisects to atol and uses func's slope; at tight tolerances both agree.
    torchdiffeq gives an event function's own parameters no gradient (None); anode does."""
    f, c, y0, t0, inputs = _problem()
    kwargs = dict(event_fn=lambda t, y: y[0] - c, method="dopri5", rtol=1e-9, atol=1e-11)
    ours_t, ours = dropin.odeint_event(f, y0, t0, **kwargs)
    theirs_t, theirs = torchdiffeq.odeint_event(f, y0, t0, odeint_interface=torchdiffeq.odeint, **kwargs)
    assert abs(ours_t.item() - theirs_t.item()) < 1e-10
    assert torch.allclose(ours[-1], theirs[-1], atol=1e-10)
    got = torch.autograd.grad(_loss(ours_t, ours[-1]), inputs)
    want = torch.autograd.grad(_loss(theirs_t, theirs[-1]), inputs, allow_unused=True)
    for a, b, x in zip(got, want, inputs):
        if x is c:
            assert b is None and a.abs() > 0.1
        else:
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_gradient_methods_agree():
    """The steps before the event are replayed by the chosen gradient method: every exact
    one agrees with direct autograd to rounding; odeint_adjoint's continuous adjoint within
    its tolerance."""
    f, c, y0, t0, inputs = _problem()
    kwargs = dict(event_fn=lambda t, y: y[0] - c, method="dopri5", rtol=1e-9, atol=1e-11)

    def grads(**extra):
        event_t, sol = dropin.odeint_event(f, y0, t0, **kwargs, **extra)
        return torch.autograd.grad(_loss(event_t, sol[-1]), inputs)

    reference = grads(gradient="direct")
    for gradient in ("anode", anode.DiscreteAdjoint(anode.Store()), anode.DiscreteAdjoint(anode.Revolve(2)),
                     anode.DiscreteAdjoint(stagewise=False)):
        for a, b in zip(grads(gradient=gradient), reference):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-13)
    for a, b in zip(grads(odeint_interface=dropin.odeint_adjoint), reference):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_odeint_event_fn_returns_torchdiffeqs_shapes_and_no_grad_values():
    f, c, y0, t0, _ = _problem()
    t = torch.stack([t0, t0.detach() + 1])
    event_t, sol = dropin.odeint(f, y0, t, event_fn=lambda t, y: y[0] - c)
    assert event_t.shape == () and event_t.dtype == t.dtype and sol.shape == (2, 2)
    assert torch.equal(sol[0], y0)
    with torch.no_grad():
        free_t, free = dropin.odeint(f, y0, t, event_fn=lambda t, y: y[0] - c)
    with torch.inference_mode():
        inf_t, inf = dropin.odeint(f, y0, t, event_fn=lambda t, y: y[0] - c)
    assert free_t.item() == event_t.item() == inf_t.item()
    assert torch.allclose(free, sol, rtol=1e-14) and torch.allclose(inf, sol, rtol=1e-14)
    assert not free_t.requires_grad and not free.requires_grad


def test_several_event_functions_end_at_the_first_crossing():
    f = lambda t, y: torch.stack([torch.ones_like(y[0]), -torch.ones_like(y[1])])  # noqa: E731
    y0 = torch.tensor([0.0, 5.0])
    event_t, sol = dropin.odeint_event(f, y0, torch.tensor(0.0), event_fn=lambda t, y: y - 2.0)
    assert abs(event_t.item() - 2.0) < 1e-12  # the first component crosses 2 at t=2
    event_t, _ = dropin.odeint_event(f, y0, torch.tensor(0.0), event_fn=lambda t, y: y - 4.5)
    assert abs(event_t.item() - 0.5) < 1e-12  # the second crosses 4.5 at t=0.5


def test_event_at_the_initial_time_and_terminal_time():
    f, c, y0, t0, inputs = _problem()
    event_t, sol = dropin.odeint_event(f, y0, t0, event_fn=lambda t, y: y[0] - 1.0)
    assert event_t.item() == t0.item() and torch.equal(sol[-1], y0)

    # a terminal time (learn_physics.py): g jumps to 0 there, so the event time does not move
    def event_fn(t, y):
        return torch.zeros_like(t) if t > 0.6 else y[0] - c

    event_t, sol = dropin.odeint_event(f, y0, t0, event_fn=event_fn, rtol=1e-9, atol=1e-11)
    assert 0.6 < event_t.item() < 0.6 + 1e-14
    g_t, g_c, g_a = torch.autograd.grad(event_t, [t0, c, f.a], allow_unused=True)
    assert g_t == 0 and g_c is None and g_a == 0


def test_float32_state_and_time():
    f, c, y0, t0, inputs = _problem()
    f32 = Pendulum().float()
    y32, t32, c32 = y0.detach().float().requires_grad_(), t0.detach().float(), c.detach().float()
    t, sol = dropin.odeint_event(f32, y32, t32, event_fn=lambda t, y: y[0] - c32, rtol=1e-6, atol=1e-7)
    assert t.dtype == sol.dtype == torch.float32
    t64, sol64 = dropin.odeint_event(f, y0, t0, event_fn=lambda t, y: y[0] - c, rtol=1e-9, atol=1e-11)
    assert abs(t.item() - t64.item()) < 1e-5
    (g32,) = torch.autograd.grad(t, y32)
    (g64,) = torch.autograd.grad(t64, y0)
    assert torch.allclose(g32.double(), g64, rtol=1e-3)


def test_errors_are_named(monkeypatch):
    f, c, y0, t0, _ = _problem()
    event_fn = lambda t, y: y[0] - c  # noqa: E731
    event_t, sol = dropin.odeint_event(f, y0, t0, event_fn=event_fn)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(event_t, y0, create_graph=True)
    with pytest.raises(ValueError, match="needs a step size"):
        dropin.odeint_event(f, y0, t0, event_fn=event_fn, method="rk4")
    with pytest.raises(ValueError, match="two times"):
        dropin.odeint(f, y0, torch.tensor([0.0, 1.0, 2.0]), event_fn=event_fn)
    with pytest.raises(TypeError, match="torchdiffeq's own"):
        dropin.odeint_event(f, y0, t0, event_fn=event_fn, odeint_interface=torchdiffeq.odeint)
    with pytest.raises(ValueError, match="interp must be"):
        solve_until_event(f, y0, torch.tensor([0.0, 1.0]), SolveOptions("rk4", FixedGrid(step_size=0.1)),
                          event_fn, interp="dense")
    with pytest.raises(NotImplementedError, match="random numbers"):
        dropin.odeint_event(lambda t, y: f(t, y) + 0.01 * torch.randn(2), y0, t0, event_fn=event_fn)
    with pytest.raises(ValueError, match="torch.func"):
        torch.func.vmap(lambda y: dropin.odeint_event(f, y, t0, event_fn=event_fn)[0])(y0[None])
    monkeypatch.setattr(event_steps, "MAX_FIXED_STEPS", 30)
    with pytest.raises(EventNotFoundError, match="no sign change"):
        dropin.odeint_event(f, y0, t0, event_fn=lambda t, y: y[0] + 10, method="euler",
                            options=dict(step_size=0.1))
    with pytest.raises(anode.AdaptiveSolveError, match="max_num_steps=50"):
        dropin.odeint_event(f, y0, t0, event_fn=lambda t, y: y[0] + 10, options=dict(max_num_steps=50))
    # g = (1 - t)^3 crosses zero with zero slope: the event time has no derivative
    event_t, _ = dropin.odeint_event(f, y0, t0, event_fn=lambda t, y: (1 - t) ** 3)
    assert math.isclose(event_t.item(), 1.0, abs_tol=1e-5)
    with pytest.raises(ValueError, match="derivative along the solution is zero"):
        event_t.backward()


def test_stats_count_the_search_and_the_replay():
    f, c, y0, t0, _ = _problem()
    stats = anode.SolveStats()
    with torch.no_grad():
        dropin.odeint_event(f, y0, t0, event_fn=lambda t, y: y[0] - c, stats=stats)
    searched = stats.forward_steps
    assert searched > 3 and stats.forward_evaluations >= 6 * searched
    stats.reset()
    event_t, _ = dropin.odeint_event(f, y0, t0, event_fn=lambda t, y: y[0] - c, stats=stats)
    assert stats.forward_steps == 2 * searched  # the search, then the replay and the event step
    event_t.backward()
    assert stats.backward_steps == searched - 1  # the event step's own graph is autograd's


def test_what_the_event_search_does_not_honour_raises():
    """Options and hooks the search would not take into account are refused, never ignored."""
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def event(t, y):
        return y[0] - 0.5

    cases = [
        dict(method="dopri5", options=dict(jump_t=[0.3])),
        dict(method="dopri5", options=dict(step_t=[0.3])),
        dict(method="euler", options=dict(step_size=0.1, perturb=True)),
        dict(method="explicit_adams", options=dict(step_size=0.1)),
    ]
    for kwargs in cases:
        with pytest.raises(NotImplementedError, match="event_fn with"):
            dropin.odeint(decay, y0, t, event_fn=event, **kwargs)

    class Hooked(torch.nn.Module):
        def forward(self, t, y):
            return -y

        def callback_step(self, t0, y0, dt):
            pass

    with pytest.raises(NotImplementedError, match="callback_step"):
        dropin.odeint(Hooked(), y0, t, event_fn=event)
    with pytest.raises(ValueError, match="scipy_solver"):
        dropin.odeint(decay, y0, t, event_fn=event, method="scipy_solver")
