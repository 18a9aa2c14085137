"""The continuous adjoint (``gradient="backsolve"``) against torchdiffeq and a closed form.

References: torchdiffeq's ``odeint_adjoint`` (same augmented system) and ``odeint`` +
autograd on exactly the same fixed grid, in float64; Euler applied by hand to the augmented
system of dz/dt = θz; direct autograd (the DTO gradient that backsolve converges to).
"""

from __future__ import annotations

import pytest
import torch
import torchdiffeq
from torch import nn

import anode
from anode._stepping.grid import make_grid
from problems import NoisyDecay, TanhOscillator, TimeMLP
from problems import rel_err as max_rel

TOL = 1e-10
# our name -> torchdiffeq's fixed-grid name (torchdiffeq's "rk4" is Kutta's 3/8 rule)
METHODS = [("euler", "euler"), ("midpoint", "midpoint"), ("rk38", "rk4")]



class MatchingGrid:
    """A torchdiffeq ``grid_constructor`` that yields anode's grid exactly.

    Forward (increasing times) it builds the nodes from ``t`` as :class:`anode._stepping.grid.TimeGrid`
    does, differentiably; for the adjoint's reverse intervals it returns the forward's
    nodes reversed, bit for bit. Every grid it hands out is recorded.
    """

    def __init__(self, t, n_steps):
        self.grid = make_grid(t.detach().tolist(), n_steps, None)
        self.nodes = self._nodes(t.detach())
        self.calls: list[torch.Tensor] = []

    def _nodes(self, t):
        starts, _ = self.grid.step_times(t, t.new_zeros(1))
        return torch.cat([starts[:, 0], t[-1:].to(starts.dtype)])

    def __call__(self, func, y0, t):
        if t[-1] > t[0]:
            out = self._nodes(t)
        else:
            lo, hi = t[-1].item(), t[0].item()
            out = self.nodes[(self.nodes >= lo) & (self.nodes <= hi)].flip(0)
        self.calls.append(out.detach().clone())
        return out.to(t.dtype)


def weighted_loss(sol):
    sols = sol if isinstance(sol, tuple) else (sol,)
    gen = torch.Generator().manual_seed(7)
    return sum((torch.randn(s.shape, generator=gen, dtype=s.dtype) * s.sin()).sum() for s in sols)


def problem(seed=0):
    torch.manual_seed(seed)
    func = TimeMLP().double()
    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.1], dtype=torch.float64, requires_grad=True)
    return func, y0, t


@pytest.mark.parametrize("ours,theirs", METHODS)
def test_backsolve_equals_torchdiffeq_odeint_adjoint(ours, theirs):
    func, y0, t = problem()
    n = 3
    inputs = [y0, t, *func.parameters()]
    sol = anode.odeint(func, y0, t, method=ours, n_steps=n, gradient="backsolve")
    g_ours = torch.autograd.grad(weighted_loss(sol), inputs)
    grid = MatchingGrid(t, n)
    ref = torchdiffeq.odeint_adjoint(func, y0, t, method=theirs, options=dict(grid_constructor=grid))
    g_ref = torch.autograd.grad(weighted_loss(ref), inputs)
    assert max_rel(sol, ref) <= TOL
    for name, a, b in zip(["y0", "t", *(n for n, _ in func.named_parameters())], g_ours, g_ref):
        assert max_rel(a, b) <= TOL, name
    # torchdiffeq's adjoint ran on the forward grid, reversed, one output interval at a time
    forward, *backward = grid.calls
    assert len(backward) == t.numel() - 1
    assert torch.equal(torch.cat([b[:-1] for b in backward] + [backward[-1][-1:]]), forward.flip(0))


@pytest.mark.parametrize("ours,theirs", METHODS)
def test_direct_equals_torchdiffeq_odeint_autograd(ours, theirs):
    func, y0, t = problem(1)
    n = 3
    inputs = [y0, t, *func.parameters()]
    sol = anode.odeint(func, y0, t, method=ours, n_steps=n, gradient="direct")
    g_ours = torch.autograd.grad(weighted_loss(sol), inputs)
    ref = torchdiffeq.odeint(func, y0, t, method=theirs, options=dict(grid_constructor=MatchingGrid(t, n)))
    g_ref = torch.autograd.grad(weighted_loss(ref), inputs)
    for a, b in zip(g_ours, g_ref):
        assert max_rel(a, b) <= TOL


