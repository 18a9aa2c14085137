"""Data-parallel training: two torchrun processes (gloo, CPU) against one process.

Equality holds up to floating-point summation order when the model has no BatchNorm
(per-process batch statistics differ from whole-batch statistics, and SyncBatchNorm needs a
GPU) and augmentation is off (each process draws its own crops and flips). With those, each
global batch is the same set of examples in both runs (the loader's rank r takes positions
r, r + 2, ... of the epoch's order), DDP averages the two half-batch gradients, which equals
the gradient of the mean loss over the whole batch, and evaluation leaves out the examples a
process repeats to even out the shards. The remaining difference is rounding: the sums over
the batch split in two halves and the all-reduce add in a different order, a few float32
ulps per step, which SGD carries forward. Tolerance: 1e-5 absolute on every weight after 4
steps, 1e-5 relative on the losses; accuracies must be identical.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from anode.models import list_models, register_model
from anode_workbench.cli import main
from anode_workbench.train import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifar_files import write_fake_cifar  # noqa: E402

RUNNER = textwrap.dedent(
    """
    import sys

    import torch
    from torch import nn

    from anode import ConvODEFunc, ODEBlock
    from anode_workbench.cli import main
    from anode.models import register_model


    class TinyNoNorm(nn.Module):
        # A strided convolution, one ODE block without BatchNorm, pooling and a linear head.
        def __init__(self, num_classes=10, method="euler", n_steps=2, **options):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
            self.block = ODEBlock(ConvODEFunc(6, norm=False), method=method, n_steps=n_steps, **options)
            self.head = nn.Linear(6, num_classes)

        def forward(self, x):
            z = self.block(torch.relu(self.stem(x)))
            return self.head(z.mean((2, 3)))


    if __name__ == "__main__":
        register_model(lambda num_classes=10, **o: TinyNoNorm(num_classes, **o), name="tiny_no_norm")
        sys.exit(main(sys.argv[1:]))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    write_fake_cifar(tmp_path / "data", "cifar10", n_train=64, n_test=21)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    args = [
        "train", "--data-root", str(tmp_path / "data"), "--model", "tiny_no_norm", "--epochs", "1",
        "--batch-size", "16", "--subset", "0", "--no-augment", "--lr", "0.2", "--device", "cpu",
        "--eval-batch-size", "8", "--no-progress", "--no-plots",
    ]
    runner_module = _load(runner)
    if "tiny_no_norm" not in list_models():

        def tiny_no_norm(num_classes=10, **options):
            return runner_module.TinyNoNorm(num_classes, **options)

        register_model(tiny_no_norm)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0  # one process, in this one

    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         str(runner), *args, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True,  # no time limit: a busy machine stretches it
    )
    assert two.returncode == 0, two.stderr

    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    torch.manual_seed(0)  # the seed both runs build their weights with
    init = runner_module.TinyNoNorm().state_dict()
    assert a["args"]["batch_size"] == b["args"]["batch_size"] == 16
    for key, wa in a["model_state"].items():
        wb = b["model_state"][key]
        assert (wa - init[key]).abs().max() > 1e-3, f"{key} did not train"
        torch.testing.assert_close(wb, wa, rtol=0, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    ma, mb = a["metrics"][0], b["metrics"][0]
    assert ma["test_acc"] == mb["test_acc"] and ma["train_acc"] == mb["train_acc"]
    for key in ("train_loss", "test_loss"):
        assert mb[key] == pytest.approx(ma[key], rel=1e-5), key
    # Only rank 0 writes: one set of files, no stray temporaries.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "config.json", "last.pt", "metrics.csv", "metrics.jsonl",
    ]



def _load(runner: Path):
    spec = importlib.util.spec_from_file_location("ddp_runner", runner)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
