"""Training loop, checkpoints, resume, metrics and the ``anode train`` / ``anode evaluate``
commands, on small fake CIFAR files (``tests/cifar_files.py``)."""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anode import models
from anode_workbench.cli import main
from anode_workbench.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar
from anode_workbench.train import (
    CHECKPOINT_KEYS,
    CPU_PRESET,
    EpochSchedule,
    TrainConfig,
    atomic_write,
    evaluate_checkpoint,
    load_checkpoint,
    parse_bytes,
    resolve_config,
    rng_state,
    set_rng_state,
    train,
)
from anode_workbench.train.config import default_data_root, lr_milestones

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifar_files import tiny_config, write_fake_cifar  # noqa: E402

TINY = "_test_tiny_ode"


def _tiny(num_classes: int = 10, **ode_options):
    """Two stages of widths 4 and 8, each a BasicBlock and an ODE block (with BatchNorm)."""
    return models.ResNet((4, 8), (2, 2), num_classes, ode=True, **ode_options)


if TINY not in models.list_models():
    models.register_model(_tiny, name=TINY)



def _config(data_root, out, **kw) -> TrainConfig:
    return tiny_config(data_root, out, **{"model": TINY, **kw})


def _assert_same_state(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs (max {float((a[k] - b[k]).abs().max())})"


# --- configuration --------------------------------------------------------------------------


def test_presets_fill_only_unset_settings():
    cpu = resolve_config(TrainConfig(), "cpu")
    for key, value in CPU_PRESET.items():
        assert getattr(cpu, key) == value
    gpu = resolve_config(TrainConfig(), "cuda")
    assert (gpu.model, gpu.epochs, gpu.batch_size, gpu.lr) == ("resnet18_ode", 350, 256, 0.1)
    assert gpu.lr_milestones == (150, 250) and gpu.lr_schedule == "step"
    assert (gpu.momentum, gpu.weight_decay) == (0.9, 5e-4)
    # A user's model keeps its own ODE defaults; a user's epochs get proportional milestones.
    mine = resolve_config(TrainConfig(model="resnet_small", epochs=8, lr=0.3), "cuda")
    assert (mine.method, mine.n_steps, mine.lr) == (None, None, 0.3)
    assert mine.lr_milestones is None and lr_milestones(mine) == [4, 6]


def test_default_data_root_prefers_shared_copy(tmp_path):
    assert default_data_root("cifar10", cwd=tmp_path) == "data"
    (tmp_path / "work").mkdir()
    (tmp_path / "shared" / "data" / "cifar10-jpeg").mkdir(parents=True)
    shared = os.path.join("..", "shared", "data", "cifar10-jpeg")
    assert default_data_root("cifar10", cwd=tmp_path / "work") == shared
    assert default_data_root("cifar100", cwd=tmp_path / "work") == "data"


@pytest.mark.parametrize(
    "bad",
    [dict(epochs=0), dict(batch_size=-1), dict(lr=0.0), dict(lr_schedule="linear"), dict(dataset="mnist"),
     dict(lr_milestones=(5, 3)), dict(device="tpu"), dict(subset=-1), dict(momentum=1.0)],
)
def test_config_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        TrainConfig(**bad).check()


def test_parse_bytes():
    assert parse_bytes("1.5MB") == 1_500_000
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2G") == 2 * 2**30
    assert parse_bytes(1000) == 1000
    for bad in ("lots", "-1GB", "3 parsecs"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_lr_schedules_match_torch_schedulers():
    """The closed-form rates equal those of torch's own MultiStepLR and CosineAnnealingLR."""
    epochs = 12
    for kind, reference in (
        ("step", lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [6, 9], gamma=0.1)),
        ("cosine", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)),
    ):
        p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        o1, o2 = torch.optim.SGD([p1], lr=0.1), torch.optim.SGD([p2], lr=0.1)
        mine, ref = EpochSchedule(o1, kind, epochs, [6, 9], 0.1), reference(o2)
        for _ in range(epochs):
            assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
            o1.step(), o2.step(), mine.step(), ref.step()


# --- checkpoint building blocks ----------------------------------------------------------


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


# --- training, resume, callbacks --------------------------------------------------------------


