"""The device-resident mini-batch loader: a whole split on the run's device as uint8,
normalised float batches produced there, the pad-4 random crop and horizontal flip as one
gather; shuffling and augmentation from a CPU generator seeded by ``(seed, epoch)``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..params import check_positive

__all__ = ["DeviceLoader", "epoch_generator", "random_crop_flip"]


def random_crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Zero-pad by ``pad``, crop each image at ``offsets[i] = (top, left)``, mirror it
    where ``flips[i]``: torchvision's ``RandomCrop(H, padding=pad)`` then
    ``RandomHorizontalFlip``, for a whole batch as one gather."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    device = images.device
    rows = offsets[:, :1] + torch.arange(h, device=device)  # n x h
    cols = offsets[:, 1:] + torch.arange(w, device=device)  # n x w
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a mirrored crop reads its columns backwards
    return padded[
        torch.arange(n, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of ``(seed, epoch)``: every epoch replayable on its own."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class DeviceLoader:
    """Normalised mini-batches of a dataset split that lives on ``device``.

    Iterating yields one epoch of ``(images, labels)`` and advances :attr:`epoch`;
    :meth:`epoch_batches` replays any epoch. With ``world_size > 1`` each global batch
    of ``batch_size`` images is split evenly and this rank gets its contiguous share
    (the global batch is the same whatever the number of ranks).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean,
        std,
        batch_size: int = 128,
        *,
        shuffle: bool = True,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        pad: int = 4,
        rank: int = 0,
        world_size: int = 1,
    ):
        check_positive("batch_size", batch_size, integer=True)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"images must be a uint8 N x C x H x W tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of ranks {world_size}")
        if drop_last and batch_size > len(images):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} images of this split")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.mean = torch.tensor(mean, device=self.device, dtype=dtype).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device, dtype=dtype).view(1, -1, 1, 1) * 255
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.seed, self.dtype, self.channels_last, self.pad = seed, dtype, channels_last, pad
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.epoch_batches(epoch)

    def epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` (does not change :attr:`epoch`)."""
        n = len(self.images)
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.augment:  # drawn for the whole epoch at once, in dataset order, then moved once
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(self.device)
            flips = (torch.rand(n, generator=g) < 0.5).to(self.device)
        order = order.to(self.device)
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world_size > 1:
                index = index[self.rank * len(index) // self.world_size : (self.rank + 1) * len(index) // self.world_size]
            x = self.images[index]
            if self.augment:
                x = random_crop_flip(x, offsets[index], flips[index], self.pad)
            x = (x.to(self.dtype) - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[index]

    def first_batch(self, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The first mini-batch of ``epoch``: what a network sees at initialisation."""
        return next(iter(self.epoch_batches(epoch)))
