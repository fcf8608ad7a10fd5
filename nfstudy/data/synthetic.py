"""Seeded, class-structured noise images of any size: offline, and learnable."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import check_positive
from .base import ImageDataset, make_dataset

__all__ = ["SYNTHETIC_TRAIN_SIZE", "load_synthetic"]

SYNTHETIC_TRAIN_SIZE = 5000  # load_synthetic's default


def load_synthetic(
    train_size: int = SYNTHETIC_TRAIN_SIZE,
    test_size: int = 1000,
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 0.35,
    image_size: int = 32,
) -> ImageDataset:
    """Seeded, class-structured images: a smooth random prototype per class (a 4x4
    pattern upsampled), plus Gaussian noise of std ``noise`` per pixel."""
    for name, value in (("train_size", train_size), ("test_size", test_size), ("num_classes", num_classes)):
        check_positive(name, value, integer=True)
    g = torch.Generator().manual_seed(int(seed))
    prototypes = torch.randn(num_classes, 3, 4, 4, generator=g)
    prototypes = F.interpolate(prototypes, size=(image_size, image_size), mode="bicubic", align_corners=False)

    def draw(n):
        labels = torch.randint(0, num_classes, (n,), generator=g)
        x = prototypes[labels] + noise * torch.randn(n, 3, image_size, image_size, generator=g)
        return (torch.sigmoid(x) * 255).round().to(torch.uint8), labels

    return make_dataset("synthetic", *draw(train_size), *draw(test_size), [f"class{i}" for i in range(num_classes)])
