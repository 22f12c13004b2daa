"""Batched image operations shared by training, serving and the attacker.

Images travel as ``uint8 [B, C, H, W]`` until the model needs them; :func:`normalize` turns them into
``(x / 255 - mean) / std`` floats, with the checkpoint's statistics on the server and the dataset's in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32) -> Tensor:
    """``(x / 255 - mean) / std`` per channel for uint8 images, or ``(x - mean) / std`` for floats in [0, 1]."""
    x = images.to(dtype)
    if images.dtype == torch.uint8:
        x = x / 255.0
    shape = (1, len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=dtype, device=x.device).view(shape)
    std_t = torch.tensor(std, dtype=dtype, device=x.device).view(shape)
    return (x - mean_t) / std_t


def pad_crop_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random ``H x W`` crop of the zero-padded batch (pad ``padding`` px per side), and a horizontal flip
    with probability 1/2 when ``flip``. One offset and flip per image, drawn from ``generator`` (on CPU)."""
    batch, channels, height, width = images.shape
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
        rows = (dy[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
        b = torch.arange(batch, device=images.device)[:, None, None, None]
        c = torch.arange(channels, device=images.device)[None, :, None, None]
        images = padded[b, c, rows, cols]
    if flip:
        flips = (torch.rand(batch, generator=generator) < 0.5).to(images.device)[:, None, None, None]
        images = torch.where(flips, images.flip(-1), images)
    return images
