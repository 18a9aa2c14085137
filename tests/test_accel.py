"""Execution settings (anode.accel): device defaults, bad input, memory format, autocast."""

import pytest
import torch

from anode.accel import Acceleration


def test_device_defaults():
    cpu = Acceleration.for_device("cpu")
    assert (cpu.precision, cpu.channels_last, cpu.compile, cpu.deterministic) == ("fp32", False, False, False)
    cuda = Acceleration.for_device("cuda")
    assert (cuda.precision, cuda.channels_last) == ("bf16", True)
    assert Acceleration.for_device("cuda", precision="fp32", channels_last=False) == Acceleration()


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="fp16"):
        Acceleration(precision="fp16")


def test_channels_last_input_and_model():
    acc = Acceleration(channels_last=True)
    x = acc.prepare_input(torch.randn(2, 3, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last)
    conv = acc.prepare_model(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert acc.prepare_input(torch.randn(2, 3)).shape == (2, 3)


def test_bf16_autocast_on_cpu():
    lin = torch.nn.Linear(4, 4)
    with Acceleration(precision="bf16").autocast("cpu"):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with Acceleration().autocast("cpu"):
        assert lin(torch.randn(2, 4)).dtype == torch.float32
