"""CIFAR-10 through torchvision, MD5-verified, extracted or downloaded into :func:`data_root`."""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .base import DatasetNotFoundError, ImageDataset, data_root, make_dataset, md5_of_file

__all__ = ["CIFAR10_FOLDER", "CIFAR10_MD5", "CIFAR10_TARBALL", "CIFAR10_URL", "load_cifar10", "prepare_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # of cifar-10-python.tar.gz (torchvision's value)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"


def _cifar10_class(checksums: Mapping[str, str] | None):
    from ..compat import import_torchvision

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
        "use DATASET=fashion (Fashion-MNIST, real images at CIFAR's 32x32), digits (bundled with scikit-learn) or synthetic."
    )


def _corrupt_files(cls, root: Path) -> list[str]:
    from ..compat import import_torchvision

    check_integrity = import_torchvision().datasets.utils.check_integrity
    folder = root / cls.base_folder
    entries = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    return [name for name, md5 in entries if not check_integrity(str(folder / name), md5)]


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
                f"{tarball} is corrupt ({type(error).__name__}: {error}; md5 {md5_of_file(tarball)}): delete it and copy a good "
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
        found = md5_of_file(tarball)
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

    return make_dataset("cifar10", *tensors(train), *tensors(test), train.classes)
