"""The datasets by name: which there are (:data:`DATASETS`, and ``imagefolder:PATH``), how
many training images each has (to check a batch size before a run), the check a run
makes before it starts (:func:`prepare_dataset`) and :func:`load_dataset`."""

from __future__ import annotations

import os
from pathlib import Path

from .base import ImageDataset
from .cifar10 import load_cifar10, prepare_cifar10
from .digits import DIGITS_IMAGES, load_digits
from .fashion import check_fashion_mnist, load_fashion
from .imagefolder import IMAGE_FOLDER_LAYOUT, check_image_folder, load_image_folder, scan_image_folder
from .synthetic import SYNTHETIC_TRAIN_SIZE, load_synthetic

__all__ = [
    "DATASETS",
    "IMAGE_FOLDER",
    "TRAIN_IMAGES",
    "check_dataset",
    "image_folder_path",
    "load_dataset",
    "prepare_dataset",
    "train_images",
]

DATASETS = ("cifar10", "digits", "synthetic", "fashion")  # and imagefolder:PATH, a user's own
IMAGE_FOLDER = "imagefolder:"  # the prefix of an image folder's dataset name
# Training images of each named dataset, known without loading it (to check a batch size
# early); an image folder's are counted from its files (train_images).
TRAIN_IMAGES = {
    "cifar10": 50_000,
    "digits": DIGITS_IMAGES - DIGITS_IMAGES // 6,
    "synthetic": SYNTHETIC_TRAIN_SIZE,
    "fashion": 60_000,
}


def image_folder_path(name: str) -> Path | None:
    """The folder of ``imagefolder:PATH``; None for a named dataset."""
    return Path(name[len(IMAGE_FOLDER) :]).expanduser() if isinstance(name, str) and name.startswith(IMAGE_FOLDER) else None


def check_dataset(name) -> str:
    """``name`` if it is a dataset (:data:`DATASETS` or ``imagefolder:PATH``), else a
    ValueError listing them. The folder itself is checked by :func:`train_images`."""
    if image_folder_path(name) is not None:
        if not name[len(IMAGE_FOLDER) :].strip():
            raise ValueError(f"dataset imagefolder: names no folder: give imagefolder:PATH, with {IMAGE_FOLDER_LAYOUT}")
        return name
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, imagefolder:PATH "
            "(your own images: PATH/train/<class>/*.png, PATH/test/<class>/*.png)"
        )
    return name


def train_images(name: str) -> int:
    """The training images of dataset ``name``: an image folder's counted from its files
    (:func:`~nfstudy.data.imagefolder.scan_image_folder`, whose errors name the fix)."""
    folder = image_folder_path(check_dataset(name))
    return scan_image_folder(folder).count("train") if folder is not None else TRAIN_IMAGES[name]


def prepare_dataset(name: str) -> None:
    """What a run checks before it starts, so that missing or corrupt data is one line
    before any folder is touched: CIFAR-10 and Fashion-MNIST found (a CIFAR-10 tarball
    extracted; downloaded unless offline) and MD5-verified, an image folder's every file
    opened (:func:`~nfstudy.data.imagefolder.check_image_folder`)."""
    folder = image_folder_path(check_dataset(name))
    if folder is not None:
        check_image_folder(folder)
    elif name == "cifar10":
        prepare_cifar10()
    elif name == "fashion":
        check_fashion_mnist()


def load_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> ImageDataset:
    """A dataset by name (:data:`DATASETS`, or ``imagefolder:PATH``); ``root``: where
    CIFAR-10 is (default :func:`~nfstudy.data.data_root`) or the folder of Fashion-MNIST's
    files (default: the search of :func:`~nfstudy.data.fashion.find_fashion_mnist`); kwargs
    go to its loader (``image_size`` for every dataset but CIFAR-10)."""
    folder = image_folder_path(check_dataset(name))
    if folder is not None:
        return load_image_folder(folder, **kwargs)
    if name == "cifar10":
        return load_cifar10(root, **kwargs)
    if name == "fashion":
        return load_fashion(root, **kwargs)
    if name == "digits":
        return load_digits(**kwargs)
    return load_synthetic(**kwargs)
