"""Every way users differentiate a solve: double backward, functions that differentiate
inside (Hamiltonian networks, continuous normalizing flows), torch.func transforms, repeated
output times, and what a solve leaves behind (reference cycles, per-step bookkeeping).

References: direct autograd through the solver in float64, closed forms.
"""

import gc
import subprocess
import sys
import textwrap
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import anode
from problems import CNF, CachesTrajectory, CosMLP, Counting, Hamiltonian

F64 = torch.float64
EXACT = [("anode", "store"), ("anode", "recompute"), ("anode", "revolve"), ("direct", None)]
METHODS = ["euler", "midpoint", "rk4"]


def rel_err(a, b):
    scale = max(b.abs().max().item(), 1e-300)
    return (a - b).abs().max().item() / scale


def options(gradient, schedule):
    if gradient != "anode":
        return dict(gradient=gradient)
    if schedule == "revolve":
        return dict(gradient=anode.DiscreteAdjoint(anode.Revolve(2)))
    return dict(gradient=anode.DiscreteAdjoint(anode.SCHEDULES[schedule]()))


# ---------------------------------------------------------------------------------------
# 1. double backward


def test_gradient_penalty_closed_form():
    # y' = 3a y, Euler with h = 0.01, 10 steps: y1 = y0 (1 + 0.03 a)^10
    a0, y0 = 2.0, 4.0
    c = 1 + 0.03 * a0
    g = y0 * 10 * 0.03 * c**9
    dg = y0 * 90 * 0.03**2 * c**8
    expected = g + 2 * g * dg  # d/da (y1 + (dy1/da)^2)
    for grad, sched in [*EXACT, ("anode", "revolve")]:
        a = torch.tensor(a0, dtype=F64, requires_grad=True)
        y1 = anode.odeint(lambda t, y: a * 3 * y, torch.tensor(y0, dtype=F64),  # noqa: B023
                          torch.tensor([0.0, 0.1], dtype=F64), method="euler", n_steps=10,
                          params=[a], **options(grad, sched))[-1]
        (g1,) = torch.autograd.grad(y1, a, create_graph=True)
        (y1 + g1**2).backward()
        assert abs(a.grad.item() - expected) <= 1e-12 * expected, (grad, sched)


def penalty_and_hvp(gradient, schedule, method, n_steps, seed):
    torch.manual_seed(seed)
    func = CosMLP().double()
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    ys = anode.odeint(func, y0, t, method=method, n_steps=n_steps, **options(gradient, schedule))
    loss = (ys[1:] ** 2).sum()
    params = [y0, *func.parameters()]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    # gradient penalty and a Hessian-vector product
    penalty = sum((g**2).sum() for g in grads)
    v = [torch.ones_like(g) for g in grads]
    hvp = torch.autograd.grad(grads, params, v, retain_graph=True)
    d_penalty = torch.autograd.grad(penalty, params)
    return hvp, d_penalty


@settings(max_examples=12, deadline=None)
@given(method=st.sampled_from(METHODS), n_steps=st.integers(1, 6), seed=st.integers(0, 99),
       which=st.sampled_from(EXACT[:3]))
def test_double_backward_equals_direct(method, n_steps, seed, which):
    ref_hvp, ref_pen = penalty_and_hvp("direct", None, method, n_steps, seed)
    hvp, pen = penalty_and_hvp(*which, method, n_steps, seed)
    for a, b in zip(hvp + pen, ref_hvp + ref_pen):
        assert rel_err(a, b) <= 1e-10


def test_backsolve_create_graph_raises():
    func = CosMLP().double()
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    ys = anode.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), gradient="backsolve")
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        torch.autograd.grad(ys.sum(), y0, create_graph=True)


def test_double_backward_with_gradients_through_time():
    a = torch.tensor(0.7, dtype=F64, requires_grad=True)
    out = {}
    for grad in ["direct", "anode"]:
        t = torch.tensor([0.0, 0.5, 1.2], dtype=F64, requires_grad=True)
        ys = anode.odeint(lambda t, y: torch.sin(a * y) * t, torch.tensor([0.3, 1.0], dtype=F64), t,  # noqa: B023
                          method="midpoint", n_steps=3, params=[a], gradient=grad)
        gt, ga = torch.autograd.grad(ys.sum(), (t, a), create_graph=True)
        out[grad] = torch.autograd.grad((gt**2).sum() + ga**2, (t, a))
    for x, y in zip(out["anode"], out["direct"]):
        assert rel_err(x, y) <= 1e-10


# ---------------------------------------------------------------------------------------
# 2. functions that call autograd inside


