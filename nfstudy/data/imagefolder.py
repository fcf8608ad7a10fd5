"""Your own images, in torchvision's ImageFolder layout, as ``DATASET=imagefolder:PATH``:

    PATH/train/<class>/*.png
    PATH/test/<class>/*.png

Classes are the folder names, labelled in sorted order (torchvision's convention); both
splits must have the same classes, each with at least one image. Files are read with PIL
(``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.tif``, ``.tiff``, ``.webp``; other
files and hidden ones are ignored), as RGB (a grey image's channel repeated three times,
as Fashion-MNIST's), all of one size, and placed on the figure's ``image_size`` canvas by
:func:`~nfstudy.data.base.fit_images` (whole-factor enlarging or shrinking, then zero
padding). Each problem is a :class:`DatasetNotFoundError` naming the path and the fix,
found before a run starts (:func:`scan_image_folder`: the folders; :func:`check_image_folder`:
every file opened).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..params import check_positive
from .base import DatasetNotFoundError, ImageDataset, fit_images, make_dataset

__all__ = ["IMAGE_SUFFIXES", "IMAGE_FOLDER_LAYOUT", "ImageFolderLayout", "check_image_folder", "load_image_folder", "scan_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_FOLDER_LAYOUT = "PATH/train/<class>/*.png and PATH/test/<class>/*.png (torchvision's ImageFolder layout)"
_SPLITS = ("train", "test")
_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")  # 8 bits a channel: convert("RGB") keeps them


@dataclass(frozen=True)
class ImageFolderLayout:
    """The files of an image folder: ``files[split]`` is a list of ``(path, label)``."""

    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[tuple[Path, int]]]

    def count(self, split: str) -> int:
        return len(self.files[split])


def _visible_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_image_folder(path: str | os.PathLike) -> ImageFolderLayout:
    """The layout of the image folder ``path`` from its folders alone (no image opened):
    both splits there, the same classes in each, no class without images."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root} does not exist or is not a folder: give imagefolder:PATH with {IMAGE_FOLDER_LAYOUT}"
        )
    for split in _SPLITS:
        if not (root / split).is_dir():
            raise DatasetNotFoundError(
                f"image folder {root} has no {split}/ folder: it needs {IMAGE_FOLDER_LAYOUT}; "
                f"put the {split} images in {root / split}/<class>/"
            )
    classes = {split: _visible_dirs(root / split) for split in _SPLITS}
    for split in _SPLITS:
        if not classes[split]:
            raise DatasetNotFoundError(f"{root / split} holds no class folders: put each class's images in {root / split}/<class>/")
    if classes["train"] != classes["test"]:
        only = {s: sorted(set(classes[s]) - set(classes[o])) for s, o in (("train", "test"), ("test", "train"))}
        listed = "; ".join(f"only in {s}/: {', '.join(names)}" for s, names in only.items() if names)
        raise DatasetNotFoundError(
            f"image folder {root}: train/ and test/ have different classes ({listed}): give both the same class folders"
        )
    files = {}
    for split in _SPLITS:
        files[split] = []
        for label, name in enumerate(classes["train"]):
            found = sorted(
                p
                for p in (root / split / name).iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
            )
            if not found:
                raise DatasetNotFoundError(
                    f"{root / split / name} holds no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}): add some, or remove "
                    f"the class {name!r} from both train/ and test/"
                )
            files[split] += [(p, label) for p in found]
    return ImageFolderLayout(root, tuple(classes["train"]), files)


def _open(path: Path):
    """The image at ``path`` as a PIL image (not yet decoded); a file PIL cannot read or
    a mode that is not 8 bits a channel is named."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetNotFoundError(f"{path} is not a readable image ({type(error).__name__}: {error}): replace or delete it") from None
    if image.mode not in _MODES:
        raise DatasetNotFoundError(f"{path} is a {image.mode!r} image (16-bit or float): save it as 8-bit grey or RGB")
    return image


def _mixed_sizes(root: Path, first: tuple[Path, tuple[int, int]], other: tuple[Path, tuple[int, int]]) -> DatasetNotFoundError:
    (a, (w, h)), (b, (w2, h2)) = first, other
    return DatasetNotFoundError(
        f"image folder {root} mixes image sizes: {a} is {w}x{h} but {b} is {w2}x{h2}: give every image one size "
        "(resize them, e.g. with PIL's Image.resize)"
    )


def check_image_folder(path: str | os.PathLike) -> ImageFolderLayout:
    """:func:`scan_image_folder`, then every file opened and checked by PIL (readable, its
    data not cut, 8 bits a channel, one size throughout), without decoding the pixels."""
    layout = scan_image_folder(path)
    first = None
    for split in _SPLITS:
        for file, _ in layout.files[split]:
            with _open(file) as image:
                size = image.size
                try:
                    image.verify()  # checks the file's structure (PNG: every chunk's CRC) without decoding
                except Exception as error:  # PIL raises several kinds
                    raise DatasetNotFoundError(
                        f"{file} is not a readable image ({type(error).__name__}: {error}): replace or delete it"
                    ) from None
            first = first or (file, size)
            if size != first[1]:
                raise _mixed_sizes(layout.root, first, (file, size))
    return layout


def load_image_folder(path: str | os.PathLike, image_size: int = 32) -> ImageDataset:
    """The image folder ``path`` (module docstring) as uint8 ``N x 3 x image_size x
    image_size`` images; its name is ``imagefolder:PATH``."""
    check_positive("image_size", image_size, integer=True)
    layout = scan_image_folder(path)
    first = None
    tensors = []
    for split in _SPLITS:
        images = []
        for file, _ in layout.files[split]:
            with _open(file) as image:
                try:
                    array = np.asarray(image.convert("RGB"))
                except Exception as error:  # a cut file fails here, when its pixels are decoded
                    raise DatasetNotFoundError(
                        f"{file} is not a readable image ({type(error).__name__}: {error}): replace or delete it"
                    ) from None
                first = first or (file, image.size)
                if image.size != first[1]:
                    raise _mixed_sizes(layout.root, first, (file, image.size))
            images.append(fit_images(torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0), image_size))
        tensors += [torch.cat(images), torch.tensor([label for _, label in layout.files[split]], dtype=torch.int64)]
    return make_dataset(f"imagefolder:{path}", *tensors, layout.classes)
