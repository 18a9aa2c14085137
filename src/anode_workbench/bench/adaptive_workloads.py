"""Workloads of ``anode bench adaptive``: adaptive dopri5 solves differentiated by every method.

Three vector fields, each integrated over ``[0, 1]`` with dopri5 at one ``rtol``/``atol``:

* ``mlp``: an MLP vector field ``dy/dt = W3 tanh(W2 tanh(W1 y))`` on a batch of states
  ``[batch, dim]``, hidden width ``hidden``; loss = mean of squares of ``y(1)``.
* ``cnf``: a continuous normalizing flow (FFJORD, Grathwohl et al., ICLR 2019) on 2-D
  points: the state is ``(z [batch, 2], delta_logp [batch, 1])``, the dynamics ``f(t, z)``
  an MLP of ``[z, t]`` with the divergence estimated by Hutchinson's trick (one fixed
  Rademacher probe per point, ``e^T (df/dz) e`` by one vector–Jacobian product); loss =
  negative log-likelihood of the data under a standard normal base density. It builds the
  graph of its vector–Jacobian product (``create_graph``) only when grad mode is on outside.
* ``ffjord``: the same flow with the divergence always taken with ``create_graph=True``
  and the outputs returned with their graph, as FFJORD's ``ODEfunc`` does whatever the grad
  mode outside: a graph-free forward then gets each evaluation's graph back, and must drop
  it (anode detaches the outputs of its graph-free evaluations).

Each is solved by this library (``direct``, ``anode`` with a schedule) or by torchdiffeq
(``odeint``, ``odeint_adjoint``) at the same tolerances. :func:`adaptive_step` is the target
that a fresh process (:mod:`anode_workbench.bench.isolation`) calls for peak memory,
:func:`time_adaptive` the one that times all methods interleaved.
"""

from __future__ import annotations

import math
import shutil

import torch
from torch import nn

import anode

from .measure import peak_memory, prepare, time_methods

FIELDS = ("mlp", "cnf", "ffjord")
SOLVERS = ("dopri5", "explicit_adams", "implicit_adams")
"""dopri5 with adaptive steps (the default), or an Adams method on a fixed grid of ``step_size``."""


def _init(net: nn.Sequential, gain: float) -> None:
    # PyTorch's default initialisation gives a nearly linear field that dopri5 crosses in a
    # few steps; weights of variance gain**2 / fan_in make it rich enough to need tens, as a
    # trained field does.
    with torch.no_grad():
        for layer in net[::2]:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))


class MLPField(nn.Module):
    """``dy/dt = MLP(y)``, two tanh hidden layers of width ``hidden``; ``y`` is ``[B, dim]``.

    ``calls`` counts evaluations (forward, and those a backward makes)."""

    def __init__(self, dim: int, hidden: int, gain: float = 3.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, dim))
        _init(self.net, gain)
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(y)


class CNFField(nn.Module):
    """FFJORD dynamics with a Hutchinson trace estimate, on the state ``(z, delta_logp)``.

    ``d z/dt = f(t, z)`` and ``d delta_logp/dt = -tr(df/dz)``, the trace estimated as
    ``e^T (df/dz) e`` with the probe ``self.noise`` (``[B, 2]``, set by the caller and held
    fixed through a solve, so that every replay of a step sees the same estimator).

    The vector–Jacobian product needs a graph of ``f`` even in a graph-free forward sweep
    (anode's forward, torchdiffeq's adjoint forward), hence ``enable_grad``; the graph of the
    product itself (``create_graph``) only when an outer backward will differentiate it,
    unless ``always_graph`` (FFJORD's way): then always, and the outputs keep their graph.
    """

    def __init__(self, hidden: int, gain: float = 1.0, always_graph: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2))
        _init(self.net, gain)
        self.noise: torch.Tensor | None = None
        self.calls = 0
        self.always_graph = always_graph

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        self.calls += 1
        z = state[0]
        outer = torch.is_grad_enabled() or self.always_graph
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            tz = torch.cat([z, t.to(z).expand(z.shape[0], 1)], dim=1)
            dz = self.net(tz)
            vjp = torch.autograd.grad(dz, z, self.noise, create_graph=outer)[0]
            div = (vjp * self.noise).sum(dim=1, keepdim=True)
        return (dz, -div) if outer else (dz.detach(), -div.detach())