@pytest.mark.parametrize("gradient", ["direct", "anode", "backsolve"])
def test_function_differentiating_inside_trains_and_runs_without_grad(gradient):
    torch.manual_seed(0)
    func = Hamiltonian().double()
    x0 = torch.randn(5, 2, dtype=F64)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    kw = dict(method="rk4", n_steps=4)
    with torch.no_grad():
        a = anode.odeint(func, x0, t, gradient=gradient, **kw)
    with torch.inference_mode():
        b = anode.odeint(func, x0.clone(), t, gradient=gradient, **kw)
    ys = anode.odeint(func, x0, t, gradient=gradient, **kw)
    assert torch.equal(a, b) and torch.equal(a, ys.detach())
    # H's last bias does not reach dH/dx: its gradient is zero
    grads = torch.autograd.grad(ys[-1].square().sum(), list(func.parameters()), materialize_grads=True)
    ref = torch.autograd.grad(anode.odeint(func, x0, t, gradient="direct", **kw)[-1].square().sum(),
                              list(func.parameters()), materialize_grads=True)
    tol = 1e-12 if gradient != "backsolve" else 1e-3  # backsolve: a reverse solve, approximate
    assert all(rel_err(g, r) <= tol for g, r in zip(grads, ref))


def cnf_nll(flow, x, **kw):
    zero = torch.zeros(x.shape[0], dtype=x.dtype)
    z, dlogp = anode.odeint(flow, (x, zero), torch.tensor([0.0, 1.0], dtype=x.dtype), method="midpoint",
                            n_steps=4, **kw)
    logp_z = -0.5 * (z[-1] ** 2).sum(1) - torch.log(torch.tensor(2 * torch.pi, dtype=x.dtype))
    return -(logp_z - dlogp[-1]).mean()


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_cnf_gradients_equal_direct_and_training_lowers_the_loss(trace):
    torch.manual_seed(3)
    flow = CNF(trace).double()
    x = torch.randn(64, 2, dtype=F64) * torch.tensor([1.5, 0.3], dtype=F64) + 1.0
    grads = {}
    for grad in ["direct", "anode"]:
        torch.manual_seed(11)
        loss = cnf_nll(flow, x, gradient=grad)
        grads[grad] = torch.autograd.grad(loss, list(flow.parameters()))
    assert all(rel_err(a, b) <= 1e-10 for a, b in zip(grads["anode"], grads["direct"]))

    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = cnf_nll(flow, x, gradient="anode")
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first - 0.1


# ---------------------------------------------------------------------------------------
# 3. what a solve leaves behind


@pytest.mark.parametrize("gradient", ["direct", "anode", "backsolve"])
def test_module_keeping_its_own_output_is_freed(gradient):
    m = CachesTrajectory(gradient)
    m.run(torch.randn(2, 64, requires_grad=True))
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


def test_module_freed_before_backward_is_a_clear_error():
    ys = anode.odeint(CosMLP(), torch.randn(2, 3), torch.tensor([0.0, 1.0]))
    gc.collect()
    with pytest.raises(RuntimeError, match="freed before the backward"):
        ys.sum().backward()


@pytest.mark.parametrize("gradient", ["anode", "backsolve"])
def test_forward_only_loop_frees_everything_without_gc(gradient):
    class Field:  # a plain callable holding a large tensor
        def __init__(self):
            self.w = torch.randn(256, 256, requires_grad=True)

        def __call__(self, t, y):
            return torch.tanh(y @ self.w)

    def solve():
        f = Field()
        anode.odeint(f, torch.randn(2, 256), torch.tensor([0.0, 1.0]), method="euler", params=[f.w],
                     gradient=gradient)

    solve()  # one-time setup (caches, imports) is not per call
    gc.collect()
    gc.disable()
    try:
        for _ in range(1000):
            f = Field()
            ys = anode.odeint(f, torch.randn(2, 256), torch.tensor([0.0, 1.0]), method="euler",
                              params=[f.w], gradient=gradient)
            ref = weakref.ref(f)
            del f, ys
            assert ref() is None
        # and no reference cycle was left for the collector (memory is constant without it)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_no_generator_states_kept_for_a_function_that_draws_none():
    captured = {}
    original = anode._recompute.ForwardRecord.__init__

    def spy(self, *a, **k):
        original(self, *a, **k)
        captured["record"] = self

    func = CosMLP()
    try:
        anode._recompute.ForwardRecord.__init__ = spy
        ys = anode.odeint(func, torch.randn(2, 3), torch.tensor([0.0, 1.0]), n_steps=50)
        assert captured["record"].rng == {}
        drop = nn.Dropout(0.5)
        anode.odeint(lambda t, y: drop(func(t, y)), torch.randn(2, 3), torch.tensor([0.0, 1.0]), n_steps=50,
                     params=list(func.parameters()))
        assert len(captured["record"].rng) == 50  # every step draws: each start state is kept
    finally:
        anode._recompute.ForwardRecord.__init__ = original
    ys.sum().backward()


