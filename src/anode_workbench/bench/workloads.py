"""Workloads measured in fresh processes: a stack of ODE blocks under one gradient method.

:func:`ode_stack` is the target that a fresh process (:mod:`anode_workbench.bench.isolation`) calls;
it builds the model and input, runs one
warm-up forward+backward (whose output and gradient it can save for comparison), measures
one forward+backward's peak memory, then its median time, and returns a JSON-serialisable
dict.

Besides this library's gradient methods, a stack can be solved by torchdiffeq (``odeint``,
autograd through its solver, or ``odeint_adjoint``, the continuous adjoint) on the same fixed
grid, or run with ``torch.utils.checkpoint`` around each block of the direct solver, so that
all are measured the same way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

import anode
from anode._schedules import get_schedule

from .measure import median_times, peak_memory, prepare, time_methods

LIBRARIES = ("anode", "torchdiffeq")


class TorchdiffeqBlock(nn.Module):
    """An ODE block solved by torchdiffeq with a fixed step ``1 / n_steps`` over [0, 1].

    torchdiffeq's fixed-grid ``euler`` and ``midpoint`` take the same arithmetic as this
    library's tableaus of the same name, so on the same grid (here the step sizes are exact
    for N_t a power of two) the outputs are equal; the sweep checks that they are.

    Args:
        func: the ODE function ``func(t, z)``, an ``nn.Module``.
        method: a torchdiffeq fixed-grid method name (``"euler"``, ``"midpoint"``, ...).
        n_steps: N_t.
        adjoint: ``True`` for ``torchdiffeq.odeint_adjoint`` (Chen et al. 2018, continuous
            adjoint solved on the same grid backwards), ``False`` for ``torchdiffeq.odeint``.

    Shapes:
        input ``[*S]`` → output ``[*S]`` (the state at t = 1).
    """

    def __init__(self, func: nn.Module, method: str, n_steps: int, adjoint: bool) -> None:
        super().__init__()
        self.func = func
        self.method = method
        self.n_steps = int(n_steps)
        self.adjoint = adjoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torchdiffeq

        solve = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        return solve(self.func, x, t, method=self.method, options=dict(step_size=1.0 / self.n_steps))[-1]


class CheckpointBlock(nn.Module):
    """``torch.utils.checkpoint`` around a block: keep its input, recompute it in the backward.

    Non-reentrant checkpointing (``use_reentrant=False``), which replays the RNG state; the
    gradient equals the block's direct gradient.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _checkpoint(self.block, x, use_reentrant=False)


def build_stack(layers: int, channels: int, method: str, n_steps: int, gradient: str,
                schedule: str, schedule_options: dict | None = None, *, library: str = "anode",
                checkpoint: bool = False) -> nn.Sequential:
    """L ODE blocks with the ANODE paper's ResNet ODE function (conv–BN–ReLU twice).

    Args:
        layers: L, the number of blocks.
        channels: C of the state ``[B, C, H, W]``.
        method, n_steps: the Runge–Kutta method and N_t of every block.
        gradient, schedule, schedule_options: as :class:`anode.ODEBlock` for
            ``library="anode"``; for ``library="torchdiffeq"``, ``gradient`` is ``"direct"``
            (``odeint``) or ``"adjoint"`` (``odeint_adjoint``) and the schedule is ignored.
        library: ``"anode"`` or ``"torchdiffeq"``.
        checkpoint: wrap each block in :class:`CheckpointBlock`.

    The parameters are created in the same order whatever the method, so with the same seed
    every method builds the same weights.

    Raises:
        ValueError: unknown library, or a torchdiffeq gradient other than direct/adjoint.
    """
    if library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}; choose one of {LIBRARIES}")
    if library == "torchdiffeq" and gradient not in ("direct", "adjoint"):
        raise ValueError(f"torchdiffeq gradient must be 'direct' or 'adjoint', not {gradient!r}")
    blocks = []
    for _ in range(layers):
        func = anode.ConvODEFunc(channels)
        if library == "torchdiffeq":
            block = TorchdiffeqBlock(func, method, n_steps, adjoint=gradient == "adjoint")
        else:
            own = gradient  # the schedule's name and options as the benchmark names them
            if gradient == "anode":
                own = anode.DiscreteAdjoint(get_schedule(schedule or "recompute", **(schedule_options or {})))
            block = anode.ODEBlock(func, method=method, n_steps=n_steps, gradient=own)
        blocks.append(CheckpointBlock(block) if checkpoint else block)
    return nn.Sequential(*blocks)


def _count_evaluations(model: nn.Module) -> tuple[list[int], list]:
    count = [0]

    def hook(module, args):
        count[0] += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, anode.ConvODEFunc)]
    return count, handles


