"""Fashion-MNIST: the IDX reader on records written here (gzipped and raw), the checksums,
where the files are looked for and the error when they are nowhere; the real files when
this machine has them (``$NFSTUDY_FASHION_MNIST`` or Debian's folder), skipped otherwise."""

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import nfstudy.data.fashion as fashion
from nfstudy.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MD5,
    DatasetNotFoundError,
    check_fashion_mnist,
    find_fashion_mnist,
    fit_images,
    load_dataset,
    load_fashion,
    read_idx,
)

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0 0 8 ndim, the sizes as big-endian int32, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_tiny_fashion(folder: Path, n_train=5, n_test=3, gz=True, seed=0):
    """A Fashion-MNIST folder in the genuine format, n_train + n_test images; returns the
    arrays and the MD5 of each file's decompressed content. ``gz``: True, False, or
    "mixed" (the image files gzipped, the label files raw)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays, md5 = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for name, array in zip(NAMES[split], (images, labels)):
            data = idx_bytes(array)
            zipped = gz is True or (gz == "mixed" and "images" in name)
            (folder / (name + ".gz" if zipped else name)).write_bytes(gzip.compress(data) if zipped else data)
            arrays[name], md5[name] = array, hashlib.md5(data).hexdigest()
    return arrays, md5


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No Fashion-MNIST anywhere: an empty data root, no Debian folder, no variable."""
    monkeypatch.setenv("NFSTUDY_DATA", str(tmp_path / "root"))
    monkeypatch.delenv("NFSTUDY_FASHION_MNIST", raising=False)
    monkeypatch.setattr(fashion, "FASHION_MNIST_DEBIAN", tmp_path / "debian")
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_returns_the_written_array(tmp_path, gz):
    arrays, md5 = write_tiny_fashion(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    images = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", md5["train-images-idx3-ubyte"])
    labels = read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}")
    assert images.dtype == np.uint8 and images.shape == (5, 28, 28)
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])


def test_read_idx_refuses_a_wrong_checksum_a_cut_file_and_another_format(tmp_path):
    _, md5 = write_tiny_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    found = md5["train-images-idx3-ubyte"]
    # the canonical MD5 (the real file's) refuses these records, naming the file and both sums
    with pytest.raises(DatasetNotFoundError, match=rf"train-images-idx3-ubyte.gz is corrupt: its content's md5 is {found}, not f4a8712d"):
        read_idx(path, FASHION_MNIST_MD5["train-images-idx3-ubyte"])
    data = gzip.decompress(path.read_bytes())
    (tmp_path / "cut").write_bytes(data[:-100])
    with pytest.raises(DatasetNotFoundError, match=r"holds 3820 values where its header says \(5, 28, 28\): it is cut"):
        read_idx(tmp_path / "cut")
    (tmp_path / "cut.gz").write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetNotFoundError, match="cut.gz cannot be read"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "other").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DatasetNotFoundError, match="other is not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "other")


@pytest.mark.parametrize("gz", [True, False, "mixed"])
def test_tiny_fashion_at_cifars_shape(tmp_path, gz):
    arrays, md5 = write_tiny_fashion(tmp_path / "f", gz=gz)
    data = load_fashion(tmp_path / "f", checksums=md5)
    assert data.name == "fashion" and data.classes == FASHION_MNIST_CLASSES and data.num_classes == 10
    assert data.train_images.shape == (5, 3, 32, 32) and data.test_images.shape == (3, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8
    for split, (images_name, labels_name) in NAMES.items():
        images, labels = data.split(split)
        # the 28x28 image sits in the middle, 2 zero pixels on every side, in each of 3 equal channels
        assert torch.equal(images[:, 0, 2:30, 2:30], torch.from_numpy(arrays[images_name]))
        assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
        ring = images.clone()
        ring[:, :, 2:30, 2:30] = 0
        assert int(ring.max()) == 0
        assert labels.tolist() == arrays[labels_name].tolist() and labels.dtype == torch.int64
    # normalised per channel by the padded train split's statistics
    x = data.train_images.double() / 255
    assert data.mean == pytest.approx(x.mean((0, 2, 3)).tolist(), rel=1e-12)
    assert data.std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist(), rel=1e-12)


