"""scikit-learn's handwritten digits: real images, bundled, always available offline."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..params import check_positive
from .base import ImageDataset, make_dataset

__all__ = ["DIGITS_IMAGES", "load_digits"]

DIGITS_IMAGES = 1797  # scikit-learn's digits; every 6th is a test image


def load_digits(image_size: int = 32) -> ImageDataset:
    """scikit-learn's handwritten digits as ``image_size``-square x 3 uint8 images (32 by
    default, bilinear upsampling; 8 is their native resolution, 16x cheaper to train on);
    every 6th is a test image."""
    from sklearn.datasets import load_digits as sklearn_digits

    check_positive("image_size", image_size, integer=True)
    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # N,1,8,8 in [0,1]
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    test = torch.arange(len(labels)) % 6 == 5
    return make_dataset("digits", images[~test], labels[~test], images[test], labels[test], [str(d) for d in range(10)])