def ode_stack(*, gradient: str, schedule: str = "recompute", schedule_options: dict | None = None,
              layers: int = 1, n_steps: int = 8, method: str = "midpoint", channels: int = 32,
              batch: int = 16, size: int = 32, device: str = "cpu", repeats: int = 3,
              seed: int = 0, threads: int = 0, library: str = "anode", checkpoint: bool = False,
              save: str | None = None, measure: str = "both") -> dict:
    """Peak memory (bytes) and median time (s) of forward+backward of an ODE-block stack.

    Input ``[batch, channels, size, size]``, float32; loss = sum of squares of the output.

    Args:
        gradient, schedule, schedule_options, layers, n_steps, method, channels, library,
            checkpoint: the model (see :func:`build_stack`).
        batch, size: the input's batch size and side (pixels).
        device: ``"cpu"`` or ``"cuda"`` (or ``"cuda:i"``).
        repeats: timed repeats after the warm-up and the memory run.
        seed: seeds the weights and the input (the same for every method).
        threads: ``torch.set_num_threads`` when positive.
        save: a path; the warm-up's output and parameter gradient (both flattened, float32
            CPU tensors) are saved there with ``torch.save`` as ``{"output", "grad"}``.
        measure: ``"both"``, ``"memory"`` (no timing) or ``"time"`` (no memory run), so that
            on CPU memory and time can be measured in processes with different allocator
            settings (see :mod:`anode_workbench.bench.measure`); ``"first"``: only the peak of the
            first full-size step after a warm-up on one small image (for glibc's default
            allocator, which keeps freed memory), nothing saved.

    Returns:
        (the memory entries only with ``measure`` "both" or "memory", the times only with
        "both" or "time")
        ``peak_bytes`` (extra peak memory of one forward+backward over what was in use before
        it: the model, the input, the gradients of the previous step), ``seconds`` and
        ``cpu_seconds`` (median wall and CPU time of forward+backward, see
        :func:`~anode_workbench.bench.measure.median_times`), ``state_bytes`` (one state),
        ``function_evaluations`` (of the ODE function per forward+backward, counted with a
        hook), ``recomputed_steps`` (forward steps taken again in the backward, over all
        blocks), ``schedule`` (what the first block's solve recorded, ``""`` without one of
        this library's blocks), ``grad_norm`` (of all parameter gradients) and
        ``parameters`` (their count).

    Raises:
        RuntimeError: ``device`` is CUDA but CUDA is not available.
        ValueError: unknown ``measure``.
    """
    if measure not in ("both", "memory", "time", "first"):
        raise ValueError(f"measure must be 'both', 'memory', 'time' or 'first', not {measure!r}")
    dev = prepare(threads, device, seed)
    model = build_stack(layers, channels, method, n_steps, gradient, schedule, schedule_options,
                        library=library, checkpoint=checkpoint).to(dev)
    x = torch.randn(batch, channels, size, size, device=dev)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()

    if measure == "first":
        # Under glibc's default allocator a full-size warm-up leaves its freed memory in the
        # heap, where the measured step reuses it: the peak would say nothing. Warm up on
        # one small image (kernels, code pages), then measure the first full-size step.
        small = torch.randn(1, channels, 8, 8, device=dev)
        model(small).square().sum().backward()
        model.zero_grad(set_to_none=True)
        return {"peak_bytes": peak_memory(step, dev)}

    # Warm-up: one-time allocations (kernels, workspaces) are not the method's; its output
    # and gradient are the ones compared across methods.
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).detach()
    grad_norm = grad.double().norm().item()
    if save:
        torch.save({"output": out.detach().reshape(-1).float().cpu(), "grad": grad.float().cpu()}, save)
    del out, grad
    model.zero_grad(set_to_none=True)

    result = {
        "state_bytes": x.numel() * x.element_size(),
        "grad_norm": grad_norm,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if measure in ("both", "memory"):
        count, handles = _count_evaluations(model)
        blocks = [m for m in model.modules() if isinstance(m, anode.ODEBlock)]
        for b in blocks:
            b.stats.reset()
        result["peak_bytes"] = peak_memory(step, dev)
        for h in handles:
            h.remove()
        result["function_evaluations"] = count[0]
        result["recomputed_steps"] = sum(b.stats.recomputed_steps for b in blocks)
        result["schedule"] = blocks[0].stats.schedule if blocks else ""
    if measure in ("both", "time"):
        times = median_times(step, dev, warmup=0, repeats=repeats)
        result["seconds"], result["cpu_seconds"] = times["wall"], times["cpu"]
    return result


def time_stack(*, methods: dict[str, dict], layers: int = 1, n_steps: int = 8,
               method: str = "midpoint", channels: int = 32, batch: int = 16, size: int = 32,
               device: str = "cpu", repeats: int = 3, seed: int = 0, threads: int = 0) -> dict:
    """Median times (s) of forward+backward of several gradient methods, interleaved.

    All methods' stacks (same weights, same input) live in this one process; after one
    warm-up each, ``repeats`` rounds time one forward+backward of every method, the order
    rotating from round to round. Load from other processes that changes during the
    measurement then falls on every method alike, instead of on whichever ran at the time,
    so the ratios between methods are what stays meaningful on a shared machine.

    Args:
        methods: label → options of :func:`build_stack` (``gradient``, ``schedule``,
            ``schedule_options``, ``library``, ``checkpoint``; ``seed`` overrides the weights'
            seed).
        layers, n_steps, method, channels, batch, size, device, seed, threads: as
            :func:`ode_stack`.
        repeats: rounds.

    Returns:
        label → ``{"seconds", "cpu_seconds"}`` (median wall and CPU time, see
        :func:`~anode_workbench.bench.measure.median_times`), or ``{"error": message}`` for a method
        whose build or warm-up raised.
    """
    dev = prepare(threads, device, seed)
    x = torch.randn(batch, channels, size, size, device=dev)

    def builder(opts):
        def build():
            rest = dict(opts)
            torch.manual_seed(rest.pop("seed", seed))
            model = build_stack(layers, channels, method, n_steps, rest.pop("gradient"),
                                rest.pop("schedule", "recompute"), rest.pop("schedule_options", None),
                                **rest).to(dev)

            def step():
                model.zero_grad(set_to_none=True)
                model(x).square().sum().backward()

            return step

        return build

    return time_methods({label: builder(opts) for label, opts in methods.items()}, dev, repeats)
