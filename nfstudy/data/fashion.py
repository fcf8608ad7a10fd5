"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, MIT licence): 60,000 train and 10,000 test
images of ten kinds of clothing, 28x28 grey, read from its four IDX files and served at
CIFAR-10's shape, 3 x 32 x 32.

Where the files are found (the first folder that holds all four wins; each file may be
gzipped or not):

1. ``$NFSTUDY_FASHION_MNIST`` (or the ``folder`` argument): when set, only there;
2. ``data_root()/fashion-mnist/``, then ``data_root()/FashionMNIST/raw/`` (where
   torchvision downloads it);
3. ``/usr/share/datasets/fashion-mnist/``: Debian's package ``dataset-fashion-mnist``
   (``apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb DIR``
   unpacks it without root);
4. else torchvision's ``FashionMNIST(download=True)`` into ``data_root()`` (not with
   ``NFSTUDY_OFFLINE=1``).

Every file's decompressed content must have the canonical MD5 (:data:`FASHION_MNIST_MD5`):
Debian recompresses the ``.gz`` files, so their own MD5s differ from upstream's while
their content does not.

**32x32 by padding, not resizing.** Two zero pixels are added on each side. Resizing 28 ->
32 is a non-integer factor (8/7) that would blur every edge by interpolation; padding keeps
each pixel as recorded and each garment at its size in pixels, and adds the images' own
background: the outermost ring of the 28x28 images is 0 at 85% of its pixels (mean 12 of
255, against 73 over the whole image). It is how LeNet-5 met MNIST at 32x32, and it makes
the training figures' pad-4 random crop act as on CIFAR-10. Other sizes: larger ones pad
further, smaller ones shrink (:func:`~nfstudy.data.base.fit_images`).

**One grey channel, three input channels.** The channel is repeated three times, so the
network is the paper's CIFAR ResNet unchanged: its stem (3 -> 16 channels, fan-in 27),
parameter count, layer numbering (a figure's layer 55 is the same conv) and every
initialisation's weight scale stay the paper network's. A 1-channel stem would change the
stem's fan-in from 27 to 9 and so layer 1's initial weights. Nothing is lost either way:
the stem on three equal channels is a 1-channel conv whose kernel is the sum of its three
channel kernels, whose variance under a fan-in initialisation (``2/27`` per weight, three
of them) is ``2/9``, exactly what a 1-channel stem would be drawn with.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..params import check_positive
from .base import DatasetNotFoundError, ImageDataset, data_root, fit_images, make_dataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN",
    "FASHION_MNIST_MD5",
    "check_fashion_mnist",
    "find_fashion_mnist",
    "load_fashion",
    "read_idx",
]

# MD5 of each file's decompressed content: the canonical files' (torchvision lists them as
# FashionMNIST's raw files; the upstream .gz files' own MD5s are in its `resources`).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "NFSTUDY_FASHION_MNIST"
_SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _how_to_get(root: Path) -> str:
    return (
        "Offline, without root: `cd /tmp && apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb "
        f"/tmp/fmnist`, then set {FASHION_MNIST_ENV}=/tmp/fmnist{FASHION_MNIST_DEBIAN} (or copy its four .gz files into "
        f"{root / 'fashion-mnist'}/); online, run again with the network and torchvision's FashionMNIST downloads them into "
        f"{root / 'FashionMNIST'}/."
    )


