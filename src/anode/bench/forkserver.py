"""Fresh processes for measurements, without paying for ``import torch`` in each of them.

:func:`anode.bench.measure.run_isolated` starts a new interpreter per configuration; on a
busy machine importing torch takes several seconds, which for a sweep of a hundred
configurations costs more than the measurements. A :class:`ForkServer` is one interpreter
that imports torch (and the modules the measurements need) once, *never computes with it*,
and forks one child per configuration. Each child is a fresh process for everything that is
measured: its own allocator, its own peak resident size (``VmHWM``), its own CUDA context
(the server never initialises CUDA, which a forked child could not re-initialise), its own
thread pools (the server never starts any). By default the server runs with glibc's mmap
threshold fixed as in :func:`~anode.bench.measure.run_isolated`, for memory measurements, and
its children inherit it; a server for time measurements leaves the allocator alone
(``malloc_env=False``).

This is the preforking pattern of ``multiprocessing``'s ``forkserver`` start method, without
its pickling layer: requests and results are JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

from .measure import _MALLOC_ENV, run_isolated

DEFAULT_PRELOAD = ("torch", "torch._dynamo")
"""torch, and what torch imports on first use (the first custom autograd Function, the first
``torch.utils.checkpoint`` call): seconds per child on a busy machine unless the server has it
already. Importing starts no threads, so forking stays safe."""

# The server: import the preloaded modules, then for each request line fork a child that
# calls the target and writes its JSON result into a pipe. The child's stdout is pointed at
# stderr so that nothing it prints can corrupt the request/answer protocol on stdout.
_SERVER = r"""
import importlib, json, os, signal, sys, traceback
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
sys.stdout.write("@@READY@@\n")
sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(2, 1)
        signal.alarm(int(req["timeout"]))
        try:
            mod, fn = req["target"].split(":")
            out = {"result": getattr(importlib.import_module(mod), fn)(**req["kwargs"])}
        except BaseException:
            out = {"error": traceback.format_exc()}
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
    sys.stdout.write(data + "\n")
    sys.stdout.flush()
"""


class ForkServer:
    """A server process that forks one fresh child per measurement.

    Use as a context manager::

        with ForkServer(preload=["anode.bench.workloads"]) as server:
            result = server.run("anode.bench.workloads:ode_stack", gradient="direct")

    Args:
        preload: modules to import in the server once, after :data:`DEFAULT_PRELOAD`; the
            targets' modules belong here so that children do not import them again.
        default_preload: whether to import :data:`DEFAULT_PRELOAD` first.
        malloc_env: fix glibc's mmap threshold (for CPU memory measurements; slows CPU work).
        timeout: seconds one child may run before it is killed (``SIGALRM``).

    Raises:
        RuntimeError: the server could not start (its stderr is included).
    """

    def __init__(self, preload: list[str] | None = None, timeout: float = 1800,
                 default_preload: bool = True, malloc_env: bool = True) -> None:
        self.preload = [*(DEFAULT_PRELOAD if default_preload else ()), *(preload or [])]
        self.malloc_env = malloc_env
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> ForkServer:
        self.start()
        line = self._proc.stdout.readline()
        if line.strip() != "@@READY@@":
            self.close()
            raise RuntimeError(f"the measurement server did not start (preload {self.preload})")
        return self

    def start(self) -> None:
        """Start the server process without waiting for its imports (``with`` waits); lets
        several servers import at the same time. Idempotent."""
        if self._proc is not None:
            return
        env = {**os.environ, **(_MALLOC_ENV if self.malloc_env else {}),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
               # torch.cuda.is_available() (should anything preloaded call it) then asks NVML
               # instead of initialising the CUDA driver, which forked children could not use.
               "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, json.dumps(self.preload)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server (idempotent)."""
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()
            self._proc.wait()
            self._proc = None

    def run(self, target: str, **kwargs) -> dict:
        """Call ``module:function(**kwargs)`` in a fresh forked child and return its dict.

        Raises:
            RuntimeError: the child raised (its traceback is included), was killed or timed
                out, or the server is not running.
        """
        if self._proc is None:
            raise RuntimeError("ForkServer.run outside its `with` block")
        request = {"target": target, "kwargs": kwargs, "timeout": max(1, int(self.timeout))}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the measurement server died")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{target}({kwargs}) failed:\n{answer['error'][-4000:]}")
        return answer["result"]


class Spawner:
    """The :class:`ForkServer` interface on :func:`~anode.bench.measure.run_isolated`: a new
    interpreter per call (slower to start; for platforms where forking is not an option)."""

    def __init__(self, preload: list[str] | None = None, timeout: float = 1800,
                 default_preload: bool = True, malloc_env: bool = True) -> None:
        self.timeout = timeout
        self.malloc_env = malloc_env

    def __enter__(self) -> Spawner:
        return self

    def start(self) -> None:
        """Nothing to start."""

    def __exit__(self, *exc) -> None:
        pass

    def run(self, target: str, **kwargs) -> dict:
        """As :meth:`ForkServer.run`."""
        return run_isolated(target, timeout=self.timeout, malloc_env=self.malloc_env, **kwargs)


def measurement_servers(stack: contextlib.ExitStack, isolation: str, preload: list[str],
                        separate_timing: bool) -> tuple:
    """``(memory_server, time_server)`` entered on ``stack``: memory measured with glibc's mmap
    threshold fixed, time (when ``separate_timing``) in a second server with the default
    allocator, since the fixed threshold slows CPU work (see :mod:`anode.bench.measure`).
    Both servers import at the same time.

    Raises:
        ValueError: ``isolation`` neither ``"fork"`` nor ``"spawn"``.
    """
    if isolation not in ("fork", "spawn"):
        raise ValueError(f"unknown isolation {isolation!r}; choose 'fork' or 'spawn'")
    runner = ForkServer if isolation == "fork" else Spawner
    memory_server = runner(preload=preload, malloc_env=True)
    time_server = runner(preload=preload, malloc_env=False) if separate_timing else memory_server
    memory_server.start()
    time_server.start()
    stack.enter_context(memory_server)
    if separate_timing:
        stack.enter_context(time_server)
    return memory_server, time_server
