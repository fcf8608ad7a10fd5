import hashlib
import pickle
import tarfile

import numpy as np
import pytest
import torch

from nfstudy.data import (
    CIFAR10_FOLDER,
    DatasetNotFoundError,
    DeviceLoader,
    load_cifar10,
    load_dataset,
    random_crop_flip,
)

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_tiny_cifar10(root, per_batch=6, seed=0):
    """CIFAR-10 in its genuine on-disk format (python pickles of a dict with 'data' as a
    uint8 N x 3072 array in channel-major order, 'labels', 'batch_label', 'filenames'),
    only smaller. Returns the images, labels and the MD5 of every file."""
    rng = np.random.default_rng(seed)
    folder = root / CIFAR10_FOLDER
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch, "label_names": LABEL_NAMES, "num_vis": 3072}, f, protocol=2)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return written, md5


def test_tiny_cifar10_through_the_real_torchvision_path(tmp_path):
    written, md5 = write_tiny_cifar10(tmp_path)
    data = load_cifar10(tmp_path, download=False, checksums=md5)
    assert data.name == "cifar10" and data.classes == tuple(LABEL_NAMES)
    assert data.train_images.shape == (30, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (6, 3, 32, 32)
    # Channel-major rows become C x H x W images: pixel (c, y, x) is data[c * 1024 + y * 32 + x].
    first, labels = written["data_batch_1"]
    assert torch.equal(data.train_images[0], torch.from_numpy(first[0].reshape(3, 32, 32)))
    assert data.train_labels[:6].tolist() == labels
    test, test_labels = written["test_batch"]
    assert torch.equal(data.test_images[5], torch.from_numpy(test[5].reshape(3, 32, 32)))
    assert data.test_labels.tolist() == test_labels
    # Normalisation statistics come from the train split.
    x = data.train_images.double() / 255
    assert data.mean == pytest.approx(x.mean((0, 2, 3)).tolist())


def test_cifar10_checksums_are_verified(tmp_path):
    write_tiny_cifar10(tmp_path)  # not the real files: torchvision's MD5s must reject them
    with pytest.raises(DatasetNotFoundError, match="corrupt or incomplete: data_batch_1.*Delete"):
        load_cifar10(tmp_path, download=False)


def test_cifar10_one_corrupt_file_is_named(tmp_path):
    _, md5 = write_tiny_cifar10(tmp_path)
    (tmp_path / CIFAR10_FOLDER / "data_batch_3").write_bytes(b"truncated")
    with pytest.raises(DatasetNotFoundError, match=r"corrupt or incomplete: data_batch_3 missing"):
        load_cifar10(tmp_path, download=False, checksums=md5)


def test_cifar10_missing_offline_says_where_to_put_it(tmp_path, monkeypatch):
    from nfstudy.compat import import_torchvision

    tv_utils = import_torchvision().datasets.utils

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_utils, "_urlretrieve", no_network)
    with pytest.raises(DatasetNotFoundError) as error:
        load_cifar10(tmp_path / "empty", download=True)
    message = str(error.value)
    assert f"{tmp_path / 'empty'}/" in message and "cifar-10-python.tar.gz" in message
    assert f"{tmp_path / 'empty' / CIFAR10_FOLDER}/" in message and "NFSTUDY_DATA" in message
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "empty", download=False)


def test_cifar10_tarball_is_extracted_without_download(tmp_path, monkeypatch):
    _, md5 = write_tiny_cifar10(tmp_path / "src")
    tarball = tmp_path / "root" / "cifar-10-python.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "src" / CIFAR10_FOLDER, arcname=CIFAR10_FOLDER)
    md5["cifar-10-python.tar.gz"] = hashlib.md5(tarball.read_bytes()).hexdigest()
    from nfstudy.compat import import_torchvision

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download although the tarball is there")

    monkeypatch.setattr(import_torchvision().datasets.utils, "_urlretrieve", no_network)
    data = load_cifar10(tmp_path / "root", download=True, checksums=md5)
    assert len(data.train_labels) == 30 and (tmp_path / "root" / CIFAR10_FOLDER / "batches.meta").is_file()


def test_data_root_follows_the_environment(tmp_path, monkeypatch):
    from nfstudy.data import data_root

    monkeypatch.setenv("NFSTUDY_DATA", str(tmp_path / "elsewhere"))
    assert data_root() == tmp_path / "elsewhere"


