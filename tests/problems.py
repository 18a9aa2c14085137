"""Test ODEs (vector fields ``func(t, y)`` and problems built on them) and error measures
shared by the test files: every test's vector field is defined here, once.

Sections: error measures; fields with closed forms; small networks; mechanical and
discontinuous fields; fields that differentiate inside; convolutional fields; instrumented
fields (counters, recorders); the adaptive-stepping problems.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

import anode

F64 = torch.float64


def rel_err(a, b):
    """Largest absolute difference over the largest magnitude of the reference ``b``
    (0.0 when both are ``None``, as autograd returns for unused inputs)."""
    if a is None and b is None:
        return 0.0
    scale = max(b.abs().max().item(), 1e-300)
    return (a - b).abs().max().item() / scale


# ---------------------------------------------------------------- fields with closed forms

def decay(t, y):
    """dy/dt = -y: y(t) = y0 exp(-t). For tensor states of any shape."""
    return -y


def linear_field(theta):
    """dz/dt = theta z for a scalar (float or 0-d tensor, possibly requiring grad) theta:
    z(t) = z0 exp(theta t); one Euler step of size h multiplies z by (1 + h theta)."""
    return lambda t, z: theta * z


def harmonic(t, y):
    """The harmonic oscillator x'' = -x on a stacked state ``y = [x, v]`` (first dimension 2):
    y(t) = [x0 cos t + v0 sin t, v0 cos t - x0 sin t]."""
    return torch.stack([y[1], -y[0]])


class ForcedLinear(nn.Module):
    """dy/dt = A y + sin(t) with a parameter A [dim, dim] ~ 0.5 N(0, 1) (global generator),
    float64: a linear field with a time-dependent forcing."""

    def __init__(self, dim=3):
        super().__init__()
        self.A = nn.Parameter(0.5 * torch.randn(dim, dim, dtype=F64))

    def forward(self, t, y):
        return y @ self.A.T + torch.sin(t)


# ---------------------------------------------------------------- small networks

class TimeMLP(nn.Module):
    """dy/dt = cos(t) (W2 tanh(W1 [y, t] + b1) + b2), time-dependent so that gradients with
    respect to t are not trivial.

    Args:
        dim: the state's last dimension.
        tuple_state: the state is ``(x, v)`` with dx/dt = v, dv/dt = f(t, x) - 0.1 v.
        closure: a tensor outside the module that multiplies f (a parameter passed to
            ``odeint`` through ``params``).
        hidden: width of the hidden layer.

    Setting ``times`` to a list records the time of every evaluation.
    """

    def __init__(self, dim=3, tuple_state=False, closure=None, hidden=16):
        super().__init__()
        self.tuple_state = tuple_state
        self.lin1 = nn.Linear(dim + 1, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.closure = closure
        self.times: list[float] | None = None

    def forward(self, t, y):
        if self.times is not None:
            self.times.append(t.item())
        x = y[0] if self.tuple_state else y
        tt = t.to(x.dtype).expand(*x.shape[:-1], 1)
        dx = self.lin2(torch.tanh(self.lin1(torch.cat([x, tt], -1)))) * torch.cos(t)
        if self.closure is not None:
            dx = dx * self.closure
        if self.tuple_state:
            return (y[1], dx - 0.1 * y[1])
        return dx


class CosMLP(nn.Module):
    """dy/dt = cos(t) (W2 tanh(W1 y + b1) + b2): TimeMLP without t among the inputs, so time
    enters only through the factor cos(t). ``dim`` the state's last dimension, ``hidden``
    the hidden width."""

    def __init__(self, dim=3, hidden=8):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, t, y):
        return self.lin2(torch.tanh(self.lin1(y))) * torch.cos(t)


class NoisyMLP(TimeMLP):
    """TimeMLP plus 1e-2 N(0, 1) noise drawn from the global generator at every evaluation:
    exact gradients must replay the forward's random numbers."""

    def forward(self, t, y):
        return super().forward(t, y) + 1e-2 * torch.randn_like(y)


