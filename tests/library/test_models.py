"""Models: registry, shapes, parameter counts, exact gradients, BatchNorm state, ODE options.

References are independent of the code under test: parameter counts from the published
ResNet-18 figure and a hand count of the SqueezeNext reference structure; gradients from
direct autograd through the solver in float64; the ODE network with one Euler step against
its plain baseline; BatchNorm update counts from the number of function evaluations.
"""

import math

import pytest
import torch
from torch import nn

import anode
import anode.models as models
from anode._schedules import Recompute
from problems import rel_err

ODE_SMALL = ["resnet_ode_small", "sqnxt_ode_small"]
PAIRS = [("resnet_ode_small", "resnet_small"), ("sqnxt_ode_small", "sqnxt_small"),
         ("resnet18_ode", "resnet18"), ("sqnxt23_ode", "sqnxt23")]
F64_RTOL = 1e-10



def n_params(model):
    return sum(p.numel() for p in model.parameters())


def sqnxt23_count(num_classes):
    """Parameters of the ANODE reference SqNxt-23 1.0x, counted from its description."""

    def conv(cin, cout, kh, kw):
        return cin * cout * kh * kw + cout  # every convolution has a bias

    def bn(c):
        return 2 * c

    def bottleneck(cin, mid, cout):
        half = mid // 2
        shapes = [(cin, mid, 1, 1), (mid, half, 1, 1), (half, mid, 1, 3), (mid, mid, 3, 1), (mid, cout, 1, 1)]
        return sum(conv(*s) + bn(s[1]) for s in shapes)

    total = conv(3, 64, 3, 3) + bn(64)
    cin = 64
    for cout, stride in [(32, 1), (64, 2), (128, 2), (256, 2)]:
        mid = cin if stride == 2 else (cin // 4 if cin > cout else cin // 2)
        total += bottleneck(cin, mid, cout) + conv(cin, cout, 1, 1) + bn(cout)  # block + shortcut
        total += bottleneck(cout, cout // 2, cout)  # ODE function
        cin = cout
    total += conv(256, 128, 1, 1) + bn(128) + 128 * num_classes + num_classes
    return total


def test_registry_lists_all_models():
    names = models.list_models()
    for name in ["resnet18_ode", "resnet18", "resnet_ode_small", "resnet_small",
                 "sqnxt23_ode", "sqnxt23", "sqnxt_ode_small", "sqnxt_small"]:
        assert name in names
    assert models.list_models("sqnxt*") == sorted(n for n in names if n.startswith("sqnxt"))


@pytest.mark.parametrize("ode_name, base_name", PAIRS)
def test_shapes_and_parameter_counts(ode_name, base_name):
    x = torch.randn(2, 3, 32, 32)
    counts = {}
    for num_classes in (10, 100):
        for name in (ode_name, base_name):
            torch.manual_seed(0)
            model = models.create(name, num_classes=num_classes)
            assert isinstance(model, models.ResidualNetwork)
            with torch.no_grad():
                y = model(x)
            assert y.shape == (2, num_classes) and y.dtype == torch.float32
            assert torch.isfinite(y).all()
            counts[name, num_classes] = n_params(model)
            print(f"{name} num_classes={num_classes}: {counts[name, num_classes]:,} parameters")
        # the baseline differs only in how the same ODE functions are applied
        assert counts[ode_name, num_classes] == counts[base_name, num_classes]
    if ode_name == "resnet18_ode":
        assert counts[ode_name, 10] == 11_173_962  # the CIFAR ResNet-18 figure
        assert abs(counts[ode_name, 10] - 11.2e6) <= 0.02 * 11.2e6
    if ode_name == "sqnxt23_ode":
        assert counts[ode_name, 10] == sqnxt23_count(10)
        assert counts[ode_name, 100] == sqnxt23_count(100)
        assert abs(counts[ode_name, 10] - 0.46e6) <= 0.02 * 0.46e6


def test_ode_block_counts_and_order():
    model = models.create("resnet_ode_small")
    blocks = model.ode_blocks()
    assert len(blocks) == 4 and blocks == models.ode_blocks(model)
    assert [b.func.net[0].in_channels for b in blocks] == [16, 32, 64, 128]
    seen = []
    for b in blocks:
        b.register_forward_hook(lambda m, i, o: seen.append(m))
    model(torch.randn(2, 3, 16, 16))
    assert seen == blocks
    assert models.create("resnet_small").ode_blocks() == []
    opts = blocks[0].options
    assert (opts.method.name, opts.stepping, opts.gradient, blocks[0].end_time) == (
        "euler", anode.FixedGrid(n_steps=2), anode.DiscreteAdjoint(anode.Recompute()), 1.0)


@pytest.mark.parametrize("ode_name, base_name", PAIRS[:2])
def test_baseline_is_one_unit_euler_step_of_the_ode_network(ode_name, base_name):
    torch.manual_seed(1)
    ode = models.create(ode_name, method="euler", n_steps=1).double()
    base = models.create(base_name).double()
    base.load_state_dict(ode.state_dict())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert rel_err(ode(x), base(x)) <= F64_RTOL
    # two Euler steps of size 1/2 are a different network
    models.set_ode_options(ode, n_steps=2)
    assert rel_err(ode(x), base(x)) > 1e-6


def _grads(model, x, labels):
    x = x.clone().requires_grad_()
    loss = nn.functional.cross_entropy(model(x), labels)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, [x, *params])
    return grads


@pytest.mark.parametrize("schedule", ["store", "recompute"])
@pytest.mark.parametrize("name", ODE_SMALL)
def test_anode_gradients_equal_direct(name, schedule):
    torch.manual_seed(2)
    opts = dict(method="midpoint", n_steps=2)
    model = models.create(name, gradient="anode", schedule=schedule, **opts).double().train()
    ref = models.create(name, gradient="direct", **opts).double().train()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    labels = torch.tensor([3, 7])
    got, want = _grads(model, x, labels), _grads(ref, x, labels)
    assert len(got) == len(want) == 1 + len(list(model.parameters()))
    for g, w in zip(got, want):
        assert w.abs().max() > 0
        assert rel_err(g, w) <= F64_RTOL
    assert all(b.stats.backward_steps == 2 for b in model.ode_blocks())


@pytest.mark.parametrize("name", ODE_SMALL)
def test_batchnorm_state_after_one_sgd_step_matches_direct(name):
    torch.manual_seed(3)
    n_steps = 2
    model = models.create(name, method="midpoint", n_steps=n_steps).double()
    ref = models.create(name, method="midpoint", n_steps=n_steps, gradient="direct").double()
    ref.load_state_dict(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    labels = torch.tensor([0, 3])
    for m in (model, ref):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        nn.functional.cross_entropy(m(x), labels).backward()
        opt.step()
    got, want = model.state_dict(), ref.state_dict()
    for key in want:
        if key.endswith("num_batches_tracked"):
            # one update per evaluation: n_steps x 2 stages inside ODE functions, else one;
            # recomputation in the backward must not add any
            inside = ".func." in key
            assert got[key].item() == want[key].item() == (2 * n_steps if inside else 1), key
        else:
            assert not torch.equal(want[key], before[key]), key
            assert rel_err(got[key], want[key]) <= F64_RTOL, key


def test_create_errors():
    with pytest.raises(ValueError, match="resnet18_ode"):
        models.create("resnet19")
    with pytest.raises(TypeError):
        models.create(18)
    with pytest.raises(ValueError, match="no ODE options"):
        models.create("resnet_small", method="rk4")
    models.create("resnet_small", method=None, gradient=None)  # unset command-line flags
    with pytest.raises(ValueError, match="method"):
        models.create("resnet_ode_small", method="rk5")
    with pytest.raises(ValueError, match="gradient"):
        models.create("sqnxt_ode_small", gradient="adjoint")
    with pytest.raises(ValueError, match="n_steps"):
        models.create("resnet_ode_small", n_steps=0)
    with pytest.raises(ValueError, match="snapshots"):
        models.create("resnet_ode_small", snapshots=3)  # recompute takes no options
    with pytest.raises(ValueError, match="num_classes"):
        models.create("resnet_ode_small", num_classes=0)
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(lambda num_classes=10: nn.Linear(1, 1), name="resnet18")


class _EveryOther(Recompute):
    """A schedule with an option, standing in for later ones (revolve, memory budget)."""

    name = "every_other"

    def __init__(self, snapshots):
        self.snapshots = snapshots


def test_unknown_ode_options_reach_the_schedule(monkeypatch):
    monkeypatch.setitem(anode._schedules.registry._REGISTERED, "every_other", _EveryOther)
    model = models.create("resnet_ode_small", schedule="every_other", snapshots=3, step_size=0.3)
    for b in model.ode_blocks():
        assert b.options.gradient.schedule.snapshots == 3
        assert b.options.stepping == anode.FixedGrid(step_size=0.3)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(b.stats.schedule == "every_other" and b.stats.forward_steps == 4 for b in model.ode_blocks())


def test_set_ode_options(monkeypatch):
    monkeypatch.setitem(anode._schedules.registry._REGISTERED, "every_other", _EveryOther)
    model = models.create("sqnxt_ode_small", schedule="every_other", snapshots=2)
    previous = models.set_ode_options(model, gradient="direct", method="rk4", n_steps=3)
    for b in model.ode_blocks():
        o = b.options
        assert (o.gradient, o.method.name, o.stepping) == (anode.Direct(), "rk4", anode.FixedGrid(3))
    models.restore_ode_options(model, previous)
    assert all(b.options.gradient.schedule.snapshots == 2 and b.options.method.name == "euler"
               for b in model.ode_blocks())

    models.set_ode_options(model, snapshots=5)
    assert all(b.options.gradient.schedule.snapshots == 5 for b in model.ode_blocks())
    models.set_ode_options(model, schedule="store")
    assert all(b.options.gradient == anode.DiscreteAdjoint(anode.Store()) for b in model.ode_blocks())
    models.restore_ode_options(model, previous)

    with models.ode_options(model, step_size=0.5):
        assert all(b.options.stepping == anode.FixedGrid(step_size=0.5) for b in model.ode_blocks())
    assert all(b.options.stepping == anode.FixedGrid(n_steps=2) for b in model.ode_blocks())

    with pytest.raises(ValueError):
        model.set_ode_options(method="no-such-method")
    assert all(b.options.method.name == "euler" for b in model.ode_blocks())  # nothing changed
    with pytest.raises(ValueError, match="no ODE blocks"):
        models.set_ode_options(models.create("sqnxt_small"), gradient="direct")


def test_reference_initialisation():
    torch.manual_seed(4)
    sq = models.create("sqnxt23_ode")
    for m in sq.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            bound = math.sqrt(2.0) * math.sqrt(6.0 / (fan_in + fan_out))
            assert torch.count_nonzero(m.bias) == 0
            assert m.weight.abs().max() <= bound
            if m.weight.numel() >= 4096:
                assert m.weight.abs().max() > 0.95 * bound
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    rn = models.create("resnet18")
    for m in rn.modules():
        if isinstance(m, nn.Conv2d):  # PyTorch default: uniform on +-1/sqrt(fan_in)
            assert m.bias is None
            bound = 1 / math.sqrt(m.in_channels * m.kernel_size[0] * m.kernel_size[1])
            assert bound * 0.95 < m.weight.abs().max() <= bound


def test_ode_block_with_adaptive_steps_has_exact_gradients():
    torch.manual_seed(0)
    func = anode.Autonomous(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    grads = {}
    for gradient in ["anode", "direct"]:
        block = anode.ODEBlock(func, method="dopri5", rtol=1e-3, atol=1e-4, gradient=gradient)
        assert block.options.stepping == anode.Adaptive(rtol=1e-3, atol=1e-4)
        grads[gradient] = torch.autograd.grad(block(x).pow(2).sum(), [x, *func.parameters()])
    assert all(rel_err(a, b) <= F64_RTOL for a, b in zip(grads["anode"], grads["direct"]))
    same = anode.ODEBlock(func, options=anode.SolveOptions("dopri5", anode.Adaptive(1e-3, 1e-4)))
    assert same.options == anode.SolveOptions("dopri5", anode.Adaptive(1e-3, 1e-4), "anode")
    assert block.stats.forward_steps >= 2  # more than one step: the controller chose them
    with pytest.raises(ValueError, match="not both"):
        anode.ODEBlock(func, n_steps=2, rtol=1e-3)
    with pytest.raises(TypeError, match="must be an anode.SolveOptions .* not dict"):
        anode.ODEBlock(func, options={"rtol": 1e-3})


def test_models_take_tolerances_and_train_a_step():
    torch.manual_seed(0)
    model = models.create("resnet_ode_small", num_classes=3, method="dopri5", rtol=1e-2, atol=1e-3)
    assert all(b.options == anode.SolveOptions("dopri5", anode.Adaptive(rtol=1e-2, atol=1e-3))
               for b in model.ode_blocks())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 2]))
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(b.stats.forward_steps >= 1 for b in model.ode_blocks())

    # tolerances alone pick dopri5 over the default euler, which has no error estimate
    assert models.create("resnet_ode_small", atol=1e-3).ode_blocks()[0].options.method.name == "dopri5"
    with pytest.raises(ValueError, match="not both"):
        models.create("resnet_ode_small", n_steps=3, rtol=1e-3)
    with pytest.raises(ValueError, match="'euler' has none"):
        models.create("resnet_ode_small", method="euler", rtol=1e-3)


