"""Execution settings (anode_workbench.accel): device defaults, bad input, memory format, autocast."""

import pytest
import torch

from anode_workbench.accel import Acceleration


def test_device_defaults():
    cpu = Acceleration.for_device("cpu")
    assert (cpu.precision, cpu.channels_last, cpu.compile, cpu.deterministic) == ("fp32", False, False, False)
    cuda = Acceleration.for_device("cuda")
    assert (cuda.precision, cuda.channels_last) == ("bf16", True)
    assert Acceleration.for_device("cuda", precision="fp32", channels_last=False) == Acceleration()


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="fp16"):
        Acceleration(precision="fp16")


def test_channels_last_input_and_model():
    acc = Acceleration(channels_last=True)
    x = acc.prepare_input(torch.randn(2, 3, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last)
    conv = acc.prepare_model(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert acc.prepare_input(torch.randn(2, 3)).shape == (2, 3)


def test_bf16_autocast_on_cpu():
    lin = torch.nn.Linear(4, 4)
    with Acceleration(precision="bf16").autocast("cpu"):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with Acceleration().autocast("cpu"):
        assert lin(torch.randn(2, 4)).dtype == torch.float32


def test_backend_flags_are_set_and_restored():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    restore = Acceleration(deterministic=True).configure_backends("cpu")
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.allow_tf32
    restore()
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before


def test_optimizer_options_per_device():
    assert Acceleration().optimizer_options("cpu") == {}
    cuda = Acceleration.for_device("cuda").optimizer_options("cuda")
    assert cuda in ({"fused": True}, {"foreach": True})


def _conv_ode_net(method="euler", **ode):
    from anode._nn import ConvODEFunc, ODEBlock

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        ODEBlock(ConvODEFunc(8), method=method, n_steps=3, **ode),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("schedule", ["recompute", "store", "revolve"])
def test_deterministic_anode_gradient_is_bit_identical_to_direct(schedule, method):
    # The stage-by-stage backward adds every stage's terms in the order autograd through the
    # whole solve does (docs/gpu.md); rebuilding whole steps (the default without a memory
    # budget) groups them by step, exact only to rounding.
    import anode

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    restore = Acceleration(deterministic=True).configure_backends("cpu")
    sched = anode._schedules.get_schedule(schedule, **(dict(snapshots=1) if schedule == "revolve" else {}))
    try:
        grads = []
        for opts in (dict(gradient="direct"), dict(gradient=anode.DiscreteAdjoint(sched, stagewise=True))):
            net = _conv_ode_net(method, **opts)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            grads.append([p.grad for p in net.parameters()])
    finally:
        restore()
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_bf16_step_keeps_loss_and_optimizer_state_in_float32():
    acc = Acceleration(precision="bf16")
    net = _conv_ode_net(gradient="anode")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, **acc.optimizer_options("cpu"))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    with acc.autocast("cpu"):
        logits = net(acc.prepare_input(x))
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    opt.step()
    for p in net.parameters():
        assert p.dtype == p.grad.dtype == opt.state[p]["momentum_buffer"].dtype == torch.float32


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_bf16_anode_gradient_differs_from_direct_only_by_autocasts_weight_cache(method):
    # Stage by stage, anode adds the terms in direct's order (see the test above).
    # Autocast keeps one bfloat16 copy of each weight for a whole forward with a graph, so
    # direct sums the steps' weight gradients in bfloat16; anode differentiates one step at
    # a time and sums them in float32. Without the cache both sum in float32: equal bits.
    import anode
    from anode._nn import ConvODEFunc, ODEBlock

    torch.manual_seed(0)
    func = ConvODEFunc(8)
    x = torch.randn(2, 8, 8, 8)
    grads = {}
    for cache in (True, False):
        for gradient in ("direct", anode.DiscreteAdjoint(stagewise=True)):
            func.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache):
                out = ODEBlock(func, method=method, n_steps=2, gradient=gradient)(x)
            out.square().sum().backward()
            grads[cache, str(gradient).split("(")[0]] = [p.grad.clone() for p in func.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(grads[False, "direct"], grads[False, "DiscreteAdjoint"]))
    assert not all(torch.equal(a, b) for a, b in zip(grads[True, "direct"], grads[True, "DiscreteAdjoint"]))