def test_long_solve_holds_only_the_schedule_states():
    # A fresh process: resident memory after the forward (output kept, graph alive) minus
    # before it. N_t = 20,000 steps of a 4-element state; recompute keeps one state.
    script = textwrap.dedent("""
        import gc, torch, anode
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        torch.set_num_threads(1)
        lin = torch.nn.Linear(4, 4).double()
        f = lambda t, y: torch.tanh(lin(y))
        y0 = torch.randn(4, dtype=torch.float64, requires_grad=True)
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        anode.odeint(f, y0, t, method="euler", n_steps=200, params=list(lin.parameters())).sum().backward()
        gc.collect()
        before = rss()
        ys = anode.odeint(f, y0, t, method="euler", n_steps=20000, params=list(lin.parameters()))
        gc.collect()
        print(rss() - before)
        ys.sum().backward()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    held = int(out.stdout.split()[-1])
    assert held < 4 * 2**20, f"{held / 2**20:.1f} MiB held between forward and backward"


# ---------------------------------------------------------------------------------------
# 4. torch.func


@pytest.mark.parametrize("gradient", ["direct", "anode", "backsolve"])
def test_vmap_over_forward_passes(gradient):
    torch.manual_seed(0)
    func = CosMLP().double()
    y0 = torch.randn(5, 2, 3, dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)

    def solve(y):
        return anode.odeint(func, y, t, method="rk4", n_steps=3, gradient=gradient)

    batched = torch.func.vmap(solve)(y0)
    looped = torch.stack([solve(y) for y in y0])
    assert rel_err(batched, looped.detach()) <= 1e-12


def test_torch_func_grad_through_backsolve_raises():
    def loss(y):
        return anode.odeint(lambda t, y: -y, y, torch.tensor([0.0, 1.0]), gradient="backsolve").sum()

    with pytest.raises(ValueError, match="cannot run under torch.func Grad"):
        torch.func.grad(loss)(torch.ones(2))


def test_torch_func_grad_through_anode_equals_direct():
    torch.manual_seed(0)
    func = CosMLP().double()
    t = torch.tensor([0.0, 1.0], dtype=F64)
    y0 = torch.randn(2, 3, dtype=F64)

    def loss(y, gradient):
        return anode.odeint(func, y, t, method="midpoint", n_steps=4, gradient=gradient)[-1].square().sum()

    g = torch.func.grad(loss)(y0, "anode")
    (ref,) = torch.autograd.grad(loss(y0.requires_grad_(), "direct"), y0)
    assert rel_err(g, ref) <= 1e-12


# ---------------------------------------------------------------------------------------
# 5. repeated output times


@pytest.mark.parametrize("gradient", ["direct", "anode", "backsolve"])
def test_zero_length_span_repeats_the_state_without_calling_func(gradient):
    func = Counting(CosMLP().double())
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    ys = anode.odeint(func, y0, torch.tensor([0.5, 0.5], dtype=F64), gradient=gradient)
    assert func.calls == 0 and torch.equal(ys[0], y0) and torch.equal(ys[1], y0)
    up = torch.randn_like(ys)
    (g,) = torch.autograd.grad(ys, y0, up)
    assert torch.equal(g, up[0] + up[1])


@pytest.mark.parametrize("gradient", ["direct", "anode", "backsolve"])
@pytest.mark.parametrize(
    "times", [[0.0, 0.5, 0.5, 1.0], [0.0, 0.0, 1.0], [1.0, 0.4, 0.4, 0.4, 0.0], [0.0, 1.0, 1.0]]
)
def test_repeated_times_equal_the_solve_without_repeats(gradient, times):
    torch.manual_seed(0)
    func = Counting(CosMLP().double())
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.tensor(times, dtype=F64)
    distinct = torch.tensor(sorted(set(times), reverse=times[0] > times[-1]), dtype=F64)
    ys = anode.odeint(func, y0, t, method="rk4", n_steps=2, gradient=gradient)
    calls = func.calls
    ref = anode.odeint(func, y0, distinct, method="rk4", n_steps=2, gradient=gradient)
    assert calls == func.calls - calls  # the zero-length spans took no step
    index = [distinct.tolist().index(x) for x in times]
    assert torch.equal(ys, ref[index])
    up = torch.randn_like(ys)
    up_ref = torch.zeros_like(ref).index_add_(0, torch.tensor(index), up)
    got = torch.autograd.grad(ys, [y0, *func.parameters()], up)
    want = torch.autograd.grad(ref, [y0, *func.parameters()], up_ref)
    assert all(rel_err(a, b) <= 1e-12 for a, b in zip(got, want))


@pytest.mark.parametrize("gradient", ["direct", "anode"])
def test_repeated_times_gradient_through_t_equals_direct(gradient):
    a = torch.tensor(0.7, dtype=F64, requires_grad=True)
    res = {}
    for g in [gradient, "direct"]:
        t = torch.tensor([0.0, 0.5, 0.5, 1.0], dtype=F64, requires_grad=True)
        ys = anode.odeint(lambda t, y: torch.sin(a * y) * t, torch.tensor([0.3], dtype=F64), t,  # noqa: B023
                          n_steps=2, params=[a], gradient=g)
        res[g] = torch.autograd.grad((ys * torch.arange(1.0, 5.0, dtype=F64)[:, None]).sum(), t)[0]
    assert rel_err(res[gradient], res["direct"]) <= 1e-12


def test_backsolve_time_gradient_with_repeats_raises():
    t = torch.tensor([0.0, 0.5, 0.5, 1.0], requires_grad=True)
    ys = anode.odeint(lambda t, y: -y, torch.ones(1), t, gradient="backsolve")
    with pytest.raises(ValueError, match="repeat"):
        ys.sum().backward()


@pytest.mark.parametrize("times", [[0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 0.2]])
def test_non_monotone_times_raise(times):
    with pytest.raises(ValueError, match="not monotonic"):
        anode.odeint(lambda t, y: -y, torch.ones(1), torch.tensor(times))


def test_a_module_of_the_state_alone_gets_a_clear_error():
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    with pytest.raises(TypeError, match=r"func\(t, y\).*anode.Autonomous"):
        anode.ODEBlock(net)
    with pytest.raises(TypeError, match="anode.Autonomous"):
        anode.odeint(net, torch.ones(3), torch.tensor([0.0, 1.0]))
    block = anode.ODEBlock(anode.Autonomous(net), method="euler", n_steps=1)
    x = torch.randn(2, 3)
    assert torch.allclose(block(x), x + net(x))


@pytest.mark.parametrize("gradient", ["direct", "anode", "backsolve"])
def test_torch_compile_equals_eager(gradient):
    # Dynamo traces around the solve (a graph break at the autograd.Function); the "eager"
    # backend keeps the test fast and checks that tracing changes nothing.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    block = anode.ODEBlock(anode.Autonomous(net), method="rk4", n_steps=3, gradient=gradient)
    x = torch.randn(5, 4, dtype=F64, requires_grad=True)
    ref = torch.autograd.grad(block(x).square().sum(), [x, *net.parameters()])
    compiled = torch.compile(block, backend="eager")
    got = torch.autograd.grad(compiled(x).square().sum(), [x, *net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("schedule", ["store", "recompute", "revolve"])
def test_double_backward_with_batchnorm_in_training_mode(schedule):
    torch.manual_seed(0)
    func = anode.ConvODEFunc(2).double().train()
    x = torch.randn(3, 2, 4, 4, dtype=F64, requires_grad=True)
    res = {}
    for grad, sched in [("direct", None), ("anode", schedule)]:
        block = anode.ODEBlock(func, method="midpoint", n_steps=3, **options(grad, sched))
        y = block(x)
        after_forward = [b.clone() for b in func.buffers()]
        (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        res[grad] = torch.autograd.grad(g.pow(2).sum(), [x, *func.parameters()])
        # the backward passes leave the running statistics as the forward left them
        assert all(torch.equal(a, b) for a, b in zip(after_forward, func.buffers()))
    assert all(rel_err(a, b) <= 1e-10 for a, b in zip(res["anode"], res["direct"]))


def test_block_options_take_only_a_record():
    block = anode.ODEBlock(CosMLP(), method="euler")
    with pytest.raises(TypeError, match="SolveOptions"):
        block.options = "garbage"
    block.options = anode.SolveOptions("midpoint", anode.FixedGrid(2))
    assert block.options.method.name == "midpoint"


def test_a_misspelt_argument_is_named_as_such():
    with pytest.raises(TypeError, match="unexpected keyword argument .nsteps."):
        anode.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), nsteps=3)
    with pytest.raises(TypeError, match=r"anode.Revolve\(4\)"):
        anode.DiscreteAdjoint(schedule="revolve")