def _file_in(folder: Path, name: str) -> Path | None:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: str | os.PathLike, md5: str | None = None) -> np.ndarray:
    """The array in the IDX file ``path`` (gzipped or not): magic ``0 0 8 ndim``, ``ndim``
    big-endian int32 sizes, then the unsigned bytes. With ``md5``, the decompressed content
    must have it. Errors name the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetNotFoundError(f"{path} cannot be read ({type(error).__name__}: {error}): delete it and get it again") from None
    found = hashlib.md5(data).hexdigest()
    if md5 is not None and found != md5:
        raise DatasetNotFoundError(
            f"{path} is corrupt: its content's md5 is {found}, not {md5} (a cut download, or another file): delete it and get it again"
        )
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DatasetNotFoundError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex()}, expected 000008..)")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, offset=4))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetNotFoundError(f"{path} holds {body.size} values where its header says {shape}: it is cut; delete it and get it again")
    return body.reshape(shape)


def _download(root: Path) -> None:
    from ..compat import import_torchvision

    root.mkdir(parents=True, exist_ok=True)
    import_torchvision().datasets.FashionMNIST(str(root), train=True, download=True)


def find_fashion_mnist(folder: str | os.PathLike | None = None, download: bool | None = None) -> Path:
    """The folder holding the four Fashion-MNIST files (module docstring's order); downloads
    them when no folder has them and ``download`` (default: unless ``NFSTUDY_OFFLINE=1``).
    Raises :class:`DatasetNotFoundError`, one line naming where it looked and both ways to
    get the files. The files' checksums are checked when they are read (:func:`load_fashion`)."""
    root = data_root()
    named = f"{folder}/" if folder is not None else f"{FASHION_MNIST_ENV}={os.environ.get(FASHION_MNIST_ENV)}"
    folder = folder if folder is not None else os.environ.get(FASHION_MNIST_ENV) or None
    offline = download is None and os.environ.get("NFSTUDY_OFFLINE", "0") not in ("", "0")
    download = not offline if download is None else download
    candidates = [Path(folder).expanduser()] if folder else [root / "fashion-mnist", root / "FashionMNIST" / "raw", FASHION_MNIST_DEBIAN]
    for candidate in candidates:
        if all(_file_in(candidate, name) for name in FASHION_MNIST_MD5):
            return candidate
    partial = [c for c in candidates if any(_file_in(c, name) for name in FASHION_MNIST_MD5)]
    lacking = "; ".join(f"{c} lacks {', '.join(n for n in FASHION_MNIST_MD5 if not _file_in(c, n))}" for c in partial)
    looked = named if folder else ", ".join(f"{c}/" for c in candidates)
    why = f" ({lacking})" if lacking else ""
    if folder or not download:
        note = "" if folder else " (NFSTUDY_OFFLINE=1: no download tried)" if offline else " (no download asked for)"
        raise DatasetNotFoundError(f"Fashion-MNIST is not in {looked}{why}{note}. {_how_to_get(root)}")
    try:
        _download(root)
    except Exception as error:  # URLError, OSError, a checksum torchvision refused, ...
        said = " ".join(str(error).split())  # torchvision's lists a line per mirror: the error stays one line
        raise DatasetNotFoundError(
            f"Fashion-MNIST is not in {looked}{why} and could not be downloaded ({type(error).__name__}: {said}). {_how_to_get(root)}"
        ) from error
    return root / "FashionMNIST" / "raw"


def check_fashion_mnist(
    folder: str | os.PathLike | None = None, download: bool | None = None, checksums: Mapping[str, str] | None = None
) -> Path:
    """:func:`find_fashion_mnist`, then every file's MD5 checked: what a run does before it starts."""
    where = find_fashion_mnist(folder, download)
    md5 = {**FASHION_MNIST_MD5, **(checksums or {})}
    for name in FASHION_MNIST_MD5:
        read_idx(_file_in(where, name), md5[name])
    return where


def load_fashion(
    folder: str | os.PathLike | None = None,
    image_size: int = 32,
    download: bool | None = None,
    checksums: Mapping[str, str] | None = None,
) -> ImageDataset:
    """Fashion-MNIST as uint8 ``N x 3 x image_size x image_size`` images (32: zero-padded
    by 2 pixels, the grey channel three times; see the module docstring for why), from
    :func:`find_fashion_mnist`'s folder, every file MD5-checked. ``checksums`` replaces
    expected MD5s (of the decompressed content) per file name: for tests."""
    check_positive("image_size", image_size, integer=True)
    where = find_fashion_mnist(folder, download)
    md5 = {**FASHION_MNIST_MD5, **(checksums or {})}
    tensors = []
    for split, (images_name, labels_name) in _SPLITS.items():
        images = read_idx(_file_in(where, images_name), md5[images_name])
        labels = read_idx(_file_in(where, labels_name), md5[labels_name])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
            raise DatasetNotFoundError(
                f"{where}: {images_name} {images.shape} and {labels_name} {labels.shape} are not one {split} split of "
                "N images and N labels 0-9: replace them with the canonical files"
            )
        x = fit_images(torch.from_numpy(images.copy()).unsqueeze(1), image_size)
        tensors += [x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels.astype(np.int64))]
    return make_dataset("fashion", *tensors, FASHION_MNIST_CLASSES)
