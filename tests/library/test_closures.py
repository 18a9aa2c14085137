"""Functions that reach tensors by closure: found on the first evaluation, no params= needed.

References: direct autograd through the solver in float64 (``gradient="direct"``); for the
continuous adjoint, which is approximate, the same solve with the tensors listed in params.
"""

import pytest
import torch
from torch import nn

import anode
from anode._gradients.closures import ClosureFinder, closure_tensors
from problems import DropoutMLP, FFJORDStyle

F64 = torch.float64
TOL = 1e-10
T = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
FIXED = dict(method="rk4", n_steps=2)
ADAPTIVE = dict(method="dopri5", rtol=1e-6, atol=1e-8)
SCHEDULES = {"store": anode.Store, "recompute": anode.Recompute, "revolve": lambda: anode.Revolve(2),
             "auto": lambda: anode.Auto(memory_budget=2000)}


def problem(kind: str):
    """``(func, y0, tensors whose gradients are compared, tensors func reaches)``, built anew
    (same values) per call."""
    torch.manual_seed(0)
    net = DropoutMLP(dropout=0.3 if kind == "dropout" else 0.0).double()
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    z = torch.randn(3, dtype=F64, requires_grad=True)
    hyper = nn.Linear(3, 3).double()
    if kind in ("lambda", "dropout"):
        func = lambda t, y: net.dynamics(t, y)  # noqa: E731
    elif kind == "method":  # a bound method of a module: not itself a module
        func = net.dynamics
    elif kind == "nonleaf":  # a hypernetwork's output, computed outside the solve
        w = hyper(z)
        func = lambda t, y: torch.tanh(y * w) + w - 0.1 * y  # noqa: E731
        reached = [w]
    elif kind == "twice":  # one tensor reached twice, and through two views of it
        w = hyper(z)
        a, b, _ = w.chunk(3)  # two outputs of one autograd node
        func = lambda t, y: torch.tanh(y * w) * w + a * b + net.dynamics(t, y)  # noqa: E731
        reached = [w, a, b, *net.parameters()]
    if kind in ("lambda", "dropout", "method"):
        reached = list(net.parameters())
    return func, y0, [y0, z, *net.parameters(), *hyper.parameters()], reached


def gradients(kind, gradient, stepping, params=False, create_graph=False):
    func, y0, wrt, reached = problem(kind)
    torch.manual_seed(1)  # the dropout masks
    extra = reached if params else None
    ys = anode.odeint(func, y0, T, gradient=gradient, params=extra, **stepping)
    loss = (ys[1:] ** 2).sum()
    grads = torch.autograd.grad(loss, wrt, allow_unused=True, create_graph=create_graph)
    if not create_graph:
        return grads
    # a gradient penalty: differentiates the first derivative once more
    penalty = sum((g**2).sum() for g in grads if g is not None)
    return torch.autograd.grad(penalty, wrt, allow_unused=True)


def assert_close(got, ref, tol=TOL):
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        if b is None or not b.abs().max() > 0:
            assert a is None or not a.abs().max() > 0
            continue
        assert a is not None
        assert ((a - b).abs().max() / b.abs().max()).item() <= tol


KINDS = ["lambda", "method", "nonleaf", "twice", "dropout"]


@pytest.mark.parametrize(("kind", "stepping"), [(k, FIXED) for k in KINDS] + [
    (k, ADAPTIVE) for k in KINDS if k != "dropout"])  # fresh masks per evaluation: not smooth
def test_closures_get_direct_gradients_without_params(kind, stepping):
    ref = gradients(kind, "direct", stepping)
    assert any(g is not None for g in ref[2:])
    for name, schedule in SCHEDULES.items():
        got = gradients(kind, anode.DiscreteAdjoint(schedule()), stepping)
        assert_close(got, ref), name
    whole = gradients(kind, anode.DiscreteAdjoint(anode.Recompute(), stagewise=False), stepping)
    assert_close(whole, ref)


