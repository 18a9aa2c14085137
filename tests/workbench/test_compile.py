"""torch.compile (anode_workbench.accel.compile_model): every gradient method of a compiled network
equals the eager computation, anode's recomputation replaying the compiled forward exactly.

Most tests use the ``aot_eager`` backend (Dynamo and AOTAutograd trace the ODE function
and the network, as with inductor, but no code is generated: seconds instead of half a
minute per network); one slow test uses inductor.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import anode
from anode._nn import ConvODEFunc, ODEBlock
from anode_workbench.accel import compile_model
from problems import rel_err

F64_RTOL = 1e-10


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _net(seed: int = 0, **ode) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        ODEBlock(ConvODEFunc(4), **ode),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    ).double()


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=g)
    return x, torch.randint(0, 10, (4,), generator=g)


def _step(call: nn.Module, model: nn.Module):
    """Loss, gradients (input and parameters) and BatchNorm running statistics after one
    training-mode forward and backward."""
    x, y = _batch()
    x.requires_grad_()
    model.train()
    loss = nn.functional.cross_entropy(call(x), y)
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return loss.detach(), grads, [b.clone() for b in model.buffers()]


def _assert_close(got, ref, rtol=F64_RTOL):
    (loss, grads, buffers), (loss_ref, grads_ref, buffers_ref) = got, ref
    assert rel_err(loss, loss_ref) <= rtol
    for a, b in zip(grads, grads_ref, strict=True):
        assert rel_err(a, b) <= rtol
    for a, b in zip(buffers, buffers_ref, strict=True):
        assert rel_err(a.double(), b.double()) <= rtol


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("euler", dict(gradient="anode")),
        ("euler", dict(gradient=anode.DiscreteAdjoint(anode.Store()))),
        ("euler", dict(gradient=anode.DiscreteAdjoint(anode.Revolve(1)))),
        ("euler", dict(gradient="direct")),
        ("rk4", dict(gradient="anode")),
    ],
    ids=["recompute", "store", "revolve", "direct", "rk4-recompute"],
)
def test_compiled_exact_gradients_equal_eager_direct(method, options, caplog):
    ref = _step(*[_net(method=method, n_steps=3, gradient="direct")] * 2)
    model = _net(method=method, n_steps=3, **options)
    compiled = compile_model(model, backend="aot_eager")
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
        _step(compiled, model)  # the first call compiles; the second must reuse the graphs
        model.load_state_dict(_net(method=method, n_steps=3).state_dict())
        got = _step(compiled, model)
    _assert_close(got, ref)
    assert "recompile_limit" not in caplog.text and "cache_size_limit" not in caplog.text


def test_compiled_backsolve_equals_eager_backsolve():
    ref = _step(*[_net(n_steps=2, gradient="backsolve")] * 2)
    model = _net(n_steps=2, gradient="backsolve")
    got = _step(compile_model(model, backend="aot_eager"), model)
    _assert_close(got, ref)


def test_every_evaluation_of_the_ode_function_runs_compiled():
    calls = []

    def counting(gm, example_inputs):
        def run(*args):
            calls.append(torch.is_grad_enabled())
            return gm.forward(*args)
        return run

    model = _net(method="euler", n_steps=2, gradient="anode")
    compile_model(model, backend=counting)
    _step(model, model)  # the bare model: only the ODE function is compiled
    stats = model[1].stats
    # all but the first, which finds the tensors the function reaches, and runs eagerly
    assert len(calls) == stats.function_evaluations - 1 == 4
    # the backward's steps are differentiated through the compiled graph
    assert calls.count(True) >= stats.backward_steps == 2


@pytest.mark.slow
def test_inductor_compiled_anode_equals_eager_direct():
    ref = _step(*[_net(n_steps=2, gradient="direct")] * 2)
    model = _net(n_steps=2, gradient="anode")
    got = _step(compile_model(model), model)
    _assert_close(got, ref)