def test_reverse_solve_evaluates_func_on_the_forward_grid_reversed():
    # Euler's only stage is at the start of a step, so the reverse solve's evaluation times
    # are the forward grid's nodes t_N, ..., t_1 exactly, as in torchdiffeq's adjoint.
    func, y0, t = problem(2)
    t = t.detach()
    n = 4
    sol = anode.odeint(func, y0, t, method="euler", n_steps=n, gradient="backsolve")
    func.times = []
    sol.sum().backward()
    ours, func.times = func.times, None
    grid = MatchingGrid(t, n)
    ref = torchdiffeq.odeint_adjoint(func, y0, t, method="euler", options=dict(grid_constructor=grid))
    func.times = []
    ref.sum().backward()
    assert ours == func.times == grid.nodes.flip(0)[:-1].tolist()


def test_tuple_state_and_closure_params_equal_torchdiffeq():
    k = torch.tensor([1.5, 0.7], dtype=torch.float64, requires_grad=True)
    func = TanhOscillator(k)
    x0 = torch.tensor([[0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    v0 = torch.tensor([[0.2, 0.1]], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 2, 4, dtype=torch.float64)
    inputs = [x0, v0, k, func.c]
    sol = anode.odeint(func, (x0, v0), t, method="midpoint", n_steps=5, gradient="backsolve", params=[k])
    g_ours = torch.autograd.grad(weighted_loss(sol), inputs)
    ref = torchdiffeq.odeint_adjoint(func, (x0, v0), t, method="midpoint", adjoint_params=(k, func.c),
                                     options=dict(grid_constructor=MatchingGrid(t, 5)))
    g_ref = torch.autograd.grad(weighted_loss(ref), inputs)
    for a, b in zip(g_ours, g_ref):
        assert max_rel(a, b) <= TOL


def test_closure_tensor_found_without_params():
    # the same gradient as with the tensor listed in params (the computation is the same)
    k = torch.tensor([1.5, 0.7], dtype=torch.float64, requires_grad=True)
    x0 = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grads, func = [], TanhOscillator(k)
    for params in (None, [k]):
        sol = anode.odeint(func, (x0, x0 + 1), t, method="euler", n_steps=4, gradient="backsolve",
                           params=params)
        grads.append(torch.autograd.grad(weighted_loss(sol), [x0, k]))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_odeblock_backsolve_equals_torchdiffeq_conv_bn_eval():
    torch.manual_seed(3)
    func = anode.ConvODEFunc(3).double()
    with torch.no_grad():  # non-trivial running statistics for evaluation mode
        for m in func.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    func.eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    block = anode.ODEBlock(func, method="midpoint", n_steps=2, gradient="backsolve")
    out = block(x)
    g_ours = torch.autograd.grad(weighted_loss(out), [x, *func.parameters()])
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ref = torchdiffeq.odeint_adjoint(func, x, t, method="midpoint", options=dict(step_size=0.5))[-1]
    g_ref = torch.autograd.grad(weighted_loss(ref), [x, *func.parameters()])
    for a, b in zip(g_ours, g_ref):
        assert max_rel(a, b) <= TOL
    assert block.stats.forward_steps == 2 and block.stats.recomputed_steps == 2


def test_linear_euler_closed_form():
    # dz/dt = θz on [0, 1], θ = -5, Euler with N = 10 steps of h = 0.1, L = w·z_N.
    # Forward: z_{j+1} = r z_j with r = 1 + hθ = 0.5, so z_N = r^N z_0.
    # The augmented system (z, a, g) has dynamics (θz, -aθ, -a ∂(θz)/∂θ) = (θz, -θa, -az),
    # started at t = 1 from (z_N, w, 0). One Euler step of size -h from (z, a, g) gives
    #     z <- z - hθz = q z,  q = 1 - hθ = 1.5,
    #     a <- a + hθa = r a,
    #     g <- g + h a z,
    # all right-hand sides at the step's start. After k reverse steps z^(k) = q^k r^N z_0
    # and a^(k) = r^k w, so
    #     dL/dz_0 (backsolve) = a^(N) = r^N w                     (= the exact discrete value)
    #     dL/dθ  (backsolve) = g^(N) = h w z_0 r^N sum_{k<N} (rq)^k
    #                        = h w z_0 r^N (1 - (rq)^N) / (1 - rq),  rq = 1 - h²θ² = 0.75,
    # whereas the exact gradient of the discrete network is dL/dθ = N h w z_0 r^(N-1).
    theta0, n, h = -5.0, 10, 0.1
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    z0 = torch.tensor([1.3, -0.4], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.7, 2.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    stats = anode.SolveStats()
    out = anode.odeint(lambda t, z: theta * z, z0, t, method="euler", n_steps=n, gradient="backsolve",
                       params=[theta], stats=stats)
    g_z0, g_theta = torch.autograd.grad((w * out[-1]).sum(), [z0, theta])
    r, q = 1 + h * theta0, 1 - h * theta0
    wz = float((w * z0.detach()).sum())
    assert torch.allclose(g_z0, r**n * w, rtol=1e-13, atol=0)
    expected = h * wz * r**n * (1 - (r * q) ** n) / (1 - r * q)
    assert g_theta.item() == pytest.approx(expected, rel=1e-13)
    exact = n * h * wz * r ** (n - 1)
    assert abs(g_theta.item() - exact) > 0.5 * abs(exact)  # backsolve is far off here
    assert (stats.forward_steps, stats.recomputed_steps, stats.backward_steps) == (n, n, 0)


@pytest.mark.parametrize("decreasing", [False, True])
def test_converges_to_the_discrete_gradient_at_the_method_order(decreasing):
    # OTD and DTO gradients differ by O(h^p): for rk38 (p = 4) quadrupling N_t divides the
    # difference by about 4^4 = 256.
    func, y0, _ = problem(4)
    t = torch.tensor([1.0, 0.0] if decreasing else [0.0, 1.0], dtype=torch.float64)
    inputs = [y0, *func.parameters()]

    def grads(n, gradient):
        sol = anode.odeint(func, y0, t, method="rk38", n_steps=n, gradient=gradient)
        return torch.cat([g.flatten() for g in torch.autograd.grad(weighted_loss(sol), inputs)])

    errs = [max_rel(grads(n, "backsolve"), grads(n, "direct")) for n in (2, 8)]
    assert 0 < errs[1] < errs[0] / 100


def test_forward_keeps_only_the_outputs():
    func, y0, t = problem(5)
    t = t.detach()

    def saved_bytes(n):
        out = anode.odeint(func, y0, t, method="rk4", n_steps=n, gradient="backsolve")
        (node,) = {fn for fn, _ in out.grad_fn.next_functions if "ContinuousAdjoint" in type(fn).__name__}
        return sum(x.numel() * x.element_size() for x in node.saved_tensors)

    params = sum(p.numel() * p.element_size() for p in func.parameters())
    expected = t.numel() * 8 + params + 2 * y0.numel() * 8  # t, params, the two outputs
    assert saved_bytes(1) == saved_bytes(32) == expected


def test_reverse_step_replays_the_forward_steps_random_numbers():
    func = NoisyDecay()
    z0 = torch.ones(3, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    out = anode.odeint(func, z0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="euler",
                       n_steps=4, gradient="backsolve")
    forward, func.draws = func.draws, []
    after_forward = torch.get_rng_state()
    out[-1].sum().backward()
    assert func.draws == forward[::-1]  # reverse step j draws what forward step j drew
    assert torch.equal(torch.get_rng_state(), after_forward)  # the backward drew nothing


def test_batchnorm_train_mode_buffers_and_modes_restored():
    torch.manual_seed(6)
    func = anode.ConvODEFunc(2).double().train()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    block = anode.ODEBlock(func, method="midpoint", n_steps=3, gradient="backsolve")

    def grad(switch_to_eval):
        func.train()
        out = block(x)
        buffers = [b.clone() for b in func.buffers()]
        if switch_to_eval:  # must not reach the reverse solve, which replays training mode
            func.eval()
        (g,) = torch.autograd.grad(out.sum(), [x])
        assert func.training != switch_to_eval
        assert all(torch.equal(a, b) for a, b in zip(buffers, func.buffers()))
        return g

    assert torch.equal(grad(False), grad(True))


def test_second_derivative_raises():
    func, y0, t = problem(7)
    out = anode.odeint(func, y0, t.detach(), method="euler", gradient="backsolve")
    # at the first backward already: its result would have no graph, a silent wrong second derivative
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        torch.autograd.grad(out.sum(), [y0], create_graph=True)