@pytest.mark.parametrize("stepping", [FIXED, ADAPTIVE], ids=["rk4", "dopri5"])
@pytest.mark.parametrize("kind", ["lambda", "nonleaf", "twice"])
def test_backsolve_finds_closures_as_if_listed(kind, stepping):
    found = gradients(kind, "backsolve", stepping)
    listed = gradients(kind, "backsolve", stepping, params=True)
    assert_close(found, listed, 1e-13)
    # and it is the continuous adjoint of the same solve: close to the exact gradient
    assert_close(found, gradients(kind, "direct", stepping), 1e-3)


@pytest.mark.parametrize("stepping", [FIXED, ADAPTIVE], ids=["rk4", "dopri5"])
@pytest.mark.parametrize("kind", ["lambda", "nonleaf", "twice"])
def test_double_backward_through_closures(kind, stepping):
    ref = gradients(kind, "direct", stepping, create_graph=True)
    for name in ("store", "recompute", "revolve"):
        got = gradients(kind, anode.DiscreteAdjoint(SCHEDULES[name]()), stepping, create_graph=True)
        assert_close(got, ref), name


def test_params_stay_an_option_and_agree():
    for kind in ("lambda", "nonleaf"):
        assert_close(gradients(kind, "anode", FIXED, params=True), gradients(kind, "anode", FIXED))


def test_what_the_first_evaluation_finds():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).double()  # buffers need no gradient
    w = torch.randn(3, dtype=F64, requires_grad=True)
    base = torch.randn(6, dtype=F64, requires_grad=True)
    v = base[:3] * 2  # non-leaf
    unused = torch.randn(3, dtype=F64, requires_grad=True)
    y = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor(0.5, dtype=F64)

    def func(t, y):
        inner = w * 2  # made inside: not an input, though it requires grad
        scale = torch.full_like(y, 0.5) + unused.detach()  # a value only: no gradient to unused
        return net(y) * inner + v * scale + torch.sin(t) * w

    finder = ClosureFinder([y, t])
    with torch.enable_grad(), finder:
        out = func(t, y)
    found = closure_tensors([out], [y], finder)
    # in the order of first use
    assert [id(x) for x in found] == [id(x) for x in [w, *net[0].parameters(), *net[1].parameters(), v]]
    # what was listed already is not found again
    again = closure_tensors([out], [y, w, *net.parameters()], finder)
    assert [id(x) for x in again] == [id(v)]


def test_a_tensor_reaching_func_only_later_raises():
    late = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.ones(2, dtype=F64, requires_grad=True)

    def func(t, y):  # late enters after the first evaluation
        return -y * (late if t > 0.1 else 1.0)

    for gradient in [anode.DiscreteAdjoint(anode.Recompute()),
                     anode.DiscreteAdjoint(anode.Store(), stagewise=False), anode.Backsolve()]:
        ys = anode.odeint(func, y0, T, method="midpoint", n_steps=2, gradient=gradient)
        with pytest.raises(ValueError, match="only later"):
            ys.sum().backward()
        # listed, it gets direct's gradient
        ys = anode.odeint(func, y0, T, method="midpoint", n_steps=2, gradient=gradient, params=[late])
        (g,) = torch.autograd.grad(ys.sum(), late)
        (ref,) = torch.autograd.grad(anode.odeint(func, y0, T, method="midpoint", n_steps=2,
                                                  gradient="direct").sum(), late)
        tol = 0.02 if isinstance(gradient, anode.Backsolve) else TOL  # a field with a jump, 2 steps
        assert_close([g], [ref], tol)


def test_a_leaf_made_inside_func_raises_at_the_forward():
    def func(t, y):
        w = torch.ones(2, dtype=F64, requires_grad=True)  # a new leaf on every call
        return -y * w

    with pytest.raises(ValueError, match="makes a tensor"):
        anode.odeint(func, torch.ones(2, dtype=F64), T, n_steps=2)
    anode.odeint(func, torch.ones(2, dtype=F64), T, n_steps=2, gradient="direct")


