"""What a stack of L ODE blocks keeps between forward and backward, counted exactly.

Every tensor autograd keeps for the backward passes through the saved-tensor pack hook
(anode's kept states included), so the distinct storages seen there are exactly what is
held between forward and backward. No timing, no allocator noise.
"""

import weakref

import pytest
import torch
from torch import nn

import anode


def saved_activation_bytes(model, x):
    """Bytes of distinct storages saved for backward that are not parameters or buffers."""
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    own |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in own and t.numel() > 64:  # ignore time grids and scalars
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    return sum(storages.values()), y


def stack(L, n_steps, gradient, schedule="recompute"):
    torch.manual_seed(0)
    return nn.Sequential(*[
        anode.ODEBlock(anode.ConvODEFunc(4), method="rk4", n_steps=n_steps,
                       gradient=(anode.DiscreteAdjoint(anode.SCHEDULES[schedule]()) if gradient == "anode"
                                 else gradient))
        for _ in range(L)
    ])


@pytest.mark.parametrize("L", [1, 3])
def test_recompute_keeps_block_inputs_only_independent_of_steps(L):
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    state = x.numel() * x.element_size()
    for n_steps in [1, 4, 16]:
        model = stack(L, n_steps, "anode")
        kept, y = saved_activation_bytes(model, x)
        # the L block inputs; outputs are not saved (the backward does not read them)
        assert kept == L * state, (n_steps, kept / state)
        y.sum().backward()  # and the gradient still flows


def test_store_keeps_one_state_per_step_and_direct_keeps_all_stages():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    state = x.numel() * x.element_size()
    for n_steps in [2, 8]:
        store, _ = saved_activation_bytes(stack(2, n_steps, "anode", "store"), x)
        assert store == 2 * n_steps * state  # N_t states per block, the block input included
        direct, _ = saved_activation_bytes(stack(2, n_steps, "direct"), x)
        # rk4: 4 stages x (conv, BN, ReLU activations) per step, growing with N_t
        assert direct > 4 * 2 * n_steps * state


def test_a_rebuilt_steps_product_runs_without_the_outputs_values():
    # the whole-step backward hands autograd the graph edges of the rebuilt y_{j+1}
    # (anode._gradients.closures.graph_ends), so that its values are free during the product
    from anode._gradients.closures import _grad_takes_edges, graph_ends

    x = torch.randn(6, requires_grad=True)
    y = torch.sin(x) + 1.0  # the sum saves nothing: only the caller holds y's values
    gone = weakref.ref(y)
    ends = graph_ends([y])
    del y
    if _grad_takes_edges():
        assert gone() is None
    g = torch.randn(6)
    (grad,) = torch.autograd.grad(ends, [x], [g])
    torch.testing.assert_close(grad, torch.cos(x.detach()) * g)