class TrackedMLP(nn.Module):
    """dy/dt = W2 tanh(W1 y + b1) + b2 (autonomous); remembers weakly every hidden activation
    it computed with a graph, so a test can count how many stages' activations are alive at
    once (``most``)."""

    def __init__(self, dim=3, hidden=32):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.alive: list[weakref.ref] = []
        self.most = 0

    def forward(self, t, y):
        h = torch.tanh(self.lin1(y))
        if torch.is_grad_enabled():
            self.alive = [r for r in self.alive if r() is not None] + [weakref.ref(h)]
            self.most = max(self.most, len(self.alive))
        return self.lin2(h)


class DropoutMLP(nn.Module):
    """A network whose field is the *method* ``dynamics`` (the module itself is not the
    field): dy/dt = cos(t) (W2 drop(tanh(W1 y + b1)) + b2) on a last dimension of 3, with
    dropout probability ``dropout`` (0 for a deterministic field)."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(3, 8), nn.Linear(8, 3)
        self.drop = nn.Dropout(dropout)

    def dynamics(self, t, y):
        return self.lin2(self.drop(torch.tanh(self.lin1(y)))) * torch.cos(t)


class TanhRamp(nn.Module):
    """dy/dt = tanh(y W + b) (1 + t) for W [d, d] and b [d] (or no b). Passed as
    ``nn.Parameter`` they are the module's parameters; passed as plain tensors they are
    constants of the field."""

    def __init__(self, w, b=None):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, t, y):
        z = y @ self.w if self.b is None else y @ self.w + self.b
        return torch.tanh(z) * (1 + t)


def seeded_ramp(d=3):
    """A float64 TanhRamp with parameters W ~ N(0, 1)/d and b ~ N(0, 1)/d drawn from a
    generator seeded with 1 (the global generator is left alone)."""
    g = torch.Generator().manual_seed(1)
    w = nn.Parameter(torch.randn(d, d, generator=g, dtype=F64) / d)
    b = nn.Parameter(torch.randn(d, generator=g, dtype=F64) / d)
    return TanhRamp(w, b)


class DropoutTanh(TanhRamp):
    """dy/dt = dropout(tanh(y W + b), p=0.4), always in training mode: a fresh mask from the
    global generator at every evaluation, which recomputation must replay. Built as
    :func:`seeded_ramp`'s parameters by :meth:`seeded`."""

    @classmethod
    def seeded(cls, d=3):
        ramp = seeded_ramp(d)
        return cls(ramp.w, ramp.b)

    def forward(self, t, y):
        return torch.nn.functional.dropout(torch.tanh(y @ self.w + self.b), 0.4, training=True)


# ---------------------------------------------------------------- mechanical and discontinuous fields

class TanhOscillator(nn.Module):
    """A tuple state (x, v): x' = v, v' = -k tanh(x) - c v, with a parameter c = 0.3 and k a
    tensor reached by closure (gradients reach it only through ``params`` or discovery)."""

    def __init__(self, k):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(0.3, dtype=F64))
        self.k = k

    def forward(self, t, y):
        x, v = y
        return v, -self.k * torch.tanh(x) - self.c * v


class NoisyDecay(nn.Module):
    """dz/dt = -s u z with a parameter s = 1 and u ~ U(0, 1) drawn from the global generator
    at every evaluation (recorded in ``draws``): a reverse solve must replay the draws."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0, dtype=F64))
        self.draws: list[float] = []

    def forward(self, t, z):
        u = torch.rand((), dtype=F64)
        self.draws.append(u.item())
        return -self.scale * u * z


class Pendulum(nn.Module):
    """A driven, damped pendulum on y = [angle, angular velocity]: y0' = y1,
    y1' = -a sin(y0) + 0.3 w0 cos(t) + 0.2 w1 y1 with parameters a = 0.7, w = [1.3, -0.4] in
    the default dtype. Non-polynomial and time-dependent, so no method is exact."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7))
        self.w = nn.Parameter(torch.tensor([1.3, -0.4]))

    def forward(self, t, y):
        drive = 0.3 * self.w[0] * torch.cos(t) + 0.2 * self.w[1] * y[1]
        return torch.stack([y[1], -self.a * torch.sin(y[0]) + drive])


