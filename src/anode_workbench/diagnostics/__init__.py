"""How far the continuous adjoint (backsolve) is from the gradient of the network that was run.

* :mod:`~anode_workbench.diagnostics.errors`: the measurements: :func:`round_trip` and
  :func:`reconstruction_error` (the reverse solve's recovered initial state),
  :func:`gradient_error` / :func:`gradient_errors` (a gradient method against direct
  autograd through the solver), :func:`sweep` (both over step counts).
* :mod:`~anode_workbench.diagnostics.cases`: the ODE functions and initial states ``anode diagnose``
  measures, synthetic or from a trained model's checkpoint.
* :mod:`~anode_workbench.diagnostics.report`: its table, CSV and plots.
"""

from .cases import Case, checkpoint_cases, load_images, synthetic_cases
from .errors import (
    GradientError,
    SweepRow,
    gradient_error,
    gradient_errors,
    preserved,
    reconstruction_error,
    relative_error,
    round_trip,
    sweep,
)

__all__ = [
    "Case",
    "GradientError",
    "SweepRow",
    "checkpoint_cases",
    "gradient_error",
    "gradient_errors",
    "load_images",
    "preserved",
    "reconstruction_error",
    "relative_error",
    "round_trip",
    "sweep",
    "synthetic_cases",
]
