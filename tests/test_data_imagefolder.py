"""DATASET=imagefolder:PATH: a tiny folder of PNGs written here, read back pixel for pixel;
each fault named with its path and fix, before a run starts; fig2 end to end on it, and
fig5's and fig6's tables built from it."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from nfstudy.cli import main
from nfstudy.data import DatasetNotFoundError, check_image_folder, load_dataset, load_image_folder, scan_image_folder

CLASSES = ("cat", "dog", "emu")


def write_image_folder(root, size=(10, 10), n_train=3, n_test=2, mode="RGB", classes=CLASSES, seed=0):
    """PATH/train/<class>/*.png and PATH/test/<class>/*.png of random pixels; returns
    ``{split: [(array, label), ...]}`` in the order the loader reads them (sorted)."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        written[split] = []
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
                array = rng.integers(0, 256, size=shape, dtype=np.uint8)
                Image.fromarray(array, mode).save(folder / f"{i:03d}.png")
                written[split].append((array, label))
    return written


def test_images_come_back_pixel_for_pixel(tmp_path):
    written = write_image_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored, as torchvision does
    (tmp_path / "train" / "cat" / ".hidden.png").write_bytes(b"")
    data = load_image_folder(tmp_path)
    assert data.name == f"imagefolder:{tmp_path}" and data.classes == CLASSES
    assert data.train_images.shape == (9, 3, 32, 32) and data.test_images.shape == (6, 3, 32, 32)
    for split in ("train", "test"):
        images, labels = data.split(split)
        assert labels.tolist() == [label for _, label in written[split]]
        for image, (array, _) in zip(images, written[split]):
            # 10x10 fits 3 times in 32: each pixel a 3x3 block (30x30), then 1 zero pixel a side
            expected = torch.from_numpy(array).permute(2, 0, 1).repeat_interleave(3, 1).repeat_interleave(3, 2)
            assert torch.equal(image[:, 1:31, 1:31], expected)
            assert int(image[:, 0].max()) == int(image[:, 31].max()) == int(image[:, :, 0].max()) == int(image[:, :, 31].max()) == 0
    x = data.train_images.double() / 255
    assert data.mean == pytest.approx(x.mean((0, 2, 3)).tolist(), rel=1e-12)


def test_grey_images_fill_three_equal_channels_and_the_size_follows_the_figure(tmp_path):
    written = write_image_folder(tmp_path, size=(28, 28), mode="L")
    data = load_dataset(f"imagefolder:{tmp_path}")  # 28 -> 32: padded by 2, as Fashion-MNIST
    assert torch.equal(data.train_images[:, 0], data.train_images[:, 2])
    assert torch.equal(data.train_images[0, 1, 2:30, 2:30], torch.from_numpy(written["train"][0][0]))
    small = load_dataset(f"imagefolder:{tmp_path}", image_size=14)  # shrunk by 2
    assert small.train_images.shape == (9, 3, 14, 14)


def test_scan_counts_without_opening(tmp_path):
    write_image_folder(tmp_path, n_train=4, n_test=1)
    (tmp_path / "train" / "dog" / "001.png").write_bytes(b"garbage")  # not opened by the scan
    layout = scan_image_folder(tmp_path)
    assert layout.classes == CLASSES and layout.count("train") == 12 and layout.count("test") == 3


@pytest.mark.parametrize(
    "fault, where, match",
    [
        ("no folder", "", r"image folder .*/nothing does not exist .* give imagefolder:PATH with PATH/train/<class>/\*\.png"),
        ("no test split", "", r"has no test/ folder: it needs PATH/train/<class>/\*\.png .*put the test images in .*/test/<class>/"),
        ("no classes", "", r"/test holds no class folders: put each class's images in .*/test/<class>/"),
        ("empty class", "", r"/train/dog holds no images \(\*\.png, .*\): add some, or remove the class 'dog' from both"),
        ("classes differ", "", r"train/ and test/ have different classes \(only in train/: emu; only in test/: owl\): give both"),
        (
            "mixed sizes",
            "check",
            r"mixes image sizes: .*/train/cat/000.png is 10x10 but .*/test/emu/001.png is 12x10: give every image one size",
        ),
        ("unreadable", "check", r"/train/dog/001.png is not a readable image \(UnidentifiedImageError.*\): replace or delete it"),
        ("cut", "check", r"/test/cat/000.png is not a readable image \(.*\): replace or delete it"),
        ("16-bit", "check", r"/train/emu/002.png is a 'I;16' image \(16-bit or float\): save it as 8-bit grey or RGB"),
    ],
)
def test_each_fault_is_named_with_its_fix(tmp_path, fault, where, match):
    root = tmp_path / ("nothing" if fault == "no folder" else "images")
    if fault != "no folder":
        write_image_folder(root)
    if fault == "no test split":
        for p in sorted((root / "test").rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (root / "test").rmdir()
    elif fault == "no classes":
        for p in sorted((root / "test").rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
    elif fault == "empty class":
        for p in (root / "train" / "dog").iterdir():
            p.unlink()
    elif fault == "classes differ":
        (root / "test" / "emu").rename(root / "test" / "owl")
    elif fault == "mixed sizes":
        Image.new("RGB", (12, 10)).save(root / "test" / "emu" / "001.png")
    elif fault == "unreadable":
        (root / "train" / "dog" / "001.png").write_bytes(b"this is not a png")
    elif fault == "cut":
        path = root / "test" / "cat" / "000.png"
        path.write_bytes(path.read_bytes()[:-40])
    elif fault == "16-bit":
        Image.fromarray(np.full((10, 10), 40000, dtype=np.uint16)).save(root / "train" / "emu" / "002.png")
    # The folder faults are found from the folders alone (a figure's parameter check), the
    # file faults by opening every file (before a run) and again by loading.
    if where != "check":
        with pytest.raises(DatasetNotFoundError, match=match):
            scan_image_folder(root)
    else:
        scan_image_folder(root)
    with pytest.raises(DatasetNotFoundError, match=match):
        check_image_folder(root)
    with pytest.raises(DatasetNotFoundError, match=match):
        load_image_folder(root)


def test_figure_parameters_check_the_folder_and_the_batch(tmp_path):
    from nfstudy_experiments import params_for

    write_image_folder(tmp_path / "images")
    params = params_for("fig2", "quick", dataset=f"imagefolder:{tmp_path / 'images'}", depth=8, layer=3, batch_size=9)
    assert params.dataset == f"imagefolder:{tmp_path / 'images'}"
    with pytest.raises(ValueError, match=r"batch size 10 exceeds the 9 training images of imagefolder:.*: use at most 9"):
        params_for("fig2", "quick", dataset=f"imagefolder:{tmp_path / 'images'}", depth=8, layer=3, batch_size=10)
    with pytest.raises(DatasetNotFoundError, match="has no train/ folder"):
        params_for("fig5", "quick", dataset=f"imagefolder:{tmp_path}", depth=8, layers=[1, 3])
    with pytest.raises(ValueError, match="imagefolder: names no folder"):
        params_for("fig6", "quick", dataset="imagefolder:")
    with pytest.raises(ValueError, match=r"choose one of cifar10, digits, synthetic, fashion, imagefolder:PATH \(your own images"):
        params_for("fig1", "quick", dataset="imagenet")


def test_a_broken_folder_is_one_line_before_the_seed_folder_is_touched(results_root, tmp_path, capsys):
    write_image_folder(tmp_path / "images")
    Image.new("RGB", (12, 10)).save(tmp_path / "images" / "test" / "emu" / "001.png")
    code = main(
        ["run", "fig2", "--profile", "quick", "--device", "cpu", "--dataset", f"imagefolder:{tmp_path / 'images'}", "-p", "batch_size", "9"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: image folder") and "mixes image sizes" in err and len(err.splitlines()) == 1
    assert not results_root.exists()


def test_a_relative_folder_outside_the_repository_names_its_absolute_path(results_root, tmp_path, monkeypatch, capsys):
    write_image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "fig2", "--profile", "quick", "--device", "cpu", "--dataset", "imagefolder:images", "-p", "batch_size", "9"]) == 2
    err = capsys.readouterr().err
    assert f"give it as --dataset imagefolder:{tmp_path.resolve() / 'images'}" in err and len(err.splitlines()) == 1
    assert not results_root.exists()


TINY = {"depth": 8, "batch_size": 8, "init": "kaiming_fan_out"}


@pytest.mark.slow
def test_fig2_end_to_end_and_fig5_fig6_tables_on_an_image_folder(results_root, config_dir, tmp_path):
    from nfstudy_experiments import fig5, fig6, params_for

    folder = tmp_path / "images"
    write_image_folder(folder, size=(16, 16), n_train=6, n_test=3)  # 18 images: two batches of 8, one a network
    dataset = f"imagefolder:{folder}"
    args = ["run", "fig2", "--profile", "quick", "--seed", "0", "--device", "cpu", "--dataset", dataset]
    args += ["-p", "depth", "8", "-p", "layer", "5", "-p", "batch_size", "8"]
    assert main(args) == 0
    run = config_dir(args) / "seed=0"  # results/fig2/quick+dataset=images~depth=8+...-<hash>/
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "completed" and meta["params"]["dataset"] == dataset
    import pandas as pd

    summary = pd.read_csv(run / "gradient_summary.csv")
    assert summary["series"].tolist() == ["bn", "none", "nf"]
    assert (summary["n"] == 32 * 32 * 9).all() and np.isfinite(summary["max_abs"]).all()  # layer 5: a 32 -> 32 conv

    fig5_table = fig5.run(params_for("fig5", "quick", dataset=dataset, layers=[1, 3, 5, 7], networks=2, **TINY), seed=0, device="cpu")
    stats = fig5_table["activation_stats"]
    assert len(stats) == 3 * 2 * 4 * 4 and np.isfinite(stats["value"]).all()  # series x networks x layers x statistics
    tables = fig6.run(
        params_for("fig6", "quick", dataset=dataset, networks=2, epoch=True, epoch_split="test", **TINY), seed=0, device="cpu"
    )
    grads = tables["logit_gradients"]
    # three classes, so three logits: softmax - onehot over them sums to 0 for every image
    assert sorted(grads["class"].unique()) == [0, 1, 2] and sorted(grads["label"].unique()) == [0, 1, 2]
    per_image = grads.groupby(["series", "network", "image"])["gradient"].sum()
    np.testing.assert_allclose(per_image.to_numpy(), 0, atol=1e-5)
    assert set(tables) == {"logit_gradients", "dominant_class", "logit_gradients_epoch"}
    assert set(tables["dominant_class"]["n_images"]) == {8, 9}  # a mini-batch of 8; the epoch over the 9 test images
    assert os.path.isdir(folder)  # read, never written


def test_every_figure_that_takes_data_accepts_both_new_datasets(tmp_path):
    """Each figure's parameters with dataset fashion (its size is known: 60,000, above the
    paper's largest batch, agc's 4096) and the quick ones with an image folder of 513 training
    images (the largest quick batch is agc's 512)."""
    import dataclasses

    import nfstudy_experiments
    from nfstudy_experiments import params_for

    write_image_folder(tmp_path, size=(4, 4), n_train=171, n_test=1)
    taking = [
        f for f in nfstudy_experiments.FIGURES if "dataset" in {x.name for x in dataclasses.fields(nfstudy_experiments.load(f).Params)}
    ]
    assert set(taking) == {"fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "agc", "spp"}
    for figure in taking:
        assert params_for(figure, "quick", dataset="fashion").dataset == "fashion"
        assert params_for(figure, "paper", dataset="fashion").dataset == "fashion"
        assert params_for(figure, "quick", dataset=f"imagefolder:{tmp_path}").dataset == f"imagefolder:{tmp_path}"