class BouncingBall(nn.Module):
    """torchdiffeq's bouncing ball (examples/bouncing_ball.py): state (position, velocity,
    log radius) with x' = v, v' = -g, (log r)' = 0, so x(t) = x0 + v0 t - g t^2 / 2; the event
    ``event_fn`` is contact, x = exp(log r). Parameters in the default dtype."""

    def __init__(self):
        super().__init__()
        self.gravity = nn.Parameter(torch.tensor([9.8]))
        self.log_radius = nn.Parameter(torch.log(torch.tensor([0.2])))
        self.init_pos = nn.Parameter(torch.tensor([10.0]))
        self.init_vel = nn.Parameter(torch.tensor([0.0]))
        self.absorption = nn.Parameter(torch.tensor([0.2]))

    def forward(self, t, state):
        return state[1], -self.gravity, torch.zeros_like(state[2])

    @staticmethod
    def event_fn(t, state):
        return state[0] - torch.exp(state[2])


class Jump(nn.Module):
    """dy/dt = a y for t < 0.5, b y^2 - y after (a = -0.5, b = 0.8, float64 parameters):
    discontinuous in time at 0.5, so y = y0 exp(a t) up to 0.5. ``closed_left`` puts 0.5
    itself on the left side. Records the time of each evaluation in ``times``."""

    def __init__(self, closed_left=False):
        super().__init__()
        self.closed_left = closed_left
        self.a = nn.Parameter(torch.tensor(-0.5, dtype=F64))
        self.b = nn.Parameter(torch.tensor(0.8, dtype=F64))
        self.times: list[float] = []

    def forward(self, t, y):
        self.times.append(t.item())
        left = t <= 0.5 if self.closed_left else t < 0.5
        return self.a * y if left else self.b * y**2 - y


# ---------------------------------------------------------------- fields that differentiate inside

class Hamiltonian(nn.Module):
    """dq/dt = dH/dp, dp/dt = -dH/dq for a learned H(q, p) (a 2-16-1 tanh network) on states
    [batch, 2]: autograd inside func, with create_graph=True."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, t, x):
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_()
            (dh,) = torch.autograd.grad(self.net(x).sum(), x, create_graph=True)
        return torch.stack([dh[:, 1], -dh[:, 0]], dim=1)


class CNF(nn.Module):
    """A continuous normalizing flow on 2-D points (FFJORD, Grathwohl et al. 2019): state
    (z [batch, 2], log-density change [batch]); dz/dt = f(z, t), d(log p)/dt = -tr(df/dz).

    ``trace="exact"`` sums the Jacobian's diagonal; ``trace="hutchinson"`` estimates it as
    e^T (df/dz) e with Rademacher noise e drawn inside func (replayed by recomputation).
    """

    def __init__(self, trace):
        super().__init__()
        self.trace = trace
        self.net = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 2))

    def forward(self, t, state):
        z = state[0]
        with torch.enable_grad():
            z = z if z.requires_grad else z.detach().requires_grad_()
            f = self.net(torch.cat([z, t.expand(z.shape[0], 1).to(z.dtype)], 1))
            if self.trace == "exact":
                div = sum(torch.autograd.grad(f[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(2))
            else:
                e = torch.randint(0, 2, z.shape, dtype=z.dtype) * 2 - 1
                (ej,) = torch.autograd.grad(f, z, e, create_graph=True)
                div = (ej * e).sum(1)
        return f, -div


class FFJORDStyle(nn.Module):
    """As FFJORD's ODEfunc: marks the state and time as requiring grad in place and takes the
    divergence with create_graph=True, whatever the grad mode outside. State (y [batch, 2],
    log-density change [batch, 1]); dy/dt = f(y, t), the second component -tr(df/dy)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, t, states):
        y = states[0]
        with torch.enable_grad():
            y.requires_grad_(True)
            t.requires_grad_(True)
            dy = self.net(torch.cat([y, t.expand(y.shape[0], 1)], 1))
            div = sum(torch.autograd.grad(dy[:, i].sum(), y, create_graph=True)[0][:, i] for i in range(2))
        return dy, -div.unsqueeze(1)


# ---------------------------------------------------------------- convolutional fields