def test_tiny_fashion_at_other_sizes(tmp_path):
    arrays, md5 = write_tiny_fashion(tmp_path)
    big = load_fashion(tmp_path, image_size=36, checksums=md5)  # pads further: 4 a side
    assert torch.equal(big.train_images[:, 0, 4:32, 4:32], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    small = load_fashion(tmp_path, image_size=14, checksums=md5)  # shrinks (antialiased)
    assert small.train_images.shape == (5, 3, 14, 14)
    # a 2x shrink keeps the image's mean within rounding and the filter's edge effects
    assert small.train_images.double().mean() == pytest.approx(arrays["train-images-idx3-ubyte"].mean(), rel=0.02)


def test_the_data_set_is_refused_with_the_real_checksums(tmp_path):
    write_tiny_fashion(tmp_path)  # not the real files: the canonical MD5s must reject them
    with pytest.raises(DatasetNotFoundError, match=r"train-images-idx3-ubyte.gz is corrupt: its content's md5 is [0-9a-f]{32}, not f4a8"):
        load_fashion(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="is corrupt"):
        check_fashion_mnist(tmp_path)


def test_where_it_is_looked_for(nowhere, monkeypatch):
    tmp = nowhere
    write_tiny_fashion(tmp / "debian")
    assert find_fashion_mnist(download=False) == tmp / "debian"
    write_tiny_fashion(tmp / "root" / "FashionMNIST" / "raw", gz=False)  # torchvision's download
    assert find_fashion_mnist(download=False) == tmp / "root" / "FashionMNIST" / "raw"
    write_tiny_fashion(tmp / "root" / "fashion-mnist")
    assert find_fashion_mnist(download=False) == tmp / "root" / "fashion-mnist"
    # the variable, when set, is the only place looked at
    write_tiny_fashion(tmp / "mine")
    monkeypatch.setenv("NFSTUDY_FASHION_MNIST", str(tmp / "mine"))
    assert find_fashion_mnist(download=False) == tmp / "mine"
    monkeypatch.setenv("NFSTUDY_FASHION_MNIST", str(tmp / "empty"))
    with pytest.raises(DatasetNotFoundError, match=rf"not in NFSTUDY_FASHION_MNIST={tmp / 'empty'}\. Offline"):
        find_fashion_mnist(download=True)  # no download where the user named a folder
    # an explicit folder wins over the variable, and is named as given when it lacks the files
    assert find_fashion_mnist(tmp / "debian") == tmp / "debian"
    with pytest.raises(DatasetNotFoundError, match=rf"not in {tmp / 'empty'}/\. Offline"):
        find_fashion_mnist(tmp / "empty")


def test_a_folder_missing_a_file_is_named_and_skipped(nowhere):
    tmp = nowhere
    write_tiny_fashion(tmp / "root" / "fashion-mnist")
    (tmp / "root" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"fashion-mnist lacks t10k-labels-idx1-ubyte\)"):
        find_fashion_mnist(download=False)
    write_tiny_fashion(tmp / "debian")
    assert find_fashion_mnist(download=False) == tmp / "debian"


def test_missing_offline_is_one_line_naming_both_ways(nowhere, monkeypatch):
    monkeypatch.setenv("NFSTUDY_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("fashion")
    message = str(error.value)
    assert "\n" not in message and "NFSTUDY_OFFLINE=1: no download tried" in message
    assert f"{nowhere / 'root' / 'fashion-mnist'}/" in message and f"{nowhere / 'debian'}/" in message
    assert "apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb" in message
    assert "NFSTUDY_FASHION_MNIST=" in message and "torchvision's FashionMNIST downloads them" in message


def test_a_failed_download_is_one_line_naming_both_ways(nowhere, monkeypatch):
    from urllib.error import URLError

    from nfstudy.compat import import_torchvision

    def no_network(*args, **kwargs):
        raise URLError("network unreachable")

    monkeypatch.setattr(import_torchvision().datasets.utils, "_get_redirect_url", no_network)
    monkeypatch.setattr(import_torchvision().datasets.utils, "_urlretrieve", no_network)
    with pytest.raises(DatasetNotFoundError) as error:
        load_fashion(download=True)
    message = str(error.value)
    assert "\n" not in message and "could not be downloaded (RuntimeError: Error downloading" in message
    assert "network unreachable" in message and "apt-get download dataset-fashion-mnist" in message


def test_a_download_is_read_from_torchvisions_folder(nowhere, monkeypatch):
    """Online: torchvision's FashionMNIST downloads (here: copies the test's .gz files, with
    their MD5s as its expected ones) into data_root()/FashionMNIST/raw, read from there."""
    from nfstudy.compat import import_torchvision

    arrays, md5 = write_tiny_fashion(nowhere / "server")
    tv = import_torchvision().datasets
    gz_md5 = [(p.name, hashlib.md5(p.read_bytes()).hexdigest()) for p in sorted((nowhere / "server").iterdir())]
    monkeypatch.setattr(tv.FashionMNIST, "resources", gz_md5)
    monkeypatch.setattr(tv.utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(
        tv.utils, "_urlretrieve", lambda url, path: Path(path).write_bytes((nowhere / "server" / Path(url).name).read_bytes())
    )
    data = load_fashion(download=True, checksums=md5)
    assert (nowhere / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert torch.equal(data.test_images[:, 1, 2:30, 2:30], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))


def test_fit_images_pads_enlarges_by_whole_factors_and_shrinks():
    x = torch.randint(1, 256, (2, 3, 8, 8), dtype=torch.uint8)
    big = fit_images(x, 32)  # 4x: each pixel a 4x4 block, nothing padded
    assert torch.equal(big, x.repeat_interleave(4, 2).repeat_interleave(4, 3))
    odd = fit_images(x, 30)  # 3x (24x24), then 3 zero pixels a side
    assert torch.equal(odd[:, :, 3:27, 3:27], x.repeat_interleave(3, 2).repeat_interleave(3, 3))
    assert int(odd[:, :, :3].max()) == int(odd[:, :, 27:].max()) == int(odd[:, :, :, :3].max()) == 0
    wide = torch.full((1, 3, 32, 64), 200, dtype=torch.uint8)  # shrunk to 16x32, centred
    fitted = fit_images(wide, 32)
    assert fitted.shape == (1, 3, 32, 32) and int(fitted[:, :, 8:24].min()) == 200
    assert int(fitted[:, :, :8].max()) == int(fitted[:, :, 24:].max()) == 0


# --------------------------------------------------------------------------- the real files


def _real_folder() -> Path | None:
    for folder in (os.environ.get("NFSTUDY_FASHION_MNIST"), str(fashion.FASHION_MNIST_DEBIAN)):
        if folder and all(fashion._file_in(Path(folder), name) for name in FASHION_MNIST_MD5):
            return Path(folder)
    return None


REAL = _real_folder()
needs_real = pytest.mark.skipif(REAL is None, reason="no Fashion-MNIST here ($NFSTUDY_FASHION_MNIST or /usr/share/datasets/fashion-mnist)")


@needs_real
def test_the_real_files():
    assert check_fashion_mnist(REAL) == REAL  # every file's canonical MD5
    data = load_fashion(REAL)
    assert data.train_images.shape == (60_000, 3, 32, 32) and data.test_images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published first labels
    # The published mean and std of the 28x28 pixels are 0.2860 and 0.3530; padding to
    # 32x32 adds 240 zeros to 784 pixels: mean 0.2860 * 784/1024, mean square likewise.
    share = 784 / 1024
    assert data.mean[0] == pytest.approx(0.2860 * share, abs=2e-4)
    assert data.std[0] == pytest.approx(((0.3530**2 + 0.2860**2) * share - (0.2860 * share) ** 2) ** 0.5, abs=2e-4)
    assert int(data.train_images[:, :, :2].max()) == 0 and int(data.train_images[:, :, :, 30:].max()) == 0


@needs_real
def test_a_figure_runs_on_the_real_files(monkeypatch):
    from nfstudy_experiments import fig2, params_for

    monkeypatch.setenv("NFSTUDY_FASHION_MNIST", str(REAL))
    params = params_for("fig2", "quick", dataset="fashion", depth=8, layer=4, batch_size=32, series=["bn", "none"])
    summary = fig2.run(params, seed=0, device="cpu")["gradient_summary"]
    assert summary["n"].tolist() == [32 * 16 * 9] * 2  # layer 4: layer2.0.branch.conv1, 16 -> 32 channels
    assert summary["layer_name"].tolist() == ["layer2.0.branch.conv1"] * 2
    assert np.isfinite(summary["max_abs"]).all() and (summary["max_abs"] > 0).all() and (summary["loss"] > 0).all()
