"""Fresh processes for measurements, without paying for ``import torch`` in each of them.

Every measurement runs in a process of its own: its own allocator, its own peak resident
size (``VmHWM``), its own CUDA context, its own thread pools. An :class:`Isolated` runner
makes such processes in one of two ways:

* ``"fork"`` (the default): one server interpreter imports torch (and the modules the
  measurements need) once, *never computes with it*, and forks one child per call. On a busy
  machine importing torch takes several seconds, which for a sweep of a hundred
  configurations would cost more than the measurements. The server never initialises CUDA
  (which a forked child could not re-initialise) and starts no thread pools.
* ``"spawn"``: a new interpreter per call, for platforms where forking is not an option;
  slower to start.

Both speak the same protocol (requests and results are JSON lines, the preforking pattern of
``multiprocessing``'s ``forkserver`` start method without its pickling layer). By default
the processes run with glibc's mmap threshold fixed, for memory measurements (see
:mod:`anode_workbench.bench.measure`); a runner for time measurements names another allocator
setting (``allocator="default"`` or ``"reuse"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

from .measure import ALLOCATORS

ISOLATIONS = ("fork", "spawn")

DEFAULT_PRELOAD = ("torch", "torch._dynamo")
"""torch, and what torch imports on first use (the first custom autograd Function, the first
``torch.utils.checkpoint`` call): seconds per child on a busy machine unless the server has it
already. Importing starts no threads, so forking stays safe."""

# The server: import the preloaded modules, then answer each request line, in a forked child
# (fork) or in the server itself, which then exits (spawn). Answers go to a duplicate of the
# original stdout; stdout itself is pointed at stderr so that nothing a target prints can
# corrupt the protocol.
_SERVER = r"""
import importlib, json, os, signal, sys, traceback
fork = sys.argv[2] == "fork"
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

def answer(text):
    answers.write(text + "\n")
    answers.flush()

def call(req):
    signal.alarm(int(req["timeout"]))
    try:
        mod, fn = req["target"].split(":")
        return {"result": getattr(importlib.import_module(mod), fn)(**req["kwargs"])}
    except BaseException:
        return {"error": traceback.format_exc()}

answer("@@READY@@")
for line in sys.stdin:
    req = json.loads(line)
    if not fork:
        answer(json.dumps(call(req)))
        break
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out = call(req)
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = "timed out" if sig == signal.SIGALRM else f"was killed by signal {sig}"
        data = json.dumps({"error": f"the measurement process {why}"})
    elif not data:
        data = json.dumps({"error": f"the measurement process exited with status {os.WEXITSTATUS(status)}"})
    answer(data)
"""


class Isolated:
    """Calls ``module:function(**kwargs)`` in a fresh process per call; the function returns a
    JSON-serialisable dict.

    Use as a context manager::

        with Isolated(preload=["anode_workbench.bench.workloads"]) as runner:
            result = runner.run("anode_workbench.bench.workloads:ode_stack", gradient="direct")

    Args:
        preload: modules to import once, after :data:`DEFAULT_PRELOAD`; the targets' modules
            belong here so that children do not import them again.
        isolation: ``"fork"`` (children of a server) or ``"spawn"`` (a new interpreter each).
        timeout: seconds one call may run before its process is killed (``SIGALRM``).
        default_preload: whether to import :data:`DEFAULT_PRELOAD` first.
        allocator: glibc's settings in the processes, a key of
            :data:`~anode_workbench.bench.measure.ALLOCATORS`: ``"fresh"`` (the mmap threshold
            fixed, for CPU memory measurements; slows CPU work), ``"reuse"`` or ``"default"``.

    Raises:
        ValueError: unknown ``isolation`` or ``allocator``.
        RuntimeError: the server could not start (``with``).
    """

    def __init__(self, preload: list[str] | None = None, *, isolation: str = "fork", timeout: float = 1800,
                 default_preload: bool = True, allocator: str = "fresh") -> None:
        if isolation not in ISOLATIONS:
            raise ValueError(f"unknown isolation {isolation!r}; choose one of {ISOLATIONS}")
        if allocator not in ALLOCATORS:
            raise ValueError(f"unknown allocator {allocator!r}; choose one of {sorted(ALLOCATORS)}")
        self.preload = [*(DEFAULT_PRELOAD if default_preload else ()), *(preload or [])]
        self.isolation = isolation
        self.allocator = allocator
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None
        self._entered = False

    def __enter__(self) -> Isolated:
        self._entered = True
        if self.isolation == "fork":
            self.start()
            self._wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self._entered = False

    def start(self) -> None:
        """Start the fork server without waiting for its imports (``with`` waits), so that
        several servers import at the same time. Idempotent; nothing to start for spawn."""
        if self._proc is None and self.isolation == "fork":
            self._proc = self._launch()

    def close(self) -> None:
        """Stop the server (idempotent)."""
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()
            self._proc.wait()
            self._proc = None

    def run(self, target: str, **kwargs) -> dict:
        """Call ``module:function(**kwargs)`` in a fresh process and return its dict.

        Raises:
            RuntimeError: the call raised (its traceback is included), was killed or timed
                out, or the runner is used outside its ``with`` block.
        """
        if not self._entered:
            raise RuntimeError("Isolated.run outside its `with` block")
        if self.isolation == "fork":
            return self._request(self._proc, target, kwargs)
        proc = self._launch()
        self._proc = proc
        try:
            self._wait_ready()
            return self._request(proc, target, kwargs)
        finally:
            self.close()

    def _launch(self) -> subprocess.Popen:
        env = {**os.environ, **ALLOCATORS[self.allocator],
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
               # torch.cuda.is_available() (should anything preloaded call it) then asks NVML
               # instead of initialising the CUDA driver, which forked children could not use.
               "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
        return subprocess.Popen(
            [sys.executable, "-c", _SERVER, json.dumps(self.preload), self.isolation],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )

    def _wait_ready(self) -> None:
        line = self._proc.stdout.readline()
        if line.strip() != "@@READY@@":
            self.close()
            raise RuntimeError(f"the measurement process did not start (preload {self.preload})")

    def _request(self, proc: subprocess.Popen, target: str, kwargs: dict) -> dict:
        request = {"target": target, "kwargs": kwargs, "timeout": max(1, int(self.timeout))}
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            answer = {"error": _death(proc)}
        else:
            answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{target}({kwargs}) failed:\n{answer['error'][-4000:]}")
        return answer["result"]


def _death(proc: subprocess.Popen) -> str:
    status = proc.wait()
    if status == -signal.SIGALRM:
        return "the measurement process timed out"
    if status < 0:
        return f"the measurement process was killed by signal {-status}"
    return f"the measurement process exited with status {status}"


def measurement_servers(stack: contextlib.ExitStack, isolation: str, preload: list[str],
                        separate_timing: bool) -> tuple[Isolated, Isolated]:
    """``(memory_runner, time_runner)`` entered on ``stack``: memory measured with glibc's mmap
    threshold fixed, time (when ``separate_timing``) in a second runner with the default
    allocator, since the fixed threshold slows CPU work (see :mod:`anode_workbench.bench.measure`).
    Both fork servers import at the same time.

    Raises:
        ValueError: unknown ``isolation``.
    """
    memory = Isolated(preload, isolation=isolation, allocator="fresh")
    timing = Isolated(preload, isolation=isolation, allocator="default") if separate_timing else memory
    memory.start()
    timing.start()
    stack.enter_context(memory)
    if separate_timing:
        stack.enter_context(timing)
    return memory, timing
