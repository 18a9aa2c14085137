"""Time stepping and the solve loops, below the gradient methods (which step through them)
and above the solver step (:func:`~anode._solvers.rk_step`, :meth:`~anode._adams.Adams.step`).

* :mod:`.grid`: :class:`~.grid.TimeGrid`, the steps of a solve between its output times,
  which every backward replays.
* :mod:`.fixed_grid`: :class:`~.fixed_grid.FixedGrid`, equal steps (or a constructed grid)
  fixed before the solve.
* :mod:`.controller`: :class:`~.controller.Adaptive`, the step-size controller on an
  embedded error estimate: its options, error norms and initial step.
* :mod:`.adaptive`: the adaptive stepping loop, which records the accepted steps as a grid.
* :mod:`.loops`: the solve loops over a grid, Runge–Kutta and Adams: the forward solve
  (one entry for both kinds of method), the plain (direct) solve, one step with its dense
  output, the graph-free forward sweeps, the adaptive reverse solve of backsolve.
* :mod:`.until`: steps without an end time until a condition holds (the event search).

Nothing here imports a gradient method. The package imports none of its modules, so
that the problem record (:mod:`anode._ivp`) can import the grid and the controller.
"""
