"""Training recipes (anode_workbench.train.recipes), their command-line options, and the ``*_noact``
ResNets that a recipe's results are reported next to."""

from __future__ import annotations

import types

import pytest
import torch

import anode_workbench.compare
import anode_workbench.train
from anode import models
from anode_workbench.cli import main
from anode_workbench.compare import CompareSpec
from anode_workbench.train import TrainConfig, resolve_config
from anode_workbench.train.recipes import RECIPES, recipe, recipe_config, training_settings

FAST = {
    "model": "resnet18_ode", "method": "euler", "n_steps": 2, "gradient": "anode", "epochs": 20,
    "batch_size": 512, "lr": 0.4, "lr_schedule": "onecycle", "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-4, "label_smoothing": 0.1, "subset": 0, "test_subset": 0,
    "epoch_test_subset": 2000, "augment": True,
}


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_fast_recipe_resolves_to_its_settings_on_every_device(device):
    config = resolve_config(recipe_config("fast"), device)
    for key, value in FAST.items():
        assert getattr(config, key) == value, key
    assert config.extra == {"recipe": "fast"}


def test_recipe_values_are_copies():
    recipe("fast")["epochs"] = 1
    assert RECIPES["fast"]["epochs"] == 20
    assert "model" not in training_settings("fast") and training_settings("fast")["epochs"] == 20


def test_overrides_replace_recipe_values():
    config = resolve_config(recipe_config("fast", epochs=3, lr=0.1, model="resnet18_ode_noact"), "cuda")
    assert (config.epochs, config.lr, config.model, config.batch_size) == (3, 0.1, "resnet18_ode_noact", 512)


def test_unknown_recipe_and_unknown_setting_raise():
    with pytest.raises(ValueError, match=r"unknown recipe 'slow'.*\['fast'\]"):
        recipe_config("slow")
    with pytest.raises(ValueError, match="unknown training settings"):
        recipe_config("fast", epoch=3)


def _capture_train(monkeypatch):
    seen = []

    def fake_train(config, callbacks=()):
        seen.append(config)
        return types.SimpleNamespace(metrics=[], config=config, run_dir="x")

    monkeypatch.setattr(anode_workbench.train, "train", fake_train)
    return seen


def test_train_command_takes_the_recipe_and_flags_override_it(monkeypatch):
    seen = _capture_train(monkeypatch)
    assert main(["train", "--recipe", "fast", "--epochs", "2", "--batch-size", "64", "--no-progress"]) == 0
    config = seen[0]
    assert (config.epochs, config.batch_size, config.lr, config.nesterov) == (2, 64, 0.4, True)
    assert config.extra == {"recipe": "fast"}
    assert main(["train", "--epochs", "2", "--no-progress"]) == 0
    assert seen[1].lr is None and seen[1].extra == {}


def test_train_command_lists_recipes_and_rejects_unknown_ones(monkeypatch, capsys):
    seen = _capture_train(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "list"])
    assert exc.value.code == 0 and "fast" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "fats"])
    assert exc.value.code == 2
    assert "unknown recipe 'fats'" in capsys.readouterr().err
    assert not seen


def test_compare_command_uses_the_recipe_for_every_variant(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(anode_workbench.compare, "run_compare",
                        lambda spec, out, log=None: seen.append(spec) or {})
    argv = ["compare", "--recipe", "fast", "--family", "sqnxt", "--size", "small", "--method", "midpoint",
            "--epochs", "3", "--out", str(tmp_path)]
    assert main(argv) == 0
    spec = seen[0]
    assert (spec.epochs, spec.batch_size, spec.lr, spec.lr_schedule) == (3, 512, 0.4, "onecycle")
    assert spec.extra == {"recipe": "fast"}
    for variant in ("plain", "anode", "backsolve"):
        config = spec.train_config(variant, 0, tmp_path)
        assert (config.nesterov, config.label_smoothing, config.epoch_test_subset) == (True, 0.1, 2000)
        assert config.model == ("sqnxt_small" if variant == "plain" else "sqnxt_ode_small")
        if variant != "plain":
            assert (config.method, config.n_steps, config.gradient) == ("midpoint", 2, variant)


def test_compare_defaults_train_as_before():
    config = resolve_config(CompareSpec().train_config("anode", 0, "."), "cpu")
    assert (config.nesterov, config.label_smoothing, config.epoch_test_subset) == (False, 0.0, 0)


def test_noact_resnet_drops_only_the_last_relu():
    torch.manual_seed(0)
    paper, noact = models.create("resnet_ode_small"), models.create("resnet_ode_small_noact")
    assert sum(p.numel() for p in paper.parameters()) == sum(p.numel() for p in noact.parameters())
    func = noact.ode_blocks()[0].func
    assert not isinstance(func.net[-1], torch.nn.ReLU) and isinstance(paper.ode_blocks()[0].func.net[-1],
                                                                        torch.nn.ReLU)
    z = torch.randn(4, 16, 8, 8)
    assert (func(torch.tensor(0.0), z) < 0).any()
    assert noact(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert "resnet18_ode_noact" in models.list_models("*noact")
    with pytest.raises(ValueError, match="takes no ODE options"):
        models.create("resnet18_noact", method="rk4")


def test_train_config_accepts_recipe_model():
    TrainConfig(**{**FAST, "model": "resnet18_ode_noact"}).check()
