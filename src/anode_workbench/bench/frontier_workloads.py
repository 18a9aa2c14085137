"""Workloads of ``anode bench frontier``: one ODE block, every exact method and its peers.

Three named workloads, each one block integrated over ``[0, 1]``:

* ``W1``: a CNF-like field on 2-D data (FFJORD dynamics with a Hutchinson trace,
  :class:`~anode_workbench.bench.adaptive_workloads.CNFField`, two tanh layers of width ``hidden``)
  on ``batch`` points of two moons, dopri5 at ``rtol = atol = tol``; loss: the negative
  log-likelihood.
* ``W2``: an MLP field ``dy/dt = W2 tanh(W1 y)`` (``width -> width -> width``) on a batch of
  ``[batch, width]`` states, rk4 with ``n_steps`` steps; loss: mean of squares.
* ``W3``: a convolutional field conv3x3–GroupNorm–ReLU–conv3x3 with ``channels`` channels on
  ``[batch, channels, size, size]`` states, rk4 with ``n_steps`` steps; loss: mean of squares.

Methods (``build``'s ``method``): ``direct``; ``anode`` with a ``schedule`` (``store``,
``recompute``, ``revolve`` with ``snapshots``, ``auto`` with ``budget`` bytes) and
``stagewise`` (None, True, False); ``checkpoint`` (``torch.utils.checkpoint``, non-reentrant,
around each fixed-grid step of this library's solver); ``tdq_adjoint`` (torchdiffeq
``odeint_adjoint``; with ``seminorm`` its ``adjoint_options=dict(norm="seminorm")``);
``forward`` (the solve without a graph, no backward: the F of the cost model). On the fixed
grids (W2, W3) anode's methods run as one :class:`anode.ODEBlock`, which returns the state at
``t = 1`` only, like the checkpoint loop; on W1 they run through :func:`anode.odeint`, like
torchdiffeq's.
:func:`frontier_step` is the memory target a fresh process calls, :func:`time_frontier`
the target that times all methods of a workload interleaved.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

import anode

from .adaptive_workloads import CNFField, cnf_loss, two_moons
from .measure import peak_memory, prepare, time_methods

WORKLOADS = {
    "W1": dict(batch=512, hidden=64, tol=1e-5),
    "W2": dict(batch=256, width=256, n_steps=100),
    "W3": dict(batch=32, channels=32, size=16, n_steps=20),
}
QUICK = {
    "W1": dict(batch=32, hidden=8, tol=1e-4),
    "W2": dict(batch=8, width=8, n_steps=6),
    "W3": dict(batch=2, channels=4, size=4, n_steps=4),
}
FIXED_METHOD = "rk4"


class MLPField(nn.Module):
    """``dy/dt = W2 tanh(W1 y)`` on ``[B, width]``; ``calls`` counts evaluations."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.net(y)


class ConvField(nn.Module):
    """conv3x3–GroupNorm–ReLU–conv3x3 on ``[B, C, H, W]``; ``calls`` counts evaluations."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                                 nn.GroupNorm(min(8, channels), channels), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 3, padding=1))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.net(y)


def _checkpointed_solve(func, y0: torch.Tensor, n_steps: int) -> torch.Tensor:
    """This library's rk4 steps on ``[0, 1]``, each under ``torch.utils.checkpoint``: the
    forward keeps each step's input, the backward reruns one step with a graph."""
    from torch.utils.checkpoint import checkpoint

    tableau = anode._solvers.get_tableau(FIXED_METHOD)
    h = 1.0 / n_steps
    c = torch.tensor(tableau.c, dtype=torch.float64)

    def step(y, j):
        return anode._solvers.rk_step(lambda t, s: (func(t, s[0]),), (y,), (j + c) * h, h, tableau)[0]

    y = y0
    for j in range(n_steps):
        y = checkpoint(step, y, j, use_reentrant=False)
    return y


def _solver(workload: str, method: str, schedule, snapshots, budget, stagewise, seminorm, sizes, policy):
    """``solve(func, y0) -> state at t = 1`` (a tensor or a tuple, with a graph); an ``auto``
    schedule's policy is appended to ``policy``."""
    adaptive = workload == "W1"
    t = torch.tensor([0.0, 1.0])
    if method == "tdq_adjoint":
        import torchdiffeq

        kw = dict(method="dopri5", rtol=sizes["tol"], atol=sizes["tol"]) if adaptive else dict(
            method="rk4", options=dict(step_size=1.0 / sizes["n_steps"]))
        if seminorm and adaptive:  # a fixed grid has no error norm
            kw["adjoint_options"] = dict(norm="seminorm")
        return lambda f, y0: _last(torchdiffeq.odeint_adjoint(f, y0, t, **kw))
    if method == "checkpoint":
        if adaptive:
            raise ValueError("checkpoint per step needs a fixed grid (W2, W3)")
        return lambda f, y0: _checkpointed_solve(f, y0, sizes["n_steps"])
    if method == "direct" or method == "forward":
        gradient = anode.Direct()
    elif method == "anode":
        chosen = {"store": anode.Store, "recompute": anode.Recompute,
                  "revolve": lambda: anode.Revolve(snapshots or 4),
                  "auto": lambda: anode.Auto(memory_budget=budget)}[schedule]()
        if isinstance(chosen, anode.Auto):
            policy.append(chosen)
        gradient = anode.DiscreteAdjoint(chosen, stagewise=stagewise)
    else:
        raise ValueError(f"unknown method {method!r}")
    stepping = anode.Adaptive(rtol=sizes["tol"], atol=sizes["tol"]) if adaptive else anode.FixedGrid(
        n_steps=sizes["n_steps"])
    options = anode.SolveOptions("dopri5" if adaptive else FIXED_METHOD, stepping, gradient)
    if adaptive:
        return lambda f, y0: _last(anode.odeint(f, y0, t, options=options))
    # One block as a network holds it: ODEBlock returns the state at t = 1 only, as the
    # checkpoint loop does; odeint's stacked output would add a copy of y0 and its zero gradient
    return lambda f, y0: anode.ODEBlock(f, options=options)(y0)


