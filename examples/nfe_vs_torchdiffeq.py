"""Function evaluations of one forward solve: anode.dropin.odeint against torchdiffeq.odeint.

Same problems, tolerances and methods in both libraries (float64, no gradient); prints a
markdown table of the evaluation counts and their ratio, once with only the final time as
output and once with three intermediate output times, which both libraries take from the
steps' interpolant (dense output; adaptive_heun has none in anode, so it steps onto them).
The last column is anode stepping onto every output time instead
(``anode.Adaptive(dense_output=False)``). A second table gives the error at the output times
of both libraries' solves; docs/adaptive.md. Run:
``python examples/nfe_vs_torchdiffeq.py`` (a few seconds; needs torchdiffeq).
"""

import torch
import torchdiffeq
from torch import nn

import anode

F64 = torch.float64


class Field(nn.Module):
    """dy/dt = cos(t) W2 tanh(W1 y) + A y, with a call counter."""

    def __init__(self, dim=3, hidden=16):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.A = nn.Parameter(0.5 * torch.randn(dim, dim))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.lin2(torch.tanh(self.lin1(y))) * torch.cos(t) + y @ self.A.T


def count(solver, func, y0, t, **kw) -> int:
    func.calls = 0
    with torch.no_grad():
        solver(func, y0, t, **kw)
    return func.calls


def main() -> None:
    torch.manual_seed(0)
    func = Field().to(F64)
    y0 = torch.randn(4, 3, dtype=F64)
    print("| outputs | method | rtol | anode | torchdiffeq | ratio | anode, stepping onto outputs |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, t in [("t = 0, 2", torch.tensor([0.0, 2.0], dtype=F64)),
                     ("5 times in [0, 2]", torch.linspace(0.0, 2.0, 5, dtype=F64))]:
        for method in ("dopri5", "bosh3", "adaptive_heun"):
            for rtol in (1e-3, 1e-5, 1e-7):
                kw = dict(method=method, rtol=rtol, atol=rtol * 1e-2)
                ours = count(anode.dropin.odeint, func, y0, t, **kw)
                theirs = count(torchdiffeq.odeint, func, y0, t, **kw)
                stepping = anode.SolveOptions(method, anode.Adaptive(rtol=rtol, atol=rtol * 1e-2,
                                                                     dense_output=False))
                onto = count(anode.odeint, func, y0, t, options=stepping)
                print(f"| {label} | {method} | {rtol:g} | {ours} | {theirs} | {ours / theirs:.2f} | {onto} |")
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    with torch.no_grad():
        ref = torchdiffeq.odeint(func, y0, t, method="dopri5", rtol=1e-12, atol=1e-14)
        print("\nLargest error at the 5 output times against a dopri5 solve at rtol 1e-12:\n")
        print("| method | rtol | anode | torchdiffeq |")
        print("|---|---:|---:|---:|")
        for method in ("dopri5", "bosh3"):
            for rtol in (1e-3, 1e-5, 1e-7):
                kw = dict(method=method, rtol=rtol, atol=rtol * 1e-2)
                ours = (anode.dropin.odeint(func, y0, t, **kw) - ref).abs().max().item()
                theirs = (torchdiffeq.odeint(func, y0, t, **kw) - ref).abs().max().item()
                print(f"| {method} | {rtol:g} | {ours:.1e} | {theirs:.1e} |")


if __name__ == "__main__":
    main()