class ConvDropoutFunc(nn.Module):
    """conv–BN–ReLU–dropout–conv on images [batch, c, H, W], autonomous: random and stateful
    (BatchNorm buffers), as a recomputation stress test."""

    def __init__(self, c=3, p=0.3):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.drop = nn.Dropout(p)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, t, z):
        return self.conv2(self.drop(torch.relu(self.bn(self.conv1(z)))))


class AutocastProbe(anode.ConvODEFunc):
    """The library's ConvODEFunc, recording in ``seen`` whether CPU autocast was on at each
    call."""

    def __init__(self, c):
        super().__init__(c)
        self.seen = []

    def forward(self, t, z):
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return super().forward(t, z)


# ---------------------------------------------------------------- adaptive-stepping problems

def linear_problem(seed=0):
    """y' = A y with a random 4x4 A: ``(func, y0 [2, 4], exact(t))``, float64."""
    g = torch.Generator().manual_seed(seed)
    a = 0.5 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    y0 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    return (lambda t, y: y @ a.T), y0, (lambda t: y0 @ torch.linalg.matrix_exp(a * t).T)


def mlp_problem(seed=0):
    """y' = cos(t) net(y) with a small tanh MLP: ``(func, y0 [3, 4], net)``, float64."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    y0 = torch.randn(3, 4, dtype=torch.float64)
    return (lambda t, y: net(y) * torch.cos(t)), y0, net


def oscillator_problem():
    """A tuple state (position, velocity) of different scales: x'' = -4x."""
    y0 = (torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64),
          torch.tensor([10.0, 3.0, -7.0], dtype=torch.float64))
    return lambda t, y: (y[1], -4 * y[0]), y0


ADAPTIVE_PROBLEMS = {"linear": lambda: linear_problem()[:2], "mlp": lambda: mlp_problem()[:2],
                     "tuple": oscillator_problem}
"""``(func, y0)`` of the adaptive-stepping tests, by name."""



# ---------------------------------------------------------------- instrumented fields

class Counting(nn.Module):
    """``func`` (a module, whose parameters become this module's, or any callable) with a
    call counter ``calls`` and a log ``times`` of the times it was called at."""

    def __init__(self, func):
        super().__init__()
        self.func, self.calls, self.times = func, 0, []

    def forward(self, t, y):
        self.calls += 1
        self.times.append(float(t.detach()))
        return self.func(t, y)


class CallbackField(nn.Module):
    """dy/dt = tanh(W y) + 0.3 cos(t) with W [dim, dim] ~ 0.5 N(0, 1) under seed 0 (float64),
    or for ``tuple_state`` (x, v): x' = v, v' = tanh(W x) - 0.1 v. ``listen(*names)`` sets
    torchdiffeq's step callbacks (``callback_step`` and kin), each recording its calls in
    ``calls`` as ``(name, t0, y0, dt)``."""

    def __init__(self, dim=2, tuple_state=False):
        super().__init__()
        torch.manual_seed(0)
        self.W = nn.Parameter(0.5 * torch.randn(dim, dim, dtype=F64))
        self.tuple_state = tuple_state
        self.calls = []

    def forward(self, t, y):
        if self.tuple_state:
            x, v = y
            return v, torch.tanh(x @ self.W.T) - 0.1 * v
        return torch.tanh(y @ self.W.T) + 0.3 * torch.cos(t)

    def hook(self, name):
        def record(t0, y0, dt):
            copy = tuple(y.detach().clone() for y in y0) if isinstance(y0, tuple) else y0.detach().clone()
            self.calls.append((name, t0.detach().clone(), copy, dt.detach().clone()))
        return record

    def listen(self, *names):
        for name in names:
            setattr(self, name, self.hook(name))
        return self

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


class CachesTrajectory(nn.Module):
    """dy/dt = tanh(W y + b) on a last dimension of 64, a module that keeps its own solve's
    output (``run``): a reference cycle (module -> trajectory -> graph -> module) that the
    garbage collector must be able to free."""

    def __init__(self, gradient):
        super().__init__()
        self.gradient = gradient
        self.lin = nn.Linear(64, 64)

    def forward(self, t, y):
        return torch.tanh(self.lin(y))

    def run(self, y0):
        self.trajectory = anode.odeint(self, y0, torch.tensor([0.0, 1.0]), n_steps=3, gradient=self.gradient)
