"""``anode compare``: the per-epoch gradient-error record against an independent computation,
and the comparison end to end (CIFAR-10 and CIFAR-100) on small fake CIFAR files."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anode import models
from anode_workbench.cli import main
from anode_workbench.compare import (
    CompareSpec,
    GradientErrorCallback,
    fixed_batch,
    gradient_error_record,
    load_spec,
    run_compare,
    run_folder,
    run_status,
    write_report,
)
from anode_workbench.data import load_cifar
from anode_workbench.train import load_checkpoint
from cifar_files import write_fake_cifar


def _flat_grad(model, grad, images, labels) -> torch.Tensor:
    """Independent reference: a deep copy switched to ``grad``, ``.backward()``, grads
    concatenated in float64."""
    twin = copy.deepcopy(model)
    models.set_ode_options(twin, gradient=grad)
    twin.train()
    F.cross_entropy(twin(images), labels).backward()
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in twin.parameters()]
    return torch.cat(grads).double()


def _reference_errors(model, images, labels) -> dict[str, float]:
    exact = _flat_grad(model, "direct", images, labels)
    out = {"grad_norm": float(exact.norm())}
    for name in ("backsolve", "anode"):
        tested = _flat_grad(model, name, images, labels)
        out[f"grad_rel_err_{name}"] = float((tested - exact).norm() / exact.norm())
    return out


def _spec(data_root, **kw) -> CompareSpec:
    base = dict(
        data_root=str(data_root), seeds=(0, 1), epochs=2, batch_size=10, lr=0.05, subset=20,
        test_subset=10, grad_batch=4, device="cpu", jobs=1, progress=False,
    )
    base.update(kw)
    return CompareSpec(**base)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar10")
    write_fake_cifar(root, "cifar10", n_train=30, n_test=10)
    return root


def test_gradient_error_record_equals_direct_computation():
    torch.manual_seed(0)
    model = models.create("resnet_ode_small", 10, method="midpoint", n_steps=2)
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6)
    model.eval()
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    record = gradient_error_record(model, images, labels, tested=("backsolve", "anode"))
    # Side-effect free: buffers, mode, generator, ODE options and .grad as before.
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert torch.equal(rng, torch.get_rng_state())
    assert not model.training
    assert all(b.options.gradient.name == "anode" and b.options.method.name == "midpoint"
               for b in models.ode_blocks(model))
    assert all(p.grad is None for p in model.parameters())
    ref = _reference_errors(model, images, labels)
    for key, value in ref.items():
        assert record[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # The continuous adjoint is visibly inexact here, the discrete adjoint exact to rounding.
    assert record["grad_rel_err_backsolve"] > 1e-3
    assert record["grad_rel_err_anode"] < 1e-5


def test_gradient_error_record_rejects_plain_network():
    with pytest.raises(ValueError, match="no ODE blocks"):
        gradient_error_record(models.create("resnet_small"), torch.randn(2, 3, 32, 32), torch.arange(2))


def test_spec_checks():
    with pytest.raises(ValueError, match="family/size"):
        CompareSpec(family="vgg").check()
    with pytest.raises(ValueError, match="variants"):
        CompareSpec(variants=("plain", "adjoint")).check()
    with pytest.raises(ValueError, match="seeds"):
        CompareSpec(seeds=(1, 1)).check()
    with pytest.raises(ValueError, match="grad_batch"):
        CompareSpec(grad_batch=0).check()
    spec = CompareSpec(family="sqnxt", size="full", seeds=(3,), method="rk4", n_steps=1)
    cfg = spec.train_config("backsolve", 3, "OUT")
    got = (cfg.model, cfg.method, cfg.n_steps, cfg.gradient, cfg.seed)
    assert got == ("sqnxt23_ode", "rk4", 1, "backsolve", 3)
    assert spec.train_config("plain", 3, "OUT").model == "sqnxt23"
    assert Path(cfg.out) == Path("OUT/runs/backsolve-seed3")


def test_compare_end_to_end_cifar10(cifar10, tmp_path):
    out = tmp_path / "cmp"
    spec = _spec(cifar10)
    statuses = run_compare(spec, out, log=lambda msg: None)
    assert statuses == {(v, s): "done" for s in (0, 1) for v in ("plain", "anode", "backsolve")}
    for variant in ("plain", "anode", "backsolve"):
        for seed in (0, 1):
            folder = run_folder(out, variant, seed)
            recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
            assert [r["epoch"] for r in recs] == [1, 2]
            ckpt = load_checkpoint(folder / "last.pt")
            args = ckpt["args"]
            assert (args["seed"], args["lr"], args["subset"], args["epochs"]) == (seed, 0.05, 20, 2)
            if variant == "plain":
                assert ckpt["model_name"] == "resnet_small" and "grad_rel_err_backsolve" not in recs[-1]
                continue
            assert ckpt["model_name"] == "resnet_ode_small"
            assert ckpt["ode_options"]["gradient"] == variant
            assert all(math.isfinite(r["grad_rel_err_backsolve"]) for r in recs)
    for name in ("compare_curves.png", "compare_gradient_error.png", "compare_table.md", "summary.json"):
        assert (out / name).stat().st_size > 0
    table = (out / "compare_table.md").read_text()
    assert all(f"| {v} | 2 (0) | 2 |" in table for v in ("plain", "anode", "backsolve"))
    summary = json.loads((out / "summary.json").read_text())["summary"]
    accs = [100 * load_checkpoint(run_folder(out, "anode", s))["metrics"][-1]["test_acc"] for s in (0, 1)]
    assert summary["anode"]["final_acc"][0] == pytest.approx(sum(accs) / 2)

    # The recorded error of the last epoch equals a direct computation on the same batch
    # with the saved weights (the record is taken after the epoch, as is the checkpoint).
    folder = run_folder(out, "backsolve", 1)
    ckpt = load_checkpoint(folder / "last.pt")
    model = models.create("resnet_ode_small", 10, **ckpt["ode_options"])
    model.load_state_dict(ckpt["model_state"])
    images, labels = fixed_batch(load_cifar("cifar10", cifar10, train=True), 4)
    ref = _reference_errors(model, images, labels)
    last = ckpt["metrics"][-1]
    for key, value in ref.items():
        assert last[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    # Re-running skips finished runs; more epochs resume them; report-only re-plots.
    mtime = (folder / "last.pt").stat().st_mtime_ns
    run_compare(spec, out, log=lambda msg: None)
    assert (folder / "last.pt").stat().st_mtime_ns == mtime
    run_compare(_spec(cifar10, seeds=(1,), variants=("backsolve",), epochs=3), out, log=lambda msg: None)
    recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3] and recs[1] == last
    (out / "compare_curves.png").unlink()
    assert main(["compare", "--report-only", str(out)]) == 0
    assert (out / "compare_curves.png").is_file()
    with pytest.raises(ValueError, match="other settings"):
        run_compare(_spec(cifar10, lr=0.1), out, log=lambda msg: None)


def test_compare_command_cifar100(tmp_path, capsys):
    write_fake_cifar(tmp_path / "data", "cifar100", n_train=20, n_test=10)
    out = tmp_path / "c100"
    argv = [
        "compare", "--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--seeds", "0",
        "--epochs", "1", "--batch-size", "10", "--subset", "0", "--grad-batch", "3", "--device", "cpu",
        "--method", "rk4", "--n-steps", "1", "--no-progress", "--out", str(out),
    ]
    assert main(argv) == 0
    spec = load_spec(out)
    assert spec.dataset == "cifar100" and spec.method == "rk4" and spec.seeds == (0,)
    for variant in ("plain", "anode", "backsolve"):
        ckpt = load_checkpoint(run_folder(out, variant, 0) / "last.pt")
        assert ckpt["num_classes"] == 100 and ckpt["dataset"] == "cifar100"
        assert run_status(run_folder(out, variant, 0), 1) == "done"
    assert "| backsolve | 1 (0) | 1 |" in (out / "compare_table.md").read_text()
    assert main(["compare", "--report-only", str(tmp_path / "missing")]) == 2
    assert "no comparison" in capsys.readouterr().err


def test_diverged_run_is_recorded_and_not_retried(cifar10, tmp_path, monkeypatch):
    import anode_workbench.train

    real_train = anode_workbench.train.train
    calls = []

    def fake_train(config, callbacks=()):
        calls.append(config.gradient)
        if config.gradient == "backsolve":
            raise FloatingPointError("training loss is nan in epoch 1")
        return real_train(config, callbacks)

    monkeypatch.setattr(anode_workbench.train, "train", fake_train)
    out = tmp_path / "div"
    spec = _spec(cifar10, seeds=(0,), epochs=1, variants=("anode", "backsolve"))
    assert run_compare(spec, out, log=lambda msg: None)[("backsolve", 0)] == "diverged"
    assert json.loads((run_folder(out, "backsolve", 0) / "diverged.json").read_text())["epoch"] == 1
    assert run_compare(spec, out, log=lambda msg: None)[("backsolve", 0)] == "skipped-diverged"
    assert calls == ["anode", "backsolve"]
    summary = write_report(out)
    assert summary["backsolve"]["diverged"] == 1 and summary["anode"]["diverged"] == 0


def test_callback_moves_batch_to_model_device():
    model = models.create("resnet_ode_small", 10)
    cb = GradientErrorCallback(torch.randn(2, 3, 32, 32), torch.arange(2), tested=("backsolve",))
    rec = cb(model, 1, Path("."))
    assert set(rec) == {"grad_rel_err_backsolve", "grad_norm"}


def test_interrupt_stops_training_and_still_writes_the_report(cifar10, tmp_path, monkeypatch, capsys):
    import os
    import signal

    import anode_workbench.compare.report
    import anode_workbench.train

    real_train = anode_workbench.train.train

    def interrupt_in_epoch_two(model, epoch, run_dir):
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(anode_workbench.train, "train",
                        lambda config, callbacks=(): real_train(config, [*callbacks, interrupt_in_epoch_two]))
    out = tmp_path / "stopped"
    argv = ["compare", "--data-root", str(cifar10), "--seeds", "0", "--variants", "plain,anode",
            "--epochs", "2", "--batch-size", "10", "--subset", "20", "--test-subset", "10",
            "--grad-batch", "4", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    # The first run stopped in its second epoch, the second never started; the report
    # covers the finished epoch.
    assert run_status(run_folder(out, "plain", 0), 2) == "partial"
    assert run_status(run_folder(out, "anode", 0), 2) == "new"
    assert "| plain | 1 (0) | 1 |" in (out / "compare_table.md").read_text()
    assert (out / "compare_curves.png").stat().st_size > 0

    # A SIGINT that arrives while the report is drawn waits until the report is complete.
    monkeypatch.setattr(anode_workbench.train, "train", lambda config, callbacks=(): None)
    real_plot = anode_workbench.compare.report.plot_curves

    def signalled_plot(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_plot(*args, **kwargs)

    monkeypatch.setattr(anode_workbench.compare.report, "plot_curves", signalled_plot)
    for name in ("compare_curves.png", "compare_gradient_error.png", "summary.json"):
        (out / name).unlink()
    with pytest.raises(KeyboardInterrupt):
        run_compare(_spec(cifar10, seeds=(0,), variants=("plain", "anode")), out, log=lambda msg: None)
    for name in ("compare_curves.png", "compare_gradient_error.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name


def test_interrupt_with_parallel_runs_stops_them_and_starts_no_more(cifar10, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "parallel"
    argv = [sys.executable, "-m", "anode_workbench.cli", "compare", "--data-root",
            str(cifar10), "--seeds", "0,1,2",
            "--epochs", "200", "--batch-size", "10", "--subset", "20", "--test-subset", "10",
            "--grad-batch", "4", "--device", "cpu", "--no-progress", "--jobs", "2", "--out", str(out)]
    # A shell that starts a command in the background sets SIGINT to "ignore" for it, and
    # Python then installs no KeyboardInterrupt handler: start the comparison as a terminal
    # would, with SIGINT at its default, wherever the tests themselves run.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # No time limits: other work on the machine may stretch every step many times over. The
    # work is bounded all the same: a comparison that never wrote an epoch has exited (and
    # fails the first check), one that ignored the interrupt trains its 200 epochs to the end
    # and exits 0 (and fails the return code's check).
    try:
        while not any((run_folder(out, v, 0) / "metrics.jsonl").exists() for v in ("plain", "anode")):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # to the main process only, as `timeout -s INT` does
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:  # a failed check must not leave the comparison training
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    started = [p.name for p in (out / "runs").iterdir() if (p / "config.json").exists()]
    assert len(started) <= 2, started  # the two running; none of the four waiting
    assert (out / "compare_table.md").exists()
