"""Recomputation replays the forward exactly and leaves no side effects.

BatchNorm buffers, dropout masks and the global RNG, autocast, train/eval mode, and
in-place changes between forward and backward, each compared with direct autograd.
"""

import copy

import pytest
import torch
from torch import nn

import anode
from problems import AutocastProbe, ConvDropoutFunc

SCHEDULES = ["recompute", "store"]


def make_pair(func_factory, gradient, schedule, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    if gradient == "anode":
        gradient = anode.DiscreteAdjoint(anode.SCHEDULES[schedule]())
    block = anode.ODEBlock(func_factory(), method="midpoint", n_steps=3, gradient=gradient,
                           **kw).to(dtype)
    return block


def input_batch(dtype=torch.float64):
    return torch.randn(4, 3, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_batchnorm_buffers_and_weights_after_training_step_equal_direct(schedule):
    results = {}
    for gradient in ["direct", "anode"]:
        block = make_pair(lambda: anode.ConvODEFunc(3), gradient, schedule)
        opt = torch.optim.SGD(block.parameters(), lr=0.1)
        x = input_batch().requires_grad_()
        block(x).square().mean().backward()
        opt.step()
        results[gradient] = (copy.deepcopy(block.state_dict()), x.grad)
    ref_state, ref_grad = results["direct"]
    state, grad = results["anode"]
    assert torch.allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)
    for key, value in ref_state.items():
        if value.is_floating_point():
            assert torch.allclose(state[key], value, rtol=1e-12, atol=1e-15), key
        else:
            assert torch.equal(state[key], value), key  # num_batches_tracked


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dropout_replays_masks_and_leaves_rng_as_direct(schedule):
    results = {}
    for gradient in ["direct", "anode"]:
        block = make_pair(ConvDropoutFunc, gradient, schedule)
        x = input_batch().requires_grad_()
        torch.manual_seed(123)
        y = block(x)
        y.square().sum().backward()
        after = torch.get_rng_state()
        results[gradient] = ([x.grad] + [p.grad for p in block.parameters()], after,
                             torch.rand(3))
    (ref_grads, ref_rng, ref_next), (grads, rng, nxt) = results["direct"], results["anode"]
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert torch.equal(rng, ref_rng)
    assert torch.equal(nxt, ref_next)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_mode_at_forward_time_is_used_in_backward(schedule):
    results = {}
    for gradient in ["direct", "anode"]:
        block = make_pair(lambda: anode.ConvODEFunc(3), gradient, schedule)
        block.train()
        x = input_batch().requires_grad_()
        y = block(x)
        block.eval()  # switched between forward and backward
        y.square().sum().backward()
        assert not any(m.training for m in block.modules())  # the user's choice stands
        results[gradient] = [x.grad] + [p.grad for p in block.parameters()]
    for a, b in zip(results["anode"], results["direct"], strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_eval_mode_buffers_at_forward_time_are_used(schedule):
    """Running statistics changed between forward and backward do not change the gradient."""
    results = {}
    for gradient in ["direct", "anode"]:
        block = make_pair(lambda: anode.ConvODEFunc(3), gradient, schedule).eval()
        x = input_batch().requires_grad_()
        y = block(x)
        with torch.no_grad():
            for m in block.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.add_(0.5)
                    m.running_var.mul_(2.0)
        if gradient == "direct":
            # direct saved the old statistics; autograd refuses the changed buffers
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                y.square().sum().backward()
            block = make_pair(lambda: anode.ConvODEFunc(3), gradient, schedule).eval()
            x = input_batch().requires_grad_()
            block(x).square().sum().backward()
        else:
            y.square().sum().backward()
            # buffers as the user left them
            bn = next(m for m in block.modules() if isinstance(m, nn.BatchNorm2d))
            assert torch.allclose(bn.running_var, torch.full_like(bn.running_var, 2.0))
        results[gradient] = [x.grad] + [p.grad for p in block.parameters()]
    for a, b in zip(results["anode"], results["direct"], strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def rel_norm(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_autocast_state_of_the_forward_is_used_in_backward(schedule):
    """bfloat16 autocast on CPU: every recomputed call runs under autocast, as in the forward,
    and the gradient matches direct autograd under autocast to bfloat16 rounding."""
    results = {}
    for gradient in ["direct", "anode"]:
        block = make_pair(lambda: AutocastProbe(3), gradient, schedule, dtype=torch.float32)
        x = input_batch(torch.float32).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x)
        assert y.dtype == torch.float32  # the state stays in full precision
        y.square().sum().backward()  # backward outside autocast
        results[gradient] = [x.grad] + [p.grad for p in block.parameters()]
        assert all(block.func.seen) and len(block.func.seen) > (6 if gradient == "anode" else 5)
    for a, b in zip(results["anode"], results["direct"], strict=True):
        assert rel_norm(a, b) <= 2e-2


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("target", ["input", "output"])
def test_inplace_change_between_forward_and_backward_raises(schedule, target):
    block = make_pair(lambda: anode.ConvODEFunc(3), "anode", schedule)
    x = input_batch().requires_grad_()
    z = x * 1.0  # non-leaf input that can be changed in place
    y = block(z)
    loss = y.square().sum()
    (z if target == "input" else y).mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
