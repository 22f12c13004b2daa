"""A deterministic, learnable synthetic dataset for tests and smoke runs.

Each class has a fixed smooth random template; an image is its class template plus Gaussian noise and a
random brightness shift, clipped to uint8. The same ``seed`` always gives the same bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.data.base import InMemoryImages
from training.data.info import DatasetInfo


def make_synthetic(info: DatasetInfo, split: str, count: int, seed: int, noise: float = 0.35) -> InMemoryImages:
    templates_gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(info.num_classes, info.in_channels, 4, 4, generator=templates_gen)
    templates = F.interpolate(coarse, size=(info.image_size, info.image_size), mode="bilinear", align_corners=False)
    sample_gen = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
    labels = torch.arange(count) % info.num_classes
    labels = labels[torch.randperm(count, generator=sample_gen)]
    shift = (torch.rand(count, 1, 1, 1, generator=sample_gen) - 0.5) * 0.3
    pixels = templates[labels] + shift + noise * torch.randn(count, info.in_channels, info.image_size, info.image_size, generator=sample_gen)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return InMemoryImages(info, split, images, labels)
