"""Training throughput of nfstudy.train against the public reproduction's loop.

Baseline (seeds/004, the public reproduction of Bjorck et al.): a torchvision
``DataLoader`` over a dataset that returns PIL images, ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` per image on the CPU, each batch
copied to the device, and ``.item()`` twice per batch (loss and correct count).

Engine: :func:`nfstudy.train.train` -- the split resident on the device, crop and flip
as one gather there, no host sync per step; on CUDA also bf16 autocast and channels_last
(and ``--compile``).

Both train the same model (same initial weights) with the same SGD on the same number of
images, one epoch each, interleaved (baseline, engine, baseline, engine, ...) so that a
machine's changing load hits both alike; images/s counts training steps only (the
engine's per-epoch test evaluation is excluded). The ratio engine / baseline is printed
per round and as the median.

    python benchmarks/bench_train.py                         # CPU: ResNet-20
    python benchmarks/bench_train.py --device cuda --model resnet110 --images 50000
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from nfstudy.compat import TorchvisionOpsUnavailable, import_torchvision
from nfstudy.data import DatasetNotFoundError, load_dataset
from nfstudy.models import create_model
from nfstudy.runtime import resolve_device
from nfstudy.train import TrainConfig, train


def cifar_or_stand_in(images: int):
    """CIFAR-10 when it is on disk, else synthetic 32x32 images (speed does not depend on content)."""
    try:
        data = load_dataset("cifar10", download=False)
    except DatasetNotFoundError:
        data = load_dataset("synthetic", train_size=images, test_size=256, image_size=32)
    keep = slice(0, images)
    return type(data)(data.name, data.train_images[keep], data.train_labels[keep], data.test_images[:256],
                      data.test_labels[:256], data.classes, data.mean, data.std)  # fmt: skip


def baseline_epoch(model, data, batch_size: int, lr: float, device) -> float:
    """The reproduction's train_epoch: PIL transforms, DataLoader, .item() per batch. Returns images/s."""
    tv = import_torchvision()
    from PIL import Image

    class PILDataset(torch.utils.data.Dataset):  # what torchvision.datasets.CIFAR10 does per item
        def __init__(self, images, labels, transform):
            self.images, self.labels, self.transform = images.permute(0, 2, 3, 1).numpy(), labels.tolist(), transform

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i])), self.labels[i]

    t = tv.transforms
    transform = t.Compose([t.RandomCrop(32, padding=4), t.RandomHorizontalFlip(), t.ToTensor(), t.Normalize(data.mean, data.std)])
    loader = torch.utils.data.DataLoader(PILDataset(data.train_images, data.train_labels, transform), batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.to(device).train()
    train_loss, correct = 0.0, 0
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        output = model(images)
        loss = F.cross_entropy(output, labels)
        loss.backward()
        optimizer.step()
        train_loss += loss.item()
        correct += (output.argmax(1) == labels).float().sum().item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(data.train_labels) / (time.perf_counter() - start)


def engine_epoch(model, data, batch_size: int, lr: float, device, compile: bool) -> float:
    config = TrainConfig(epochs=1, batch_size=batch_size, lr=lr, compile=compile, eval_batch_size=256)
    return train(model, data, config, device=device).images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=2560, help="images per epoch (default: 20 batches)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile in the engine")
    args = parser.parse_args()
    warnings.simplefilter("ignore", TorchvisionOpsUnavailable)  # datasets and transforms work without the ops

    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"bench_train: {args.model} (bn), batch {args.batch_size}, {args.images} images per epoch, {device} ({where}), torch {torch.__version__}")
    if device.type != "cuda":
        print("  (CPU run; on a GPU machine: --device cuda --model resnet110 --images 50000; the target there is >= 5x)")
    data = cifar_or_stand_in(args.images)
    ratios = []
    for r in range(args.rounds):
        torch.manual_seed(0)
        base = baseline_epoch(create_model(args.model, "bn"), data, args.batch_size, 0.1, device)
        torch.manual_seed(0)
        ours = engine_epoch(create_model(args.model, "bn"), data, args.batch_size, 0.1, device, args.compile)
        ratios.append(ours / base)
        print(f"  round {r + 1}: baseline {base:8.1f} img/s   engine {ours:8.1f} img/s   ratio {ours / base:.2f}x", flush=True)
    print(f"bench_train: engine / baseline = {statistics.median(ratios):.2f}x (median of {args.rounds} interleaved rounds, {data.name} data)")


if __name__ == "__main__":
    main()
