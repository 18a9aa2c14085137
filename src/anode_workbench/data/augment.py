"""Batched image augmentation on tensors (CPU or GPU, no PIL).

The standard CIFAR training augmentation of He et al. (2016), "Deep Residual Learning for
Image Recognition", CVPR, Sec. 4.2: pad 4 pixels on each side with zeros, take a random
32x32 crop, and flip horizontally with probability 1/2. Every function works on a whole
batch ``[B, C, H, W]`` at once, draws one independent random choice per image, and uses
no Python loop over images.

Dtypes: ``uint8`` input is converted to float32 in [0, 1] (divided by 255); floating input
is cast to float32 without rescaling. All outputs are float32 on the input's device.

Randomness: pass a :class:`torch.Generator` for reproducible results. It may live on the
CPU or on the input's device; the random numbers are drawn on the generator's device and
moved to the input's device, so a given generator state yields the same augmentation on
every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["normalize", "random_crop", "random_hflip", "to_float"]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Convert images to float32: uint8 values are scaled to [0, 1], floats only cast.

    Raises:
        TypeError: ``x`` is neither uint8 nor floating point.
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if x.is_floating_point():
        return x.to(torch.float32)
    raise TypeError(f"expected uint8 or floating-point images, got {x.dtype}")


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images [B, C, H, W], got shape {tuple(x.shape)}")


def _gen_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def random_crop(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random ``H x W`` crop of each image after zero padding by ``padding`` on every side.

    Equivalent to translating each image by an independent random offset ``(dy, dx)``,
    ``dy, dx`` uniform in ``{-padding, ..., padding}``, filling uncovered pixels with 0:
    ``out[b, :, i, j] = x[b, :, i + dy_b, j + dx_b]`` where that index is inside the image,
    else 0. The offsets are drawn as ``torch.randint(0, 2 * padding + 1, (2, B))`` from
    ``generator`` (row 0 vertical, row 1 horizontal, both shifted by ``-padding``).

    Args:
        x: images ``[B, C, H, W]``, uint8 or floating point.
        padding: zero padding on each side (>= 0); 0 returns the images unchanged.
        generator: source of randomness (default: the global generator).

    Returns:
        float32 ``[B, C, H, W]`` (uint8 input scaled to [0, 1]; zeros are added after scaling).

    Raises:
        ValueError: ``x`` is not 4-D or ``padding`` is negative.
        TypeError: ``x`` is neither uint8 nor floating point.
    """
    _check_batch(x)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    x = to_float(x)
    if padding == 0 or x.shape[0] == 0:
        return x
    b, c, h, w = x.shape
    offsets = torch.randint(
        0, 2 * padding + 1, (2, b), generator=generator, device=_gen_device(x, generator)
    ).to(x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # [B, H] in padded coords
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices separated by a slice go first: result is [B, H, W, C].
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Flip each image left-right independently with probability ``p``.

    Image ``b`` is flipped iff ``u[b] < p`` where ``u = torch.rand(B)`` is drawn from
    ``generator`` (default: the global generator).

    Args:
        x: images ``[B, C, H, W]``, uint8 or floating point.
        generator: source of randomness.
        p: flip probability in [0, 1].

    Returns:
        float32 ``[B, C, H, W]`` (uint8 input scaled to [0, 1]).

    Raises:
        ValueError: ``x`` is not 4-D or ``p`` is outside [0, 1].
        TypeError: ``x`` is neither uint8 nor floating point.
    """
    _check_batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    x = to_float(x)
    u = torch.rand(x.shape[0], generator=generator, device=_gen_device(x, generator))
    flip = (u < p).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Per-channel standardisation ``(x - mean[c]) / std[c]``.

    Args:
        x: images ``[B, C, H, W]`` (or ``[C, H, W]``), uint8 (scaled to [0, 1] first) or
            floating point.
        mean, std: ``C`` values each, in the units of the float images (e.g.
            :data:`~anode_workbench.data.CIFAR10_MEAN`, :data:`~anode_workbench.data.CIFAR10_STD`).

    Returns:
        float32 tensor of the same shape as ``x``.

    Raises:
        ValueError: ``mean``/``std`` do not have one entry per channel, or ``std`` is a
            sequence with a non-positive entry (tensors are not inspected, to avoid a
            device synchronisation).
        TypeError: ``x`` is neither uint8 nor floating point.
    """
    x = to_float(x)
    if x.dim() < 3:
        raise ValueError(f"expected images [..., C, H, W], got shape {tuple(x.shape)}")
    if not isinstance(std, torch.Tensor) and any(v <= 0 for v in std):
        raise ValueError(f"std entries must be positive, got {list(std)}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(-1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(-1)
    c = x.shape[-3]
    if m.numel() != c or s.numel() != c:
        raise ValueError(f"mean and std need {c} entries (one per channel), got {m.numel()} and {s.numel()}")
    return (x - m[:, None, None]) / s[:, None, None]