def test_set_ode_options_with_tolerances():
    model = models.create("sqnxt_ode_small")
    with pytest.raises(ValueError, match="'euler' has none"):
        models.set_ode_options(model, rtol=1e-3)
    previous = models.set_ode_options(model, method="dopri5", rtol=1e-3)
    assert all(b.options.stepping == anode.Adaptive(rtol=1e-3) for b in model.ode_blocks())
    models.set_ode_options(model, atol=1e-5)  # keeps the block's rtol
    assert all(b.options.stepping == anode.Adaptive(rtol=1e-3, atol=1e-5) for b in model.ode_blocks())
    with pytest.raises(ValueError, match="not both"):
        models.set_ode_options(model, n_steps=2, atol=1e-5)
    models.set_ode_options(model, n_steps=3)  # back to a fixed grid of the same method
    assert all(b.options.stepping == anode.FixedGrid(3) for b in model.ode_blocks())
    models.restore_ode_options(model, previous)
    assert all(b.options.stepping == anode.FixedGrid(2) for b in model.ode_blocks())


@pytest.mark.parametrize("gradient", [anode.DiscreteAdjoint(anode.Store()), anode.Direct()],
                         ids=["discrete_adjoint_store", "direct"])
def test_a_gradient_object_needs_no_schedule_left_out(gradient):
    # the default schedule ("recompute") is the discrete adjoint's default, not one the user gave
    torch.manual_seed(4)
    opts = dict(method="midpoint", n_steps=2)
    model = models.create("resnet_ode_small", gradient=gradient, **opts).double()
    assert all(b.options.gradient is gradient for b in model.ode_blocks())
    ref = models.create("resnet_ode_small", gradient="direct", **opts).double()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    labels = torch.tensor([1, 5])
    for g, w in zip(_grads(model, x, labels), _grads(ref, x, labels)):
        assert rel_err(g, w) <= F64_RTOL
    models.set_ode_options(ref, gradient=gradient)
    assert all(b.options.gradient is gradient for b in ref.ode_blocks())
    with pytest.raises(ValueError, match="a schedule was given with the gradient object"):
        models.create("resnet_ode_small", gradient=gradient, schedule="store")
    with pytest.raises(ValueError, match="a schedule was given with the gradient object"):
        models.set_ode_options(ref, gradient=gradient, schedule="store")
    # a gradient name that keeps no schedule: the default is left out, a given one raises
    block = models.create("resnet_ode_small", gradient="backsolve").ode_blocks()[0]
    assert isinstance(block.options.gradient, anode.Backsolve)
    with pytest.raises(ValueError, match="schedule='store' applies to gradient='anode' only"):
        models.create("resnet_ode_small", gradient="direct", schedule="store")
