"""A one-line description of the machine and library versions, for the head of every table."""

from __future__ import annotations

import os
import platform


def machine(device: str = "cpu") -> str:
    """CPU model and logical CPU count, Python, torch and torchdiffeq versions, and the GPU's
    name when ``device`` is CUDA (this initialises CUDA in the calling process)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"{cpu}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
            f"torch {torch.__version__}")
    try:
        import torchdiffeq

        text += f", torchdiffeq {torchdiffeq.__version__}"
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text
