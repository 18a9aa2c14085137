"""Image classifiers with ODE blocks (the ANODE paper's ODE-ResNet and ODE-SqueezeNext), their
plain residual baselines, and a registry by name.

>>> import anode.models
>>> model = anode.models.create("resnet18_ode", num_classes=100, method="midpoint", n_steps=4)
>>> anode.models.list_models("sqnxt*")
['sqnxt23', 'sqnxt23_ode', 'sqnxt_ode_small', 'sqnxt_small']

See ``docs/models.md`` for every model's structure and parameter count.
"""

from . import _resnet, _resnet_tiny, _squeezenext  # noqa: F401  (registers the models)
from ._blocks import ResidualBlock, ResidualNetwork
from ._init import reference_init
from ._options import (
    DEFAULT_ODE_OPTIONS,
    check_ode_options,
    from_named_options,
    named_options,
    ode_blocks,
    ode_options,
    resolve_ode_options,
    restore_ode_options,
    set_ode_options,
)
from ._registry import create, list_models, register_model
from ._resnet import BasicBlock, ResNet
from ._squeezenext import SqueezeNext, SqueezeNextBlock, SqueezeNextODEFunc

__all__ = [
    "create",
    "list_models",
    "register_model",
    "DEFAULT_ODE_OPTIONS",
    "check_ode_options",
    "ode_blocks",
    "set_ode_options",
    "restore_ode_options",
    "ode_options",
    "from_named_options",
    "named_options",
    "resolve_ode_options",
    "ResidualBlock",
    "ResidualNetwork",
    "ResNet",
    "BasicBlock",
    "SqueezeNext",
    "SqueezeNextBlock",
    "SqueezeNextODEFunc",
    "reference_init",
]


def __getattr__(name: str):
    # the first release's name of from_named_options; remove with the deprecation
    if name == "solve_options":
        from ._options import solve_options  # warns when called
        return solve_options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