def cnf_loss(z1: torch.Tensor, delta_logp1: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (nats per point) of the data whose flow ends at ``z1`` with
    log-density change ``delta_logp1``: ``-(log N(z1; 0, I) - delta_logp1)``, averaged."""
    logp_base = -0.5 * z1.pow(2).sum(dim=1) - math.log(2 * math.pi)
    return -(logp_base - delta_logp1.squeeze(1)).mean()


def two_moons(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points ``[n, 2]`` of two interleaved half circles with Gaussian noise (0.1),
    scaled to about unit variance."""
    upper = torch.rand(n, generator=generator) < 0.5
    angle = torch.rand(n, generator=generator) * math.pi
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    pts = torch.stack([x, y], dim=1) + 0.1 * torch.randn(n, 2, generator=generator)
    return (pts - torch.tensor([0.5, 0.25])) * 2.0


def _solver(library: str, gradient: str, schedule: str | None, snapshots: int | None, rtol: float,
            atol: float, solver: str = "dopri5", step_size: float | None = None,
            max_order: int | None = None):
    """``solve(func, y0, t)`` for a method; returns ``(solution, stats or None)``."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if (solver == "dopri5") != (step_size is None) or (solver == "dopri5" and max_order is not None):
        raise ValueError("step_size (and max_order) go with an Adams solver, and only with one")
    extra = {} if step_size is None else {"options": {"step_size": step_size}}
    if max_order is not None:
        extra["options"]["max_order"] = max_order
    if library == "torchdiffeq":
        import torchdiffeq

        fn = torchdiffeq.odeint_adjoint if gradient == "adjoint" else torchdiffeq.odeint
        return lambda func, y0, t: (fn(func, y0, t, method=solver, rtol=rtol, atol=atol, **extra), None)
    if gradient == "direct":
        method = anode.Direct()
    else:
        method = anode.DiscreteAdjoint({"store": anode.Store(), "recompute": anode.Recompute(),
                              "revolve": anode.Revolve(snapshots or 4)}[schedule or "recompute"])
    if solver == "dopri5":
        options = anode.SolveOptions("dopri5", anode.Adaptive(rtol=rtol, atol=atol), method)
    else:  # the corrector's tolerances, as torchdiffeq's
        adams = anode.Adams(implicit=solver == "implicit_adams", rtol=rtol, atol=atol,
                            max_order=max_order or anode.Adams.max_order)
        options = anode.SolveOptions(adams, anode.FixedGrid(step_size=step_size), method)

    def solve(func, y0, t):
        stats = anode.SolveStats()
        return anode.odeint(func, y0, t, options=options, stats=stats), stats

    return solve


def build(field: str, *, library: str = "anode", gradient: str = "direct", schedule: str | None = None,
          snapshots: int | None = None, rtol: float = 1e-5, atol: float = 1e-7, batch: int = 2048,
          hidden: int = 256, dim: int = 32, seed: int = 0, device: torch.device | str = "cpu",
          solver: str = "dopri5", step_size: float | None = None, max_order: int | None = None):
    """The model and one forward+backward step of a workload.

    Args:
        field: ``"mlp"``, ``"cnf"`` or ``"ffjord"`` (see the module docstring; ``dim`` is
            ignored by the flows).
        library, gradient, schedule, snapshots: ``"anode"`` with ``gradient`` ``"direct"`` or
            ``"anode"`` and a ``schedule`` (``store``, ``recompute``, ``revolve`` with
            ``snapshots``); or ``"torchdiffeq"`` with ``gradient`` ``"direct"`` (``odeint``)
            or ``"adjoint"`` (``odeint_adjoint``).
        rtol, atol: dopri5's tolerances (implicit_adams': its corrector's), the same for every
            method.
        solver, step_size, max_order: :data:`SOLVERS`; an Adams method steps on a fixed grid
            of ``step_size`` (time units) with its ``max_order`` (None: 12); dopri5 takes
            neither.
        batch, hidden, dim, seed, device: the sizes; the seed fixes weights, data and probe,
            the same for every method.

    Returns:
        ``(model, step, state_bytes)``: ``step(backward=True)`` runs one forward+backward
        (parameter gradients set anew; only the forward and the loss when ``backward`` is
        False) and returns ``(output, stats)``, ``output`` the flat state at ``t = 1``
        (detached) and ``stats`` the :class:`anode.SolveStats` (None for torchdiffeq);
        ``state_bytes`` the size of one state.

    Raises:
        ValueError: unknown field or solver; ``step_size`` with dopri5 or missing for Adams.
    """
    if field not in FIELDS:
        raise ValueError(f"unknown field {field!r}; choose one of {FIELDS}")
    device = torch.device(device)
    torch.manual_seed(seed)
    solve = _solver(library, gradient, schedule, snapshots, rtol, atol, solver, step_size, max_order)
    t = torch.tensor([0.0, 1.0], device=device)
    if field == "mlp":
        model = MLPField(dim, hidden).to(device)
        y0 = torch.randn(batch, dim, device=device)

        def loss_of(y1):
            return y1.pow(2).mean(), y1

        state_bytes = y0.numel() * y0.element_size()
    else:
        model = CNFField(hidden, gain=2.5, always_graph=field == "ffjord").to(device)
        gen = torch.Generator().manual_seed(seed)
        data = two_moons(batch, gen).to(device)
        model.noise = (torch.randint(0, 2, (batch, 2), generator=gen) * 2 - 1).float().to(device)
        y0 = (data, torch.zeros(batch, 1, device=device))

        def loss_of(y1):
            z1, dlogp1 = y1
            return cnf_loss(z1, dlogp1), torch.cat([z1, dlogp1], dim=1)

        state_bytes = data.numel() * 4 * 3 // 2

    def step(backward: bool = True):
        model.zero_grad(set_to_none=True)
        ys, stats = solve(model, y0, t)
        last = tuple(y[-1] for y in ys) if isinstance(ys, tuple) else ys[-1]
        loss, out = loss_of(last)
        if backward:
            loss.backward()
        return out.detach().reshape(-1), stats

    return model, step, state_bytes


def adaptive_step(*, field: str, device: str = "cpu", threads: int = 0, seed: int = 0,
                  save: str | None = None, keep: str | None = None, measure: str = "memory",
                  forward_only: bool = False, **options) -> dict:
    """Peak memory (bytes) and work of one forward+backward of a workload (see :func:`build`),
    or of its forward alone (``forward_only``: the solve and the loss, with grad enabled).

    A warm-up step first (one-time allocations are not the method's); its output and
    parameter gradient (flat float32) are saved to ``save`` as ``{"output", "grad"}`` and, when
    ``keep`` is given, copied there too (the benchmark compares every method with two
    references, :class:`anode_workbench.bench.sweep.Sweep` only with the first).

    Returns:
        ``peak_bytes``, ``function_evaluations`` (calls of the vector field in one
        forward+backward), ``accepted_steps`` and ``rejected_steps`` (this library's solves;
        torchdiffeq does not report them), ``state_bytes``, ``grad_norm``, ``parameters``.

    Raises:
        ValueError: ``measure`` other than ``"memory"`` (the benchmark times elsewhere).
    """
    if measure != "memory":
        raise ValueError(f"adaptive_step measures memory only, not {measure!r}")
    dev = prepare(threads, device, seed)
    model, step, state_bytes = build(field, seed=seed, device=dev, **options)
    out, _ = step()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).detach()
    if save:
        torch.save({"output": out.float().cpu(), "grad": grad.float().cpu()}, save)
        if keep:
            shutil.copyfile(save, keep)
    result = {"state_bytes": state_bytes, "grad_norm": grad.double().norm().item(),
              "parameters": grad.numel()}
    del out, grad
    model.zero_grad(set_to_none=True)
    model.calls = 0
    box = {}

    def measured():
        box["stats"] = step(backward=not forward_only)[1]

    result["peak_bytes"] = peak_memory(measured, dev)
    result["function_evaluations"] = model.calls
    stats = box["stats"]
    if stats is not None:
        result["accepted_steps"] = stats.forward_steps
        result["rejected_steps"] = stats.rejected_steps
    return result


def time_adaptive(*, methods: dict[str, dict], field: str, device: str = "cpu", threads: int = 0,
                  seed: int = 0, repeats: int = 3, **options) -> dict:
    """Median times (s) of forward+backward of several methods of one workload, interleaved
    (:func:`anode_workbench.bench.measure.time_methods`); ``methods``: label → options of :func:`build`.

    Returns:
        label → ``{"seconds", "cpu_seconds"}`` or ``{"error": message}``.
    """
    dev = prepare(threads, device, seed)

    def builder(opts):
        def make():
            step = build(field, seed=seed, device=dev, **options, **opts)[1]
            return lambda: step()

        return make

    return time_methods({label: builder(opts) for label, opts in methods.items()}, dev, repeats)
