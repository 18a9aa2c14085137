"""``pip install anode`` alone: a fresh virtualenv with only the library's requirements (torch
and checkpoint-schedules) and the project installed from a copy of the source tree without
its dependencies, then, inside it, a solve and its backward against closed forms, the
drop-in, a model of the zoo, and the ``anode`` command naming the extra it needs.

Skipped, saying so, only where pip cannot reach a package index or cache to install from;
any other failure (venv, build, import, a wrong number) fails.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

# pip's words when no index or cache could serve a requirement
UNREACHABLE = (
    "Failed to establish a new connection", "Temporary failure in name resolution",
    "Network is unreachable", "Connection refused", "Max retries exceeded", "ProxyError",
    "Could not fetch URL", "(from versions: none)",
)

IN_THE_VENV = r'''
import importlib.metadata as md
import importlib.util
import math
import re
import sys

def requirements(dist):
    """The names ``dist`` requires outside its extras, normalised."""
    return {re.match(r"[A-Za-z0-9._-]+", r).group().lower().replace("_", "-")
            for r in md.requires(dist) or [] if "extra ==" not in r}

assert requirements("anode") == {"torch", "checkpoint-schedules"}, requirements("anode")
# numpy arrives only as checkpoint-schedules' own requirement (checkpoint_schedules.mixed
# imports it); tqdm and matplotlib are the workbench's alone
absent = ["tqdm", "matplotlib"]
if "numpy" not in requirements("checkpoint-schedules"):
    absent.append("numpy")
present = [m for m in absent if importlib.util.find_spec(m) is not None]
assert not present, f"importable in a library-only install: {present}"

import torch
import anode
import anode.dropin
import anode.models
assert "site-packages" in anode.__file__, anode.__file__  # the installed copy, not the tree

sys.path.insert(0, TESTS)
from problems import linear_field

F64 = torch.float64
# y' = a y, rk4 with h = 1/4, 4 steps: y1 = R(ah)^4 y0, R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24
a0, h, y0v = -0.7, 0.25, [1.0, -2.0]
z = a0 * h
R = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
dR = 1 + z + z**2 / 2 + z**3 / 6
a = torch.tensor(a0, dtype=F64, requires_grad=True)
y0 = torch.tensor(y0v, dtype=F64, requires_grad=True)
t = torch.tensor([0.0, 1.0], dtype=F64)
ys = anode.odeint(linear_field(a), y0, t, method="rk4", n_steps=4)
assert torch.allclose(ys[-1], R**4 * y0.detach(), rtol=1e-14, atol=0), ys
g_y0, g_a = torch.autograd.grad(ys[-1].sum(), [y0, a])
assert torch.allclose(g_y0, torch.full((2,), R**4, dtype=F64), rtol=1e-13, atol=0), g_y0
assert math.isclose(g_a.item(), 4 * R**3 * dR * h * sum(y0v), rel_tol=1e-12), g_a

# the drop-in, adaptive: y(1) = y0 exp(a), dy(1)/da = y0 exp(a)
ys = anode.dropin.odeint(linear_field(a), y0, t, method="dopri5", rtol=1e-10, atol=1e-12)
assert torch.allclose(ys[-1], y0.detach() * math.exp(a0), rtol=1e-8, atol=0), ys
(g_a,) = torch.autograd.grad(ys[-1].sum(), [a])
assert math.isclose(g_a.item(), math.exp(a0) * sum(y0v), rel_tol=1e-6), g_a

torch.manual_seed(0)
net = anode.models.create("resnet_ode_tiny", num_classes=10)
out = net(torch.randn(2, 3, 16, 16))
assert out.shape == (2, 10), out.shape
torch.nn.functional.cross_entropy(out, torch.tensor([3, 7])).backward()
params = list(net.parameters())
assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
print("library-only install works")
'''


def clean_env() -> dict:
    """This process's environment without what would let the venv see other packages."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}


def pip(python: Path, *args: str, cwd: Path) -> None:
    """Run ``python -m pip install *args``; skip if no index or cache can serve it."""
    cmd = [str(python), "-m", "pip", "install", "--no-input", "--progress-bar", "off", "--no-compile",
           "--retries", "1", "--timeout", "30", *args]
    done = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True)
    if done.returncode:
        said = done.stdout + done.stderr
        errors = [line for line in said.splitlines() if line.startswith("ERROR")] or said.splitlines()[-3:]
        if any(word in said for word in UNREACHABLE):
            pytest.skip(f"pip cannot reach a package index or cache for {' '.join(args)}: "
                        + " | ".join(errors))
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{said[-4000:]}")


def source_copy(dest: Path) -> Path:
    """The files a wheel is built from. Installing the tree itself would make pip build in
    place, leaving build/ and src/anode.egg-info in the checkout (and racing other runs)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


# slow: about 130 s on a busy 2-core machine (a 190 MB torch wheel unpacked, its modules
# compiled on first import); run it with `pytest -m slow tests/library/test_fresh_install.py`
@pytest.mark.slow
def test_library_only_install_solves_differentiates_and_runs_a_model(tmp_path):
    venv = tmp_path / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env(),
                       capture_output=True)
        python = venv / "bin" / "python"
        # the torch these tests run with: pip's cache (or find-links) holds its wheel already
        pip(python, f"torch=={torch.__version__.split('+')[0]}", "checkpoint-schedules", cwd=tmp_path)
        pip(python, "--no-deps", str(source_copy(tmp_path / "anode-src")), cwd=tmp_path)

        script = IN_THE_VENV.replace("sys.path.insert(0, TESTS)", f"sys.path.insert(0, {str(TESTS)!r})")
        run = subprocess.run([str(python), "-I", "-c", script], cwd=tmp_path, env=clean_env(),
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "library-only install works" in run.stdout

        command = subprocess.run([str(venv / "bin" / "anode"), "--help"], cwd=tmp_path, env=clean_env(),
                                 capture_output=True, text=True)
        assert command.returncode != 0, command.stdout
        assert re.search(r"anode\[workbench\]", command.stderr), command.stderr
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 0.8 GB
