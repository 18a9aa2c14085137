"""Train a continuous normalizing flow on a 2-D toy density with exact ANODE gradients.

An FFJORD-style flow (Grathwohl et al., ICLR 2019): data points x are carried by
dz/dt = f(t, z) from t = 0 to t = 1, and log p(x) = log N(z(1); 0, I) + integral of
tr(df/dz) dt. During training the trace is estimated by Hutchinson's trick with one
Rademacher probe per point, held fixed through each solve. Steps are chosen by dopri5 at
``--rtol``/``--atol``; the gradient is ANODE's discrete adjoint with the ``recompute``
schedule: the exact gradient of the accepted discrete solve, with the forward's step sizes
held fixed, at the memory of one step's graph plus the accepted states (docs/adaptive.md).

    python examples/cnf_2d.py --out runs/cnf_2d            # about 3 min on 2 CPU cores

writes ``cnf_2d.png`` (data next to the learned density) and ``cnf_2d_losses.csv`` into
``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import anode


def two_moons(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points ``[n, 2]`` on two interleaved half circles with noise 0.1, centred and
    scaled to about unit variance."""
    upper = torch.rand(n, generator=generator) < 0.5
    angle = torch.rand(n, generator=generator) * math.pi
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x, y], dim=1) + 0.1 * torch.randn(n, 2, generator=generator)
    return (points - torch.tensor([0.5, 0.25])) * 2.0


class CNF(nn.Module):
    """The flow's dynamics on the state ``(z [B, 2], delta_logp [B, 1])``.

    ``d delta_logp/dt = -tr(df/dz)``: estimated as ``e^T (df/dz) e`` with the probe
    ``self.noise`` when it is set (training), computed exactly from the two rows of the
    Jacobian otherwise (the density plot).
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2))
        self.noise: torch.Tensor | None = None
        self.evaluations = 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        self.evaluations += 1
        z = state[0]
        # The trace needs a graph of f even when the solver runs without one (ANODE's
        # forward sweep); the graph of the trace itself only when a backward will use it.
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self.net(torch.cat([z, t.to(z).expand(z.shape[0], 1)], dim=1))
            if self.noise is not None:
                vjp = torch.autograd.grad(dz, z, self.noise, create_graph=outer)[0]
                trace = (vjp * self.noise).sum(dim=1, keepdim=True)
            else:
                rows = [torch.autograd.grad(dz[:, i].sum(), z, create_graph=outer, retain_graph=True)[0][:, i]
                        for i in range(2)]
                trace = (rows[0] + rows[1]).unsqueeze(1)
        return (dz, -trace) if outer else (dz.detach(), -trace.detach())


def log_density(model: CNF, x: torch.Tensor, options: anode.SolveOptions, stats=None) -> torch.Tensor:
    """log p(x) ``[B]`` under the flow: ``log N(z(1); 0, I) - delta_logp(1)``."""
    t = torch.tensor([0.0, 1.0])
    z, delta_logp = anode.odeint(model, (x, torch.zeros(x.shape[0], 1)), t, options=options, stats=stats)
    log_base = -0.5 * z[-1].pow(2).sum(dim=1) - math.log(2 * math.pi)
    return log_base - delta_logp[-1].squeeze(1)


def plot(model: CNF, data: torch.Tensor, options: anode.SolveOptions, path: Path, resolution: int) -> None:
    """Data histogram next to the learned density on ``[-4, 4]^2`` (exact trace, no graph)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = torch.linspace(-4, 4, resolution)
    xx, yy = torch.meshgrid(side, side, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    model.noise = None
    with torch.no_grad():
        density = log_density(model, grid, options).exp().reshape(resolution, resolution)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=resolution, range=[[-4, 4], [-4, 4]])
    axes[0].set_title("data (two moons)")
    axes[1].imshow(density.numpy(), extent=(-4, 4, -4, 4), origin="lower")
    axes[1].set_title("learned density (CNF, anode gradients)")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Train and plot; returns ``{"losses", "seconds", "png"}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training iterations (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=512, help="points per iteration (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden width (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="dopri5 rtol (default: %(default)s)")
    parser.add_argument("--atol", type=float, default=1e-5, help="dopri5 atol (default: %(default)s)")
    parser.add_argument("--resolution", type=int, default=100,
                        help="plot pixels per side (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 0: torch's default (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/cnf_2d"),
                        help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.threads:
        # The tensors here are small ([batch, hidden]): extra threads only synchronise, and
        # on a machine shared with other work their spin-waits made iterations 100x slower.
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = CNF(args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    options = anode.SolveOptions("dopri5", anode.Adaptive(rtol=args.rtol, atol=args.atol),
                                 anode.DiscreteAdjoint(anode.Recompute()))
    losses, start = [], time.perf_counter()
    bar = tqdm(range(args.steps), desc="cnf_2d")
    for _ in bar:
        x = two_moons(args.batch, generator)
        model.noise = torch.randint(0, 2, x.shape, generator=generator).float() * 2 - 1
        stats = anode.SolveStats()
        loss = -log_density(model, x, options, stats).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(nll=f"{loss.item():.3f}", steps=stats.forward_steps)
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "cnf_2d.png"
    plot(model, two_moons(20000, generator), options, png, args.resolution)
    rows = "".join(f"{i},{v}\n" for i, v in enumerate(losses))
    (args.out / "cnf_2d_losses.csv").write_text("step,nll\n" + rows)
    print(f"trained {args.steps} steps in {seconds:.0f} s; nll {losses[0]:.3f} -> "
          f"{sum(losses[-10:]) / len(losses[-10:]):.3f} (mean of the last 10); wrote {png}")
    return {"losses": losses, "seconds": seconds, "png": png}


if __name__ == "__main__":
    main()
