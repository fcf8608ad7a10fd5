"""What every dataset shares: :class:`ImageDataset`, the error :class:`DatasetNotFoundError`,
where datasets live (:func:`data_root`) and the per-channel statistics."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..params import check_choice

__all__ = ["DatasetNotFoundError", "ImageDataset", "channel_stats", "data_root", "fit_images", "make_dataset", "md5_of_file"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing or corrupt; the message says how to fix it."""


@dataclass(frozen=True)
class ImageDataset:
    """A dataset's two splits as uint8 ``N x C x H x W`` tensors, and its statistics."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, in [0, 1] units, over the train split
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        check_choice("split", name, ("train", "test"))
        return (self.train_images, self.train_labels) if name == "train" else (self.test_images, self.test_labels)

    def loader(self, split: str = "train", batch_size: int = 128, **kwargs):
        """A :class:`~nfstudy.data.DeviceLoader` over ``split``; kwargs as for DeviceLoader."""
        from .loader import DeviceLoader

        images, labels = self.split(split)
        return DeviceLoader(images, labels, self.mean, self.std, batch_size, **kwargs)

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
            f"classes={self.num_classes}, shape={tuple(self.train_images.shape[1:])})"
        )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and standard deviation of each channel of uint8 ``images``, in [0, 1] units.

    From each channel's histogram of the 256 values (exact sums in float64), so the
    statistics of 60,000 images cost 256 numbers per channel, not a float copy of them."""
    means, stds = [], []
    values = torch.arange(256, dtype=torch.float64) / 255.0
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        mean = (counts * values).sum() / n
        means.append(float(mean))
        stds.append(float(((counts * (values - mean) ** 2).sum() / n).sqrt()))
    return tuple(means), tuple(stds)


def make_dataset(name, train_x, train_y, test_x, test_y, classes) -> ImageDataset:
    """An :class:`ImageDataset` normalised by its train split's per-channel statistics."""
    mean, std = channel_stats(train_x)
    return ImageDataset(name, train_x, train_y, test_x, test_y, tuple(classes), mean, std)


def data_root() -> Path:
    """Where datasets live: ``$NFSTUDY_DATA``, else ``data/`` in the repository checkout
    that holds this package, else ``~/.cache/nfstudy/data``."""
    if os.environ.get("NFSTUDY_DATA"):
        return Path(os.environ["NFSTUDY_DATA"]).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "data"
    return Path.home() / ".cache" / "nfstudy" / "data"


def md5_of_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fit_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``N x C x h x w`` images on a ``size x size`` canvas, centred, the rest zeros.

    Images that fit are enlarged by the largest whole factor that still fits (each pixel
    repeated: no value is invented, 8x8 -> 32x32 fills the canvas) and zero-padded; larger
    ones are shrunk, keeping their aspect ratio, so the longer side is ``size`` (bilinear
    with antialiasing, as torchvision's ``Resize``), then padded. 28x28 at 32 is padded by
    2 pixels a side."""
    n, c, h, w = images.shape
    if h > size or w > size:
        scale = size / max(h, w)
        shape = (max(1, round(h * scale)), max(1, round(w * scale)))
        images = torch.nn.functional.interpolate(images.float(), size=shape, mode="bilinear", antialias=True, align_corners=False)
        images = images.round_().clamp_(0, 255).to(torch.uint8)
    elif (k := size // max(h, w)) > 1:
        images = images.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)
    h, w = images.shape[2:]
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(images, (left, size - w - left, top, size - h - top))
