"""The targets of the memory and speed sweep, and the growth of memory with N_t and L.

Targets (at N_t = 16, L = 4, the same Runge–Kutta method and grid for every method):

* memory: ``anode/recompute`` peak <= 1.2x torchdiffeq ``odeint_adjoint``'s and <= 0.25x
  ``direct``'s; under glibc's default allocator (CPU) at most ``odeint_adjoint``'s; its
  growth with N_t about one state per step and with L about one state per block ("about":
  within 25 %);
* time: ``anode/store`` <= 1.05x and ``anode/recompute`` <= 1.3x torchdiffeq
  ``odeint_adjoint``'s; ``direct`` <= 1.1x torchdiffeq ``odeint``'s.

Growth is the least-squares slope of the peak (in states of ``[B, C, H, W]``) against N_t at
the fixed L of the N_t sweep, and against L at the fixed N_t of the L sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

from .suite import TDQ_ADJOINT, TDQ_ODEINT

TARGET_STEPS, TARGET_LAYERS = 16, 4


@dataclass
class Target:
    """One target: ``measured`` (a ratio or a slope) against ``low <= measured <= high``.

    ``measured`` is ``None`` (and ``met`` too) when the sweep lacks the configurations;
    ``unjudged`` says why a measured value is not judged (``met`` is then ``None``).
    """

    name: str
    measured: float | None
    low: float
    high: float
    where: str
    unjudged: str | None = None

    @property
    def met(self) -> bool | None:
        """Whether the measured value is within the bounds; ``None`` when not measured or
        not judged."""
        if self.measured is None or self.unjudged:
            return None
        return self.low <= self.measured <= self.high

    @property
    def bound(self) -> str:
        """The bounds as text, e.g. ``"<= 1.2"`` or ``"0.75 to 1.25"``."""
        return f"<= {self.high:g}" if self.low == float("-inf") else f"{self.low:g} to {self.high:g}"


def _measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "error" not in r]


def _find(rows, method, n_steps, layers):
    for r in rows:
        if r["method"] == method and r["n_steps"] == n_steps and r["layers"] == layers:
            return r
    return None


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def sweep_axes(rows: list[dict]) -> tuple[int | None, int | None]:
    """``(L of the N_t sweep, N_t of the L sweep)``: the fixed value with the most distinct
    values of the other axis (ties: the larger, so that L = 4 and N_t = 16 win in a full
    grid that has them)."""
    rows = _measured(rows)

    def best(fixed_key, other_key):
        counts = {}
        for r in rows:
            counts.setdefault(r[fixed_key], set()).add(r[other_key])
        if not counts:
            return None
        preferred = TARGET_LAYERS if fixed_key == "layers" else TARGET_STEPS
        return max(counts, key=lambda k: (len(counts[k]), k == preferred, k))

    return best("layers", "n_steps"), best("n_steps", "layers")


def growth(rows: list[dict], method: str) -> tuple[float | None, float | None]:
    """``(states per step, states per block)``: slopes of ``method``'s peak in states
    against N_t (at the N_t sweep's L) and against L (at the L sweep's N_t)."""
    rows = [r for r in _measured(rows) if r["method"] == method]
    l_fixed, n_fixed = sweep_axes(rows)
    per_step = _slope([(r["n_steps"], r["peak_states"]) for r in rows if r["layers"] == l_fixed])
    per_block = _slope([(r["layers"], r["peak_states"]) for r in rows if r["n_steps"] == n_fixed])
    return per_step, per_block


def evaluate(rows: list[dict], quick: bool = False) -> list[Target]:
    """The targets of the module docstring, measured from one sweep's rows.

    With ``quick`` (the sizes of ``anode bench --quick``: states of a few KiB, below the
    resolution of resident-size memory figures, and too few steps and blocks for the target
    configuration) no target is judged.
    """
    rows = _measured(rows)
    at = {m: _find(rows, m, TARGET_STEPS, TARGET_LAYERS)
          for m in ("direct", "anode/store", "anode/recompute", TDQ_ADJOINT, TDQ_ODEINT)}
    where = f"N_t = {TARGET_STEPS}, L = {TARGET_LAYERS}"

    def ratio(a, b, key):
        ok = at[a] and at[b] and key in at[a] and at[b].get(key, 0) > 0
        return at[a][key] / at[b][key] if ok else None

    inf = float("-inf")
    per_step, per_block = growth(rows, "anode/recompute")
    l_fixed, n_fixed = sweep_axes(rows)
    found = [
        Target("memory: anode/recompute / torchdiffeq odeint_adjoint",
               ratio("anode/recompute", TDQ_ADJOINT, "peak_bytes"), inf, 1.2, where),
        Target("memory, default malloc: anode/recompute / torchdiffeq odeint_adjoint",
               ratio("anode/recompute", TDQ_ADJOINT, "peak_default_bytes"), inf, 1.0, where),
        Target("memory: anode/recompute / direct",
               ratio("anode/recompute", "direct", "peak_bytes"), inf, 0.25, where),
        Target("memory growth of anode/recompute with N_t (states per step)",
               per_step, 0.75, 1.25, f"L = {l_fixed}"),
        Target("memory growth of anode/recompute with L (states per block)",
               per_block, 0.75, 1.25, f"N_t = {n_fixed}"),
        Target("time: anode/store / torchdiffeq odeint_adjoint",
               ratio("anode/store", TDQ_ADJOINT, "time_s"), inf, 1.05, where),
        Target("time: anode/recompute / torchdiffeq odeint_adjoint",
               ratio("anode/recompute", TDQ_ADJOINT, "time_s"), inf, 1.3, where),
        Target("time: direct / torchdiffeq odeint",
               ratio("direct", TDQ_ODEINT, "time_s"), inf, 1.1, where),
    ]
    if quick:
        for t in found:
            t.unjudged = "quick sizes"
    return found
