"""Reproduce the ANODE paper's training comparison (Gholami, Keutzer, Biros, IJCAI 2019, §4):
the plain residual network against the same ODE network trained with the exact discrete
adjoint (``gradient="anode"``) and with the continuous adjoint of Chen et al.
(``gradient="backsolve"``), with identical settings and seeds; per epoch, the relative error
of backsolve's gradient on a fixed batch.

* :class:`CompareSpec`, :func:`run_compare`: train (resume, skip) every run and report.
* :mod:`~anode_workbench.compare.layout`: where a comparison keeps its files.
* :func:`write_report`: curves, gradient-error plot, markdown table from the run folders.
* :func:`gradient_error_record`, :class:`GradientErrorCallback`: the per-epoch measurement.
* :data:`PRESETS`: ``cpu``, ``paper``, ``gpu-short``.

What ``anode compare`` runs; see ``docs/results.md``.
"""

from .gradient_record import GradientErrorCallback, fixed_batch, gradient_error_record, parameter_gradient
from .layout import run_folder
from .presets import PRESETS, preset
from .report import collect, markdown_table, summarize, write_report
from .runner import run_compare, run_one, run_status
from .spec import VARIANTS, CompareSpec, load_spec

__all__ = [
    "PRESETS",
    "VARIANTS",
    "CompareSpec",
    "GradientErrorCallback",
    "collect",
    "fixed_batch",
    "gradient_error_record",
    "load_spec",
    "markdown_table",
    "parameter_gradient",
    "preset",
    "run_compare",
    "run_folder",
    "run_one",
    "run_status",
    "summarize",
    "write_report",
]
