"""The whole-step rebuild without its last operation (anode._gradients.last_operation): the
same gradient bit for bit where it skips, and no skip wherever the skipped value could be
read."""

import numpy as np
import pytest
import torch
from torch import nn

import anode
from anode._gradients import last_operation
from anode._gradients.last_operation import LastOperation

F64 = torch.float64
STORE = anode.DiscreteAdjoint(anode.Store(), stagewise=False)


def _grads(func, leaves, y0, gradient, t=None, **kw):
    """Parameter, state (and time) gradients of a loss on a solve, and its stats; ``kw`` goes
    to ``anode.odeint``."""
    y0 = y0.detach().clone().requires_grad_()
    t = torch.linspace(0, 1, 3, dtype=F64) if t is None else t
    for p in leaves:
        p.grad = None
    stats = anode.SolveStats()
    out = anode.odeint(func, y0, t, method="rk4", step_size=0.1, gradient=gradient, stats=stats, **kw)
    (out.sin() * torch.arange(out.numel(), dtype=F64).reshape(out.shape)).sum().backward()
    grads = [p.grad.clone() for p in leaves] + [y0.grad] + ([t.grad] if t.requires_grad else [])
    return grads, stats


def _mlp(last_tanh=False):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4)] + ([nn.Tanh()] if last_tanh else [])
    return nn.Sequential(*layers).double()


def _close(a, b, tol=1e-12):
    return all(torch.allclose(x, z, rtol=tol, atol=tol) for x, z in zip(a, b))


Y0 = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))


_REAL_COMPILED_ANYTHING = last_operation._compiled_anything


@pytest.fixture(autouse=True)
def _nothing_compiled(monkeypatch):
    """Other tests in the process may have compiled code, which turns the skip off."""
    monkeypatch.setattr(last_operation, "_compiled_anything", lambda: False)


def test_a_linear_last_layer_is_skipped_with_the_same_gradient_bit_for_bit(monkeypatch):
    net = _mlp()
    func = lambda t, y: net(y)  # noqa: E731
    skipped, stats = _grads(func, list(net.parameters()), Y0, STORE)
    assert stats.skipped_operations == stats.backward_steps - 1 == 9  # the first step learns
    direct, _ = _grads(func, list(net.parameters()), Y0, anode.Direct())
    assert _close(skipped, direct)
    monkeypatch.setattr(LastOperation, "usable", lambda self, *a, **k: False)
    full, stats = _grads(func, list(net.parameters()), Y0, STORE)
    assert stats.skipped_operations == 0
    assert all(torch.equal(a, b) for a, b in zip(skipped, full))


def test_a_last_operation_that_saves_its_result_is_not_skipped():
    net = _mlp(last_tanh=True)  # tanh's derivative reads its output
    func = lambda t, y: net(y)  # noqa: E731
    got, stats = _grads(func, list(net.parameters()), Y0, STORE)
    assert stats.skipped_operations == 0
    assert _close(got, _grads(func, list(net.parameters()), Y0, anode.Direct())[0])


def test_a_field_that_changes_its_operations_between_steps_is_rebuilt_in_full():
    net = _mlp()

    def func(t, y):  # early in time one more operation reads the linear layer's output
        early = float(t) < 0.35
        out = net(y)
        return torch.tanh(out) if early else out

    got, stats = _grads(func, list(net.parameters()), Y0, STORE)
    assert 0 < stats.skipped_operations < stats.backward_steps - 1  # skipped, then stopped
    assert _close(got, _grads(func, list(net.parameters()), Y0, anode.Direct())[0])


class _NumpyTanh(torch.autograd.Function):
    """tanh computed outside torch's dispatcher, saving its result."""

    @staticmethod
    def forward(ctx, x):
        y = torch.from_numpy(np.tanh(x.detach().numpy()))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


def test_work_after_the_last_operation_outside_the_dispatcher_stops_the_skip():
    net = _mlp()
    func = lambda t, y: _NumpyTanh.apply(net(y))  # noqa: E731
    params = list(net.parameters())
    got, stats = _grads(func, params, Y0, STORE, params=params)
    assert stats.skipped_operations == 0
    assert _close(got, _grads(func, params, Y0, anode.Direct())[0])