@pytest.mark.parametrize("stepping", [FIXED, ADAPTIVE], ids=["rk4", "dopri5"])
def test_ffjord_style_function(stepping):
    torch.manual_seed(0)
    func = FFJORDStyle().double()
    x = torch.randn(5, 2, dtype=F64, requires_grad=True)
    grads = {}
    for gradient in ["direct", "anode", "backsolve"]:
        z, dlogp = anode.odeint(func, (x, torch.zeros(5, 1, dtype=F64)), T, gradient=gradient, **stepping)
        loss = (z[-1] ** 2).sum() + dlogp[-1].sum()
        grads[gradient] = torch.autograd.grad(loss, [x, *func.parameters()])
    assert_close(grads["anode"], grads["direct"])
    assert_close(grads["backsolve"], grads["direct"], 1e-3)


@pytest.mark.parametrize("stepping", [FIXED, ADAPTIVE], ids=["rk4", "dopri5"])
def test_graph_free_sweeps_keep_no_stage_graph(stepping):
    # The stages of a step are held until the step ends; what func builds inside (its
    # divergence's graph) must not be: at most the stage being evaluated keeps its graph.
    import weakref

    torch.manual_seed(0)
    func = FFJORDStyle().double()
    x = torch.randn(5, 2, dtype=F64, requires_grad=True)
    alive = []

    def watch(t, states):
        dy, div = func(t, states)
        graphs = [r for r in alive if r() is not None]
        alive[:] = graphs + [weakref.ref(dy), weakref.ref(div)]
        most[0] = max(most[0], len(graphs))
        return dy, div

    most = [0]
    z, _ = anode.odeint(watch, (x, torch.zeros(5, 1, dtype=F64)), T, gradient="anode", **stepping)
    assert most[0] == 0
    z[-1].sum().backward()
    # the backward's graph-free passes too, and it rebuilds one stage's graph at a time
    assert most[0] == 0
    for gradient in ["direct", "anode"]:  # and a forward without grad, by any method
        with torch.no_grad():
            anode.odeint(watch, (x, torch.zeros(5, 1, dtype=F64)), T, gradient=gradient, **stepping)
        assert most[0] == 0


def test_forward_mode_ad_under_no_grad_keeps_its_tangents():
    # no_grad leaves forward-mode AD on: a graph-free solve must not detach its tangents
    import torch.autograd.forward_ad as fwAD

    y0, v = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)
    with torch.no_grad(), fwAD.dual_level():
        ys = anode.odeint(lambda t, y: -0.5 * y, fwAD.make_dual(y0, v), T, method="rk4", n_steps=4,
                          gradient="direct")
        tangent = fwAD.unpack_dual(ys).tangent
    expected = anode.odeint(lambda t, y: -0.5 * y, v, T, method="rk4", n_steps=4)  # linear in y0
    assert tangent is not None and torch.allclose(tangent, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("gradient", ["recompute", "backsolve"])
def test_a_lambda_over_modules_replays_their_modes_and_buffers(gradient):
    # BatchNorm in training mode and dropout inside a module that a lambda uses: the modes,
    # buffers and random numbers of the forward are replayed, and the module is left as
    # direct leaves it, even when its mode is switched between forward and backward
    def run(method):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Dropout(0.2), nn.Tanh(),
                            nn.Linear(6, 3)).double()
        y0 = torch.randn(8, 3, dtype=F64, requires_grad=True)
        ys = anode.odeint(lambda t, y: net(y), y0, T, method="midpoint", n_steps=2, gradient=method)
        net.eval()  # switched between forward and backward
        grads = torch.autograd.grad((ys[-1] ** 2).sum(), [y0, *net.parameters()])
        return grads, [b.clone() for b in net.buffers()], torch.get_rng_state()

    method = anode.Backsolve() if gradient == "backsolve" else anode.DiscreteAdjoint(anode.Recompute())
    grads, buffers, rng = run(method)
    ref_grads, ref_buffers, ref_rng = run("direct")
    for a, b in zip(buffers, ref_buffers):
        assert torch.equal(a, b)
    assert torch.equal(rng, ref_rng)
    if gradient != "backsolve":  # the continuous adjoint's replay is approximate
        assert_close(grads, ref_grads)
