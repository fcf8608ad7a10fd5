"""Datasets and a device-resident mini-batch loader with on-device augmentation.

Datasets (:data:`DATASETS`, and ``imagefolder:PATH``), each an :class:`ImageDataset` of
uint8 images ``N x 3 x H x W`` (32x32 unless a figure's ``image_size`` says otherwise) with
integer labels and a fixed train/test split, normalised per channel by the train split's
mean and standard deviation:

* ``cifar10`` (:mod:`.cifar10`): CIFAR-10 through torchvision, downloaded into
  :func:`data_root` (``$NFSTUDY_DATA``, else ``data/`` in the repository) and checked
  against torchvision's MD5 checksums. Offline, put ``cifar-10-python.tar.gz`` (or its
  extracted ``cifar-10-batches-py/`` folder) there; the error message says exactly where. A
  tarball there is checked against its MD5 and extracted without the network (a corrupt one
  is named, with its MD5). ``NFSTUDY_OFFLINE=1`` skips the download attempt.
* ``fashion`` (:mod:`.fashion`): Fashion-MNIST, 60,000 + 10,000 real 28x28 grey images of
  clothing, zero-padded to 32x32 and repeated over 3 channels: CIFAR-10's shape, so the
  paper's network is unchanged. From a local copy (``$NFSTUDY_FASHION_MNIST``, the data
  root, Debian's ``/usr/share/datasets/fashion-mnist/``) or torchvision's download, every
  file MD5-checked; the IDX files are parsed here, torchvision is needed only to download.
* ``digits`` (:mod:`.digits`): scikit-learn's bundled handwritten digits (1797 real 8x8
  grey images, 0-9), upsampled to 32x32 (or kept at 8x8: ``image_size=8``) and repeated
  over 3 channels; every 6th image is a test image (1498 train, 299 test). Offline, always
  available.
* ``synthetic`` (:mod:`.synthetic`): seeded, class-structured images of any size: a smooth
  random prototype per class plus per-image noise, so a network can learn it.
* ``imagefolder:PATH`` (:mod:`.imagefolder`): your own images,
  ``PATH/train/<class>/*.png`` and ``PATH/test/<class>/*.png``, read with PIL and fitted to
  the image size.

:class:`DeviceLoader` (:mod:`.loader`) keeps a whole split on the run's device as uint8
and produces normalised float batches there; the pad-4 random crop and horizontal flip are
a single gather on device tensors. Shuffling and augmentation come from a CPU generator
seeded by ``(seed, epoch)``, so a given seed gives the same batches on every device and an
epoch can be replayed on its own (resuming mid-training).
"""

from __future__ import annotations

from .base import DatasetNotFoundError, ImageDataset, channel_stats, data_root, fit_images
from .catalog import DATASETS, IMAGE_FOLDER, TRAIN_IMAGES, check_dataset, image_folder_path, load_dataset, prepare_dataset, train_images
from .cifar10 import CIFAR10_FOLDER, CIFAR10_MD5, CIFAR10_TARBALL, CIFAR10_URL, load_cifar10, prepare_cifar10
from .digits import DIGITS_IMAGES, load_digits
from .fashion import FASHION_MNIST_CLASSES, FASHION_MNIST_MD5, check_fashion_mnist, find_fashion_mnist, load_fashion, read_idx
from .imagefolder import IMAGE_FOLDER_LAYOUT, check_image_folder, load_image_folder, scan_image_folder
from .loader import DeviceLoader, epoch_generator, random_crop_flip
from .synthetic import SYNTHETIC_TRAIN_SIZE, load_synthetic

__all__ = [
    "CIFAR10_FOLDER",
    "CIFAR10_MD5",
    "CIFAR10_TARBALL",
    "CIFAR10_URL",
    "DATASETS",
    "DIGITS_IMAGES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MD5",
    "IMAGE_FOLDER",
    "IMAGE_FOLDER_LAYOUT",
    "SYNTHETIC_TRAIN_SIZE",
    "TRAIN_IMAGES",
    "DatasetNotFoundError",
    "DeviceLoader",
    "ImageDataset",
    "channel_stats",
    "check_dataset",
    "check_fashion_mnist",
    "check_image_folder",
    "data_root",
    "epoch_generator",
    "find_fashion_mnist",
    "fit_images",
    "image_folder_path",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion",
    "load_image_folder",
    "load_synthetic",
    "prepare_cifar10",
    "prepare_dataset",
    "random_crop_flip",
    "read_idx",
    "scan_image_folder",
    "train_images",
]