def test_digits_are_real_images_with_a_fixed_split(digits):
    assert len(digits.train_labels) == 1498 and len(digits.test_labels) == 299
    assert digits.train_images.shape[1:] == (3, 32, 32)
    assert set(digits.train_labels.unique().tolist()) == set(range(10))
    assert torch.equal(load_dataset("digits").test_images, digits.test_images)
    assert torch.equal(digits.train_images[:, 0], digits.train_images[:, 2])  # grey, 3 channels


def test_synthetic_is_seeded_and_learnable():
    a = load_dataset("synthetic", train_size=500, test_size=100, seed=3)
    b = load_dataset("synthetic", train_size=500, test_size=100, seed=3)
    c = load_dataset("synthetic", train_size=500, test_size=100, seed=4)
    assert torch.equal(a.train_images, b.train_images) and not torch.equal(a.train_images, c.train_images)
    # Class structure: nearest class mean on train classifies test far above chance (10%).
    x = a.train_images.flatten(1).float()
    means = torch.stack([x[a.train_labels == k].mean(0) for k in range(10)])
    pred = torch.cdist(a.test_images.flatten(1).float(), means).argmin(1)
    assert (pred == a.test_labels).float().mean() > 0.9


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="cifar10, digits, synthetic"):
        load_dataset("imagenet")


def test_crop_flip_matches_torchvision_per_image():
    from nfstudy.compat import import_torchvision

    tf = import_torchvision().transforms.functional
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [1, 7], [4, 4]])
    flips = torch.tensor([False, True, True, False, True, False])
    out = random_crop_flip(images, offsets, flips)
    for i in range(6):
        ref = tf.crop(tf.pad(images[i], [4, 4, 4, 4]), int(offsets[i, 0]), int(offsets[i, 1]), 32, 32)
        if flips[i]:
            ref = tf.hflip(ref)
        assert torch.equal(out[i], ref), i


def test_loader_is_determined_by_seed_and_epoch(digits):
    make = lambda seed: digits.loader("train", 64, augment=True, seed=seed)  # noqa: E731
    a, b = make(0), make(0)
    xa, ya = zip(*a)
    xb, yb = zip(*b)
    assert all(torch.equal(p, q) for p, q in zip(xa, xb)) and all(torch.equal(p, q) for p, q in zip(ya, yb))
    assert not torch.equal(make(1).first_batch()[0], make(0).first_batch()[0])
    assert a.epoch == 1
    # Epochs differ and replay on their own: epoch 1 from a fresh loader equals a's second pass.
    second = next(iter(a))
    assert torch.equal(second[0], next(make(0).epoch_batches(1))[0])
    assert not torch.equal(second[0], xa[0])


def test_loader_covers_the_epoch_and_normalises(digits):
    loader = digits.loader("train", 100, shuffle=True, augment=False, seed=0)
    labels = torch.cat([y for _, y in loader])
    assert len(loader) == 15 and len(labels) == 1498
    assert torch.equal(labels.sort().values, digits.train_labels.sort().values)
    x = torch.cat([x for x, _ in digits.loader("train", 500, shuffle=False)])
    assert x.mean().item() == pytest.approx(0.0, abs=1e-4) and x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_ranks_split_each_global_batch(digits):
    full = digits.loader("train", 64, augment=True, seed=5, drop_last=True)
    halves = [digits.loader("train", 64, augment=True, seed=5, drop_last=True, rank=r, world_size=2) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(full, *halves):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_loader_rejects_bad_input(digits):
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        digits.loader("train", 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        digits.loader("train", 12.5)
    with pytest.raises(ValueError, match="divisible"):
        digits.loader("train", 10, world_size=3)
    with pytest.raises(TypeError, match="uint8"):
        DeviceLoader(torch.zeros(4, 3, 8, 8), torch.zeros(4), [0, 0, 0], [1, 1, 1])


def test_channel_stats_from_histograms_match_the_direct_sums():
    from nfstudy.data import channel_stats

    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 9, 7), dtype=torch.uint8)
    images[:, 1] //= 4  # channels with different statistics
    mean, std = channel_stats(images)
    x = images.double() / 255
    # both float64: the sums differ only in their order (~1e-16 relative per term)
    assert mean == pytest.approx(x.mean((0, 2, 3)).tolist(), rel=1e-12)
    assert std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist(), rel=1e-12)
    assert mean[1] < 0.3 < mean[0]
