"""What a run leaves behind and how it is evaluated: resolved settings in config.json, file
permissions, per-epoch test subsets, the one-cycle schedule, plots, evaluation of
checkpoints, weights-only files and plain state_dicts, and the compact CPU model."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from anode import models
from anode_workbench.cli import main
from anode_workbench.files import atomic_write
from anode_workbench.train import (
    CPU_PRESET,
    EpochSchedule,
    TrainConfig,
    evaluate_checkpoint,
    load_checkpoint,
    lr_factor,
    resolve_config,
    train,
)
from anode_workbench.train.lr_schedule import ONECYCLE_START, ONECYCLE_WARMUP
from anode_workbench.train.metrics import curves_figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifar_files import tiny_config  # noqa: E402

TINY = "_test_run_tiny_ode"
PLAIN = "_test_run_tiny_plain"



def _tiny(num_classes: int = 10, **ode_options):
    return models.ResNet((4, 8), (2, 2), num_classes, ode=True, **ode_options)


def _plain(num_classes: int = 10, **ode_options):
    return models.ResNet((4, 8), (2, 2), num_classes, ode=False, **ode_options)


if TINY not in models.list_models():
    models.register_model(_tiny, name=TINY)
    models.register_model(_plain, name=PLAIN)


def _config(data_root, out, **kw) -> TrainConfig:
    return tiny_config(data_root, out, **{"model": TINY, **kw})


# --- files --------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_honours_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "f.txt", lambda f: f.write(b"x"))
        with open(tmp_path / "ordinary.txt", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~umask
    assert mode == stat.S_IMODE((tmp_path / "ordinary.txt").stat().st_mode)


def test_run_files_are_readable_like_ordinary_files(data_root, tmp_path):
    old = os.umask(0o022)
    try:
        train(_config(data_root, tmp_path / "run", epochs=1, plots=True))
    finally:
        os.umask(old)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["config.json", "curves.png", "last.pt", "metrics.csv", "metrics.jsonl"]
    for p in (tmp_path / "run").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name


# --- resolved settings ------------------------------------------------------------------------


def test_config_json_states_the_ode_defaults(data_root, tmp_path):
    r = train(_config(data_root, tmp_path / "ode", epochs=1))
    saved = json.loads((r.run_dir / "config.json").read_text())
    assert (saved["method"], saved["n_steps"], saved["gradient"], saved["schedule"]) == (
        "euler", 2, "anode", "recompute"
    )
    assert saved["label_smoothing"] == CPU_PRESET["label_smoothing"] and saved["test_subset"] == 0
    assert saved["epoch_test_subset"] == CPU_PRESET["epoch_test_subset"]  # larger than the test set here
    assert r.metrics[0]["test_images"] == 20
    # The checkpoint keeps the options that were given to create(), as before.
    assert load_checkpoint(r.run_dir)["ode_options"] == {}

    direct = train(_config(data_root, tmp_path / "direct", epochs=1, gradient="direct", method="midpoint"))
    saved = json.loads((direct.run_dir / "config.json").read_text())
    assert (saved["method"], saved["gradient"], saved["schedule"]) == ("midpoint", "direct", None)

    plain = train(_config(data_root, tmp_path / "plain", epochs=1, model=PLAIN))
    saved = json.loads((plain.run_dir / "config.json").read_text())
    assert all(saved[k] is None for k in ("method", "n_steps", "gradient", "schedule"))


def test_cpu_preset_values_tied_to_other_settings():
    cpu = resolve_config(TrainConfig(), "cpu")
    assert (cpu.model, cpu.label_smoothing, cpu.lr_schedule) == ("resnet_ode_tiny", 0.1, "onecycle")
    assert cpu.epoch_test_subset == CPU_PRESET["epoch_test_subset"] > 0 and cpu.test_subset == 0
    mine = resolve_config(TrainConfig(model="resnet_tiny", test_subset=1000), "cpu")
    assert (mine.method, mine.n_steps, mine.label_smoothing) == (None, None, 0.1)
    assert mine.epoch_test_subset == 0  # a chosen test set is evaluated whole every epoch
    mine = resolve_config(TrainConfig(lr_schedule="cosine"), "cpu")
    assert (mine.model, mine.label_smoothing) == ("resnet_ode_tiny", 0.0)
    gpu = resolve_config(TrainConfig(), "cuda")
    assert (gpu.label_smoothing, gpu.epoch_test_subset) == (0.0, 0)


@pytest.mark.parametrize(
    "bad",
    [dict(label_smoothing=1.0), dict(label_smoothing=-0.1), dict(epoch_test_subset=-1), dict(threads=0)],
)
def test_config_rejects_bad_new_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad).check()


def test_threads_are_set_for_the_run_and_restored(data_root, tmp_path):
    before = torch.get_num_threads()
    seen = []
    train(_config(data_root, tmp_path / "run", epochs=1, threads=2),
          callbacks=[lambda m, e, d: seen.append(torch.get_num_threads())])
    assert seen == [2] and torch.get_num_threads() == before


# --- evaluation during training ------------------------------------------------------------


def test_epochs_before_the_last_use_the_epoch_test_subset(data_root, tmp_path):
    r = train(_config(data_root, tmp_path / "run", epochs=3, epoch_test_subset=10, plots=True))
    assert [m["test_images"] for m in r.metrics] == [10, 10, 20]
    full = evaluate_checkpoint(r.run_dir, device="cpu")
    assert full["n_images"] == 20
    assert full["test_acc"] == pytest.approx(r.metrics[-1]["test_acc"], abs=1e-12)
    # Extending the run: the new last epoch is scored on the whole test set again.
    r = train(_config(data_root, tmp_path / "run", epochs=4, epoch_test_subset=10, resume=True))
    assert [m["test_images"] for m in r.metrics] == [10, 10, 20, 20]


def test_epoch_test_subset_is_drawn_from_the_runs_test_subset(data_root, tmp_path):
    r = train(_config(data_root, tmp_path / "run", epochs=2, test_subset=16, epoch_test_subset=6))
    assert [m["test_images"] for m in r.metrics] == [6, 16]


def test_evaluation_shows_a_progress_bar(data_root, tmp_path, capsys):
    train(_config(data_root, tmp_path / "run", epochs=1, progress=True))
    err = capsys.readouterr().err
    assert "test:" in err or "test " in err
    assert "(20 images)" in err


# --- learning-rate schedule ------------------------------------------------------------------


def test_onecycle_factor_shape():
    epochs = 4
    assert lr_factor("onecycle", 0, epochs) == pytest.approx(ONECYCLE_START)
    assert lr_factor("onecycle", ONECYCLE_WARMUP * epochs, epochs) == pytest.approx(1.0)
    assert lr_factor("onecycle", epochs, epochs) == pytest.approx(0.0)
    pos = [i / 100 * epochs for i in range(101)]
    f = [lr_factor("onecycle", p, epochs) for p in pos]
    peak = f.index(max(f))
    assert all(a < b for a, b in zip(f[:peak], f[1 : peak + 1]))
    assert all(a > b for a, b in zip(f[peak:-1], f[peak + 1 :]))
    # The per-epoch kinds ignore the position within the epoch.
    assert lr_factor("cosine", 1.7, epochs) == lr_factor("cosine", 1, epochs)
    with pytest.raises(ValueError, match="onecycle"):
        lr_factor("linear", 0, epochs)


def test_onecycle_sets_the_rate_before_every_step(data_root, tmp_path):
    rates = []
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = EpochSchedule(opt, "onecycle", 2)
    assert sched.per_step
    for e in range(2):
        for i in range(3):
            sched.set_position(e + i / 3)
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
        sched.step()
    expected = [0.2 * lr_factor("onecycle", e + i / 3, 2) for e in range(2) for i in range(3)]
    assert rates == pytest.approx(expected)
    r = train(_config(data_root, tmp_path / "run", epochs=2, lr=0.2, lr_schedule="onecycle"))
    # 48 images in batches of 16: 3 steps per epoch; the record holds their mean rate.
    for e, m in enumerate(r.metrics):
        assert m["lr"] == pytest.approx(sum(expected[3 * e : 3 * e + 3]) / 3)


def test_onecycle_and_label_smoothing_resume_exactly(data_root, tmp_path):
    kw = dict(lr_schedule="onecycle", label_smoothing=0.1, lr=0.1)
    straight = train(_config(data_root, tmp_path / "straight", **kw))

    class Killed(Exception):
        pass

    def kill_in_epoch_2(model, epoch, run_dir):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(_config(data_root, tmp_path / "split", **kw), callbacks=[kill_in_epoch_2])
    resumed = train(_config(data_root, tmp_path / "split", **kw, resume=True))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.metrics[-1]["train_loss"] == resumed.metrics[-1]["train_loss"]


def test_label_smoothing_changes_the_training_loss_only(data_root, tmp_path):
    plain = train(_config(data_root, tmp_path / "a", epochs=1, label_smoothing=0.0))
    smooth = train(_config(data_root, tmp_path / "b", epochs=1, label_smoothing=0.5))
    # Same first step, different loss value: the smoothed loss of near-uniform predictions
    # is close to the plain one but not equal; the weights then differ.
    assert plain.metrics[0]["train_loss"] != smooth.metrics[0]["train_loss"]
    a, b = plain.model.state_dict(), smooth.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_resuming_a_checkpoint_without_the_newer_settings(data_root, tmp_path):
    train(_config(data_root, tmp_path / "run", epochs=1))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for key in ("label_smoothing", "epoch_test_subset", "threads"):
        del ckpt["args"][key]
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    r = train(_config(data_root, tmp_path / "run", epochs=2, resume=True))
    assert (r.config.label_smoothing, r.config.epoch_test_subset) == (0.0, 0)


# --- plots ------------------------------------------------------------------------------------


def test_curves_have_whole_epoch_ticks_and_a_title():
    records = [
        dict(epoch=e, train_loss=2.0 / e, test_loss=2.1 / e, train_acc=0.2 * e, test_acc=0.2 * e,
             test_images=10 if e < 3 else 20)
        for e in (1, 2, 3)
    ]
    fig = curves_figure(records, "run-x: resnet_ode_tiny")
    assert fig._suptitle.get_text() == "run-x: resnet_ode_tiny"
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert labels == ["train acc", "test acc (10 images; last: 20)"]


# --- evaluating saved models ----------------------------------------------------------------


def test_evaluate_uses_the_runs_test_subset_and_says_so(data_root, tmp_path, capsys):
    r = train(_config(data_root, tmp_path / "run", epochs=1, test_subset=10))
    res = evaluate_checkpoint(r.run_dir, device="cpu")
    assert (res["n_images"], res["test_subset"]) == (10, 10)
    assert res["test_acc"] == pytest.approx(r.metrics[-1]["test_acc"], abs=1e-12)
    assert evaluate_checkpoint(r.run_dir, device="cpu", subset=0)["n_images"] == 20
    assert main(["evaluate", str(r.run_dir), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "10 test images, the run's class-balanced subset; --subset 0 for all" in out
    assert main(["evaluate", str(r.run_dir), "--device", "cpu", "--subset", "0", "--no-progress"]) == 0
    assert "all 20 test images" in capsys.readouterr().out
    with pytest.raises(ValueError, match="larger than the 20 test images"):
        evaluate_checkpoint(r.run_dir, device="cpu", subset=50)


def test_evaluate_weights_only_files_and_plain_state_dicts(data_root, tmp_path, capsys):
    r = train(_config(data_root, tmp_path / "run", epochs=1))
    reference = evaluate_checkpoint(r.run_dir, device="cpu")
    state = r.model.state_dict()

    torch.save({"model_name": TINY, "num_classes": 10, "model_state": state}, tmp_path / "weights.pt")
    res = evaluate_checkpoint(tmp_path / "weights.pt", device="cpu", data_root=str(data_root))
    assert res["kind"] == "weights" and res["epoch"] is None
    assert res["test_acc"] == reference["test_acc"]
    assert res["test_loss"] == pytest.approx(reference["test_loss"])

    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="--model NAME"):
        evaluate_checkpoint(tmp_path / "state.pt", device="cpu", data_root=str(data_root))
    res = evaluate_checkpoint(tmp_path / "state.pt", device="cpu", data_root=str(data_root), model=TINY)
    assert res["kind"] == "state_dict" and res["test_acc"] == reference["test_acc"]

    # Saved from a DistributedDataParallel wrapper.
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    res = evaluate_checkpoint(tmp_path / "ddp.pt", device="cpu", data_root=str(data_root), model=TINY)
    assert res["test_acc"] == reference["test_acc"]

    # The command line, and clear errors for weights of another model and for other files.
    assert main(["evaluate", str(tmp_path / "state.pt"), "--model", TINY, "--data-root", str(data_root),
                 "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{TINY} on cifar10 (all 20 test images)")
    assert main(["evaluate", str(tmp_path / "state.pt"), "--model", "resnet_ode_tiny",
                 "--data-root", str(data_root), "--device", "cpu"]) == 2
    assert "do not fit model 'resnet_ode_tiny'" in capsys.readouterr().err
    torch.save(r.model, tmp_path / "pickled.pt")
    assert main(["evaluate", str(tmp_path / "pickled.pt"), "--device", "cpu"]) == 2
    assert "save model.state_dict() instead" in capsys.readouterr().err
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    assert main(["evaluate", str(tmp_path / "other.pt"), "--model", TINY, "--device", "cpu"]) == 2
    assert "holds no model weights" in capsys.readouterr().err


def test_evaluate_a_checkpoint_as_its_plain_baseline(data_root, tmp_path):
    r = train(_config(data_root, tmp_path / "run", epochs=1, method="midpoint"))
    res = evaluate_checkpoint(r.run_dir, device="cpu", model=PLAIN)  # same parameter names
    assert res["model_name"] == PLAIN and 0.0 <= res["test_acc"] <= 1.0


def test_cli_passes_the_new_training_flags(data_root, tmp_path):
    out = tmp_path / "run"
    assert main([
        "train", "--data-root", str(data_root), "--model", TINY, "--epochs", "2", "--batch-size", "16",
        "--subset", "32", "--epoch-test-subset", "10", "--label-smoothing", "0.2", "--threads", "1",
        "--lr-schedule", "onecycle", "--out", str(out), "--device", "cpu", "--no-progress",
    ]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["epoch_test_subset"], saved["label_smoothing"], saved["threads"], saved["lr_schedule"]) == (
        10, 0.2, 1, "onecycle"
    )
    assert [m["test_images"] for m in load_checkpoint(out)["metrics"]] == [10, 20]
    with pytest.raises(SystemExit):
        main(["train", "--lr-schedule", "linear"])


def test_cli_interrupt_says_how_to_resume(monkeypatch, capsys):
    import anode_workbench.train

    def interrupted(config, callbacks=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(anode_workbench.train, "train", interrupted)
    assert main(["train", "--out", "runs/x"]) == 130
    assert "continue with: anode train --out runs/x --resume" in capsys.readouterr().err