class _Killed(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(data_root, tmp_path):
    """2 epochs straight == 1 epoch, a kill during epoch 2, and a resume: bitwise on CPU."""
    straight = train(_config(data_root, tmp_path / "straight"))

    def kill_in_epoch_2(model, epoch, run_dir):
        if epoch == 2:  # after epoch 2's training, before its checkpoint: epoch 2 is lost
            raise _Killed

    with pytest.raises(_Killed):
        train(_config(data_root, tmp_path / "killed"), callbacks=[kill_in_epoch_2])
    assert load_checkpoint(tmp_path / "killed")["epoch"] == 1
    resumed = train(_config(data_root, tmp_path / "killed", resume=True))

    a, b = load_checkpoint(straight.run_dir), load_checkpoint(resumed.run_dir)
    assert a["epoch"] == b["epoch"] == 2
    _assert_same_state(a["model_state"], b["model_state"], "model")
    for sa, sb in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler_state"]["last_epoch"] == b["scheduler_state"]["last_epoch"] == 2
    timing = {"train_time_s", "epoch_time_s", "images_per_s", "peak_memory_mb"}
    for ra, rb in zip(a["metrics"], b["metrics"], strict=True):
        drop = lambda r: {k: v for k, v in r.items() if k not in timing}  # noqa: E731
        assert drop(ra) == drop(rb)
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_callbacks_do_not_change_training_and_add_metrics(data_root, tmp_path):
    plain = train(_config(data_root, tmp_path / "plain", epochs=1))
    seen = []

    def meddle(model, epoch, run_dir):
        # Consumes random numbers, runs a training-mode forward (BatchNorm statistics move)
        # and leaves gradients behind: none of it may reach the training.
        seen.append((epoch, run_dir, model.training))
        model.train()
        model(torch.randn(4, 3, 32, 32)).sum().backward()
        np.random.rand(), random.random()
        return {"probe": 1.5}

    probed = train(_config(data_root, tmp_path / "probed", epochs=1), callbacks=[meddle])
    assert seen == [(1, tmp_path / "probed", False)]
    assert probed.metrics[0]["probe"] == 1.5
    _assert_same_state(plain.model.state_dict(), probed.model.state_dict(), "with callback")


def test_training_learns_a_separable_task(tmp_path):
    """Sanity of the loop: on fake data whose label is the images' grey level, a few epochs
    bring the training loss and accuracy well past chance (ln 10 nats, 10%)."""
    write_fake_cifar(tmp_path / "data", "cifar10", n_train=64, n_test=20)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    for f in sorted(folder.glob("data_batch_*")) + [folder / "test_batch"]:
        d = pickle.loads(f.read_bytes())
        grey = (np.asarray(d["labels"]) * 25).astype(np.uint8)
        d["data"] = np.repeat(grey[:, None], 3072, axis=1)
        f.write_bytes(pickle.dumps(d, protocol=2))
    r = train(_config(tmp_path / "data", tmp_path / "run", epochs=6, lr=0.1, augment=False))
    last = r.metrics[-1]
    assert last["train_loss"] < 0.7 * math.log(10) and last["train_acc"] > 0.3  # chance: ln 10, 0.1


def test_refuses_to_overwrite_a_run_and_to_change_settings_on_resume(data_root, tmp_path):
    train(_config(data_root, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(_config(data_root, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match="lr=0.2"):
        train(_config(data_root, tmp_path / "run", epochs=2, lr=0.2, resume=True))
    with pytest.raises(FileNotFoundError):
        train(_config(data_root, tmp_path / "other", resume=str(tmp_path / "nothing")))
    # Extending the run is allowed.
    r = train(_config(data_root, tmp_path / "run", epochs=2, resume=True))
    assert [m["epoch"] for m in r.metrics] == [1, 2]


@pytest.mark.parametrize(
    "options, expected",
    [
        (dict(gradient="direct"), {}),
        (dict(gradient="backsolve"), {}),
        (dict(schedule="store"), {}),
        (dict(method="midpoint", n_steps=3), {}),
        (dict(snapshots=1), dict(schedule="revolve")),
        (dict(memory_budget=10**6), dict(schedule="auto")),
        (dict(method="dopri5", rtol=1e-2, atol=1e-3), {}),
    ],
)
def test_ode_options_reach_the_blocks_and_the_checkpoint(data_root, tmp_path, options, expected):
    r = train(_config(data_root, tmp_path / "run", epochs=1, subset=16, **options))
    assert math.isfinite(r.metrics[0]["train_loss"])
    expected = {**options, **expected}
    blocks = models.ode_blocks(r.model)
    assert blocks
    record, _ = models.from_named_options(models.resolve_ode_options(expected))
    assert all(b.options == record for b in blocks)
    assert load_checkpoint(r.run_dir)["ode_options"] == expected


# --- command line -----------------------------------------------------------------------------


def _independent_test_metrics(ckpt_file, data_root):
    """Test loss/accuracy recomputed without anode_workbench.train: normalise by hand, one batch."""
    ckpt = torch.load(ckpt_file, weights_only=True)
    model = models.create(ckpt["model_name"], num_classes=ckpt["num_classes"], **ckpt["ode_options"])
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    arrays = load_cifar("cifar10", data_root, train=False)
    mean = torch.tensor(CIFAR10_MEAN)[:, None, None]
    std = torch.tensor(CIFAR10_STD)[:, None, None]
    x = (arrays.images.double() / 255 - mean.double()) / std.double()
    with torch.no_grad():
        logits = model(x.float())
    loss = F.cross_entropy(logits.double(), arrays.labels).item()
    acc = (logits.argmax(1) == arrays.labels).double().mean().item()
    return loss, acc


def test_cli_train_then_evaluate(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main([
        "train", "--data-root", str(data_root), "--model", TINY, "--epochs", "2", "--batch-size", "16",
        "--subset", "32", "--lr", "0.05", "--lr-schedule", "step", "--lr-milestones", "1",
        "--out", str(out), "--device", "cpu", "--seed", "3",
    ])
    assert rc == 0
    captured = capsys.readouterr()
    assert "epoch 2/2" in captured.err and "done: 2 epochs" in captured.out
    for name in ("last.pt", "config.json", "metrics.jsonl", "metrics.csv", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(ckpt)
    assert (ckpt["model_name"], ckpt["num_classes"], ckpt["dataset"]) == (TINY, 10, "cifar10")
    assert ckpt["epoch"] == 2
    assert ckpt["args"]["seed"] == 3 and ckpt["args"]["subset"] == 32
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.005])
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s", "images_per_s",
                "peak_memory_mb"):
        assert all(math.isfinite(float(r[key])) for r in rows), key

    # Extend the finished run by one epoch from the command line.
    assert main(["train", "--resume", str(out), "--epochs", "3", "--device", "cpu", "--no-progress"]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert [m["epoch"] for m in ckpt["metrics"]] == [1, 2, 3]
    assert ckpt["metrics"][2]["lr"] == pytest.approx(0.005) and ckpt["metrics"][:2] == [
        {k: float(v) if k != "epoch" else int(v) for k, v in r.items()} for r in rows
    ]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))

    rc = main(["evaluate", str(out), "--json", "--device", "cpu"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    loss, acc = _independent_test_metrics(out / "last.pt", data_root)
    assert result["n_images"] == 20
    assert result["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert result["test_acc"] == pytest.approx(acc, abs=1e-12)
    assert result["test_acc"] == pytest.approx(float(rows[-1]["test_acc"]), abs=1e-12)
    assert result["test_loss"] == pytest.approx(float(rows[-1]["test_loss"]), rel=1e-5)


def test_cli_reports_errors_without_traceback(data_root, tmp_path, capsys):
    assert main(["train", "--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "CIFAR-10 not found" in capsys.readouterr().err
    assert main(["train", "--data-root", str(data_root), "--model", "nope", "--out", str(tmp_path / "r"),
                 "--device", "cpu"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "none")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--memory-budget", "lots"])


def test_console_script_end_to_end(data_root, tmp_path):
    exe = shutil.which("anode") or str(Path(sys.executable).with_name("anode"))
    if not Path(exe).exists():
        pytest.skip("the anode console script is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    train_cmd = [exe, "train", "--data-root", str(data_root), "--model", "resnet_ode_small", "--epochs", "1",
                 "--batch-size", "16", "--subset", "16", "--test-subset", "10", "--out", str(out),
                 "--device", "cpu", "--no-progress", "--no-plots"]
    proc = subprocess.run(train_cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(out)
    assert (ckpt["model_name"], ckpt["epoch"]) == ("resnet_ode_small", 1)
    ours = evaluate_checkpoint(out, device="cpu", subset=10)
    assert ours["n_images"] == 10
    assert ours["test_acc"] == pytest.approx(ckpt["metrics"][-1]["test_acc"], abs=1e-12)


def test_a_chosen_embedded_pair_steps_adaptively_unless_n_steps_is_given():
    adaptive = resolve_config(TrainConfig(method="dopri5"), "cpu")
    assert (adaptive.method, adaptive.n_steps) == ("dopri5", None)  # not the preset's N_t = 2
    fixed = resolve_config(TrainConfig(method="dopri5", n_steps=3), "cpu")
    assert fixed.n_steps == 3
    assert resolve_config(TrainConfig(method="midpoint"), "cpu").n_steps == 2