def _last(ys):
    return tuple(y[-1] for y in ys) if isinstance(ys, tuple) else ys[-1]


def build(workload: str, *, method: str = "direct", schedule: str | None = None, snapshots: int | None = None,
          budget: float | None = None, stagewise: bool | None = None, seminorm: bool = False,
          quick: bool = False, seed: int = 0, device: torch.device | str = "cpu"):
    """The model and one forward+backward step of a workload (see the module docstring).

    Returns:
        ``(model, step, state_bytes, policy)``; ``step()`` runs one forward+backward
        (parameter gradients set anew; for ``forward`` only the solve, without a graph) and
        returns the flat output at ``t = 1``, detached; ``policy`` the ``Auto`` of an
        ``auto`` schedule (its choice is known after a step), else None.

    Raises:
        ValueError: unknown workload or method; ``checkpoint`` on the adaptive W1.
    """
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose one of {sorted(WORKLOADS)}")
    sizes = (QUICK if quick else WORKLOADS)[workload]
    device = torch.device(device)
    torch.manual_seed(seed)
    policy: list = []
    solve = _solver(workload, method, schedule, snapshots, budget, stagewise, seminorm, sizes, policy)
    if workload == "W1":
        model = CNFField(sizes["hidden"], gain=2.5).to(device)
        gen = torch.Generator().manual_seed(seed)
        data = two_moons(sizes["batch"], gen).to(device)
        model.noise = (torch.randint(0, 2, (sizes["batch"], 2), generator=gen) * 2 - 1).float().to(device)
        y0 = (data, torch.zeros(sizes["batch"], 1, device=device))
        state_bytes = data.numel() * 4 * 3 // 2

        def loss_of(y1):
            return cnf_loss(*y1), torch.cat(y1, dim=1)
    else:
        if workload == "W2":
            model = MLPField(sizes["width"]).to(device)
            y0 = torch.randn(sizes["batch"], sizes["width"], device=device)
        else:
            model = ConvField(sizes["channels"]).to(device)
            y0 = torch.randn(sizes["batch"], sizes["channels"], sizes["size"], sizes["size"], device=device)
        state_bytes = y0.numel() * y0.element_size()

        def loss_of(y1):
            return y1.pow(2).mean(), y1

    def step():
        model.zero_grad(set_to_none=True)
        if method == "forward":
            with torch.no_grad():
                return loss_of(solve(model, y0))[1].reshape(-1)
        loss, out = loss_of(solve(model, y0))
        loss.backward()
        return out.detach().reshape(-1)

    return model, step, state_bytes, (policy[0] if policy else None)


def frontier_step(*, workload: str, device: str = "cpu", threads: int = 0, seed: int = 0,
                  save: str | None = None, keep: str | None = None, **options) -> dict:
    """Peak memory (bytes) and evaluations of one forward+backward after a warm-up, in the
    calling (fresh) process; the warm-up's output and parameter gradient (flat float32) go to
    ``save`` as ``{"output", "grad"}`` (and are copied to ``keep``).

    Returns:
        ``peak_bytes``, ``function_evaluations``, ``state_bytes``, ``grad_norm``, and for an
        ``auto`` schedule its ``choice`` (e.g. ``"revolve(30)"``, ``" stage by stage"``
        appended when it rebuilds steps one stage at a time).
    """
    dev = prepare(threads, device, seed)
    model, step, state_bytes, policy = build(workload, seed=seed, device=dev, **options)
    out = step()
    grads = [p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]
    grad = torch.cat(grads).detach() if grads else torch.zeros(0)
    if save:
        torch.save({"output": out.float().cpu(), "grad": grad.float().cpu()}, save)
        if keep:
            shutil.copyfile(save, keep)
    result = {"state_bytes": state_bytes, "grad_norm": grad.double().norm().item()}
    del out, grad, grads
    model.zero_grad(set_to_none=True)
    model.calls = 0
    result["peak_bytes"] = peak_memory(step, dev)
    result["function_evaluations"] = model.calls
    if policy is not None:
        result["choice"] = policy.choice + (" stage by stage" if policy.stagewise else "")
    return result


def time_frontier(*, methods: dict[str, dict], workload: str, device: str = "cpu", threads: int = 0,
                  seed: int = 0, repeats: int = 5, quick: bool = False) -> dict:
    """Median times (s) of the labelled methods (label → options of :func:`build`) of one
    workload, interleaved (:func:`anode_workbench.bench.measure.time_methods`)."""
    dev = prepare(threads, device, seed)

    def builder(opts):
        return lambda: build(workload, seed=seed, device=dev, quick=quick, **opts)[1]

    return time_methods({label: builder(opts) for label, opts in methods.items()}, dev, repeats)