@pytest.mark.parametrize("case", ["time gradient", "tuple state", "stage by stage", "random numbers",
                                  "compiled code"])
def test_no_skip_where_the_value_could_be_read(case, monkeypatch):
    net = _mlp()
    params, t, y0, gradient = list(net.parameters()), None, Y0, STORE
    func = lambda t, y: net(y)  # noqa: E731
    if case == "time gradient":  # the step size's adjoint reads the stages' values
        t = torch.linspace(0, 1, 3, dtype=F64, requires_grad=True)
    elif case == "tuple state":
        func = lambda t, y: (net(y[0]), -y[1])  # noqa: E731
        y0 = (Y0, Y0[:, :1])
    elif case == "stage by stage":
        gradient = anode.DiscreteAdjoint(anode.Store(), stagewise=True)
    elif case == "compiled code":  # would run eagerly under the dispatch mode
        monkeypatch.setattr(last_operation, "_compiled_anything", lambda: True)
    else:
        drop = nn.Dropout(0.2)
        func = lambda t, y: net(drop(y))  # noqa: E731
    if isinstance(y0, tuple):
        y0 = tuple(y.detach().clone().requires_grad_() for y in y0)
        stats = anode.SolveStats()
        out = anode.odeint(func, y0, torch.linspace(0, 1, 3, dtype=F64), method="rk4", step_size=0.1,
                           gradient=gradient, stats=stats)
        sum(o.sum() for o in out).backward()
    else:
        torch.manual_seed(3)
        _, stats = _grads(func, params, y0, gradient, t=t)
    assert stats.backward_steps == 10 and stats.skipped_operations == 0



def test_compiled_code_in_the_process_is_noticed():
    torch.compile(lambda x: x.sin() + 1, backend="eager")(torch.randn(3))
    assert _REAL_COMPILED_ANYTHING()


class _CtxTanh(torch.autograd.Function):
    """tanh keeping its output as a ``ctx`` attribute, which autograd does not list."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx, g):
        return g * (1 - ctx.y * ctx.y)


def _hooked(out):
    if out.requires_grad:  # the hook reads the output's value in the backward
        out.register_hook(lambda g: g * (1 + out.detach() ** 2))
    return out


@pytest.mark.parametrize("case", ["custom Function keeping its output on ctx", "hook reading the output",
                                  "sparse matrix in the last operation"])
def test_no_skip_where_the_backward_may_read_the_output(case):
    net = _mlp()
    if case.startswith("custom"):
        func = lambda t, y: _CtxTanh.apply(net(y))  # noqa: E731
    elif case.startswith("hook"):
        func = lambda t, y: _hooked(net(y))  # noqa: E731
    else:
        dense = torch.rand(3, 3, generator=torch.Generator().manual_seed(2), dtype=F64) < 0.5
        a = dense.to(F64).to_sparse()
        func = lambda t, y: a @ net(y)  # noqa: E731
    params = list(net.parameters())
    got, stats = _grads(func, params, Y0, STORE, params=params)
    assert stats.skipped_operations == 0
    assert _close(got, _grads(func, params, Y0, anode.Direct())[0])


class _Field(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("last_tanh", [True, False])
def test_a_module_whose_last_operation_cannot_be_skipped_is_counted_once(last_tanh, monkeypatch):
    field = _Field(_mlp(last_tanh=last_tanh))
    counted = []

    class Counter(last_operation._Counter):
        def __enter__(self):
            counted.append(self)
            return super().__enter__()

    monkeypatch.setattr(last_operation, "_Counter", Counter)
    skipped = []
    for _ in range(2):
        _, stats = _grads(field, list(field.parameters()), Y0, STORE)
        skipped.append(stats.skipped_operations)
    # not skippable: learnt on the first backward only; skippable: learnt and checked every time
    assert (len(counted), skipped) == ((1, [0, 0]) if last_tanh else (20, [9, 9]))
