"""Datasets and a device-resident mini-batch loader with on-device augmentation.

Datasets (:data:`DATASETS`), each an :class:`ImageDataset` of uint8 images
``N x 3 x 32 x 32`` with integer labels and a fixed train/test split:

* ``cifar10``: CIFAR-10 through torchvision, downloaded into :func:`data_root`
  (``$NFSTUDY_DATA``, else ``data/`` in the repository) and checked against
  torchvision's MD5 checksums. Offline, put ``cifar-10-python.tar.gz`` (or its extracted
  ``cifar-10-batches-py/`` folder) there; the error message says exactly where. A tarball
  there is checked against its MD5 and extracted without the network (a corrupt one is
  named, with its MD5). ``NFSTUDY_OFFLINE=1`` skips the download attempt.
* ``digits``: scikit-learn's bundled handwritten digits (1797 real 8x8 grey images,
  0-9), upsampled to 32x32 (or kept at 8x8: ``image_size=8``) and repeated over 3 channels; every 6th image is a test
  image (1498 train, 299 test). Offline, always available.
* ``synthetic``: seeded, class-structured images of any size: a smooth random
  prototype per class plus per-image noise, so a network can learn it.

:class:`DeviceLoader` keeps a whole split on the run's device as uint8 and produces
normalised float batches there; the pad-4 random crop and horizontal flip are a single
gather on device tensors. Shuffling and augmentation come from a CPU generator seeded
by ``(seed, epoch)``, so a given seed gives the same batches on every device and an
epoch can be replayed on its own (resuming mid-training).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .params import check_choice, check_positive

__all__ = [
    "CIFAR10_MD5",
    "DATASETS",
    "TRAIN_IMAGES",
    "DatasetNotFoundError",
    "DeviceLoader",
    "ImageDataset",
    "data_root",
    "load_dataset",
    "prepare_cifar10",
    "random_crop_flip",
]

DATASETS = ("cifar10", "digits", "synthetic")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # of cifar-10-python.tar.gz (torchvision's value)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
DIGITS_IMAGES = 1797  # scikit-learn's digits; every 6th is a test image
SYNTHETIC_TRAIN_SIZE = 5000  # load_synthetic's default
# Training images of each dataset, known without loading it (to check a batch size early).
TRAIN_IMAGES = {"cifar10": 50_000, "digits": DIGITS_IMAGES - DIGITS_IMAGES // 6, "synthetic": SYNTHETIC_TRAIN_SIZE}


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

    def loader(self, split: str = "train", batch_size: int = 128, **kwargs) -> DeviceLoader:
        """A :class:`DeviceLoader` over ``split``; kwargs as for DeviceLoader."""
        images, labels = self.split(split)
        return DeviceLoader(images, labels, self.mean, self.std, batch_size, **kwargs)

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
            f"classes={self.num_classes}, shape={tuple(self.train_images.shape[1:])})"
        )


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.double().div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1, unbiased=False).tolist())


def _make(name, train_x, train_y, test_x, test_y, classes) -> ImageDataset:
    mean, std = _channel_stats(train_x)
    return ImageDataset(name, train_x, train_y, test_x, test_y, tuple(classes), mean, std)


def data_root() -> Path:
    """Where datasets live: ``$NFSTUDY_DATA``, else ``data/`` in the repository checkout
    that holds this package, else ``~/.cache/nfstudy/data``."""
    if os.environ.get("NFSTUDY_DATA"):
        return Path(os.environ["NFSTUDY_DATA"]).expanduser()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / "data"
    return Path.home() / ".cache" / "nfstudy" / "data"


# --------------------------------------------------------------------------- cifar10


def _cifar10_class(checksums: Mapping[str, str] | None):
    from .compat import import_torchvision

    base = import_torchvision().datasets.CIFAR10
    if not checksums:
        return base

    class CIFAR10WithChecksums(base):  # same loader, other expected MD5s (tests, mirrors)
        train_list = [[f, checksums.get(f, md5)] for f, md5 in base.train_list]
        test_list = [[f, checksums.get(f, md5)] for f, md5 in base.test_list]
        meta = {**base.meta, "md5": checksums.get(base.meta["filename"], base.meta["md5"])}
        tgz_md5 = checksums.get(base.filename, base.tgz_md5)

    return CIFAR10WithChecksums


def _offline_help(root: Path) -> str:
    return (
        f"To use CIFAR-10 offline, copy cifar-10-python.tar.gz ({CIFAR10_URL}, md5 {CIFAR10_MD5}) "
        f"into {root}/ , or its extracted folder to {root / CIFAR10_FOLDER}/ ; "
        "or set NFSTUDY_DATA to the folder that holds either. For a run without CIFAR-10, "
        "use DATASET=digits (bundled with scikit-learn) or DATASET=synthetic."
    )


def _corrupt_files(cls, root: Path) -> list[str]:
    from .compat import import_torchvision

    check_integrity = import_torchvision().datasets.utils.check_integrity
    folder = root / cls.base_folder
    entries = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    return [name for name, md5 in entries if not check_integrity(str(folder / name), md5)]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _extract(tarball: Path, root: Path, folder_name: str) -> None:
    """Extract ``tarball`` into ``root`` through a temporary folder and one rename, so a
    cut extraction never looks like a dataset."""
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise DatasetNotFoundError(
                f"{tarball} is corrupt ({type(error).__name__}: {error}; md5 {_md5(tarball)}): delete it and copy a good "
                f"one ({CIFAR10_URL}, md5 {CIFAR10_MD5}) into {root}/"
            ) from None
        if not (scratch / folder_name).is_dir():
            raise DatasetNotFoundError(
                f"{tarball} holds no {folder_name}/: it is not the CIFAR-10 python archive; delete it and copy "
                f"{CIFAR10_URL} (md5 {CIFAR10_MD5}) into {root}/"
            )
        os.rename(scratch / folder_name, root / folder_name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prepare_cifar10(root: str | os.PathLike | None = None, download: bool | None = None, checksums: Mapping[str, str] | None = None):
    """Make sure CIFAR-10 is in ``root``, MD5-verified: extract a verified tarball found
    there (no network), else download it when ``download``; returns the torchvision
    dataset class to read it with. Every failure is a :class:`DatasetNotFoundError` that
    names the file and the fix (a corrupt tarball with its MD5)."""
    root = Path(root) if root is not None else data_root()
    if download is None:  # NFSTUDY_OFFLINE=1: never try the network
        download = os.environ.get("NFSTUDY_OFFLINE", "0") in ("", "0")
    if root.exists() and not root.is_dir():
        raise DatasetNotFoundError(f"the data folder {root} is a file, not a folder: point NFSTUDY_DATA at a folder")
    cls = _cifar10_class(checksums)
    folder = root / cls.base_folder
    tarball = root / cls.filename
    if not folder.is_dir() and tarball.is_file():
        found = _md5(tarball)
        if found != cls.tgz_md5:
            raise DatasetNotFoundError(
                f"{tarball} is corrupt: its md5 is {found}, not {cls.tgz_md5} (a cut download, or another file). "
                f"Delete it and copy a good one ({CIFAR10_URL}) into {root}/ , or set NFSTUDY_DATA to a folder that holds one."
            )
        _extract(tarball, root, cls.base_folder)
    if folder.is_dir():
        bad = _corrupt_files(cls, root)
        if bad:
            raise DatasetNotFoundError(
                f"CIFAR-10 in {folder} is corrupt or incomplete: {', '.join(bad)} missing or failing its MD5 "
                f"check. Delete {folder} (and {tarball} if present) and run again to re-download "
                f"and extract it. {_offline_help(root)}"
            )
    elif download:
        root.mkdir(parents=True, exist_ok=True)
        try:
            cls(str(root), train=True, download=True)
        except Exception as error:  # URLError, OSError, ...
            raise DatasetNotFoundError(
                f"CIFAR-10 is not in {root} and could not be downloaded ({type(error).__name__}: {error}). {_offline_help(root)}"
            ) from error
    else:
        raise DatasetNotFoundError(f"CIFAR-10 is not in {root}. {_offline_help(root)}")
    return cls


def load_cifar10(
    root: str | os.PathLike | None = None, download: bool | None = None, checksums: Mapping[str, str] | None = None
) -> ImageDataset:
    """CIFAR-10 via torchvision, MD5-verified (:func:`prepare_cifar10`). ``checksums``
    replaces torchvision's expected MD5s per file name (``data_batch_1``, ...,
    ``test_batch``, ``batches.meta``, ``cifar-10-python.tar.gz``): for tests and for
    mirrors that repackage the data."""
    root = Path(root) if root is not None else data_root()
    cls = prepare_cifar10(root, download, checksums)
    train = cls(str(root), train=True, download=False)
    test = cls(str(root), train=False, download=False)

    def tensors(split):
        images = torch.from_numpy(np.ascontiguousarray(split.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(split.targets, dtype=torch.int64)

    return _make("cifar10", *tensors(train), *tensors(test), train.classes)


# --------------------------------------------------------------------------- digits


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
    return _make("digits", images[~test], labels[~test], images[test], labels[test], [str(d) for d in range(10)])


# --------------------------------------------------------------------------- synthetic


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

    return _make("synthetic", *draw(train_size), *draw(test_size), [f"class{i}" for i in range(num_classes)])


def load_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> ImageDataset:
    """A dataset by name (:data:`DATASETS`); kwargs go to its loader."""
    check_choice("dataset", name, DATASETS)
    if name == "cifar10":
        return load_cifar10(root, **kwargs)
    if name == "digits":
        return load_digits(**kwargs)
    return load_synthetic(**kwargs)


# --------------------------------------------------------------------------- loader


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
