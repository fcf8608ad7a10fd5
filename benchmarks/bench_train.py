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

Fused multi-run training (``--fused``): steps/s of N runs trained as one stacked network
(:func:`nfstudy.train.train_fused`) against the same N runs one after another
(:func:`nfstudy.train.train`), interleaved per round, on the figures' shapes; each
training step of each run counts as one step. On CUDA (``--grid full``) also one run's
steps/s eager fp32, bf16 autocast + channels_last, ``torch.compile`` and CUDA graphs
(``torch.compile(mode="reduce-overhead")``), and N up to 16.

    python benchmarks/bench_train.py --fused                 # CPU: the quick profiles' shapes (--grid quick)
    python benchmarks/bench_train.py --fused --grid cpu      # the paper shapes at N = 2 (ResNet-110; ResNet-56 at batch 256)
    python benchmarks/bench_train.py --fused --device cuda   # the full grid (--grid full)
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
    return type(data)(
        data.name,
        data.train_images[keep],
        data.train_labels[keep],
        data.test_images[:256],
        data.test_labels[:256],
        data.classes,
        data.mean,
        data.std,
    )


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


# --------------------------------------------------------------------------- fused runs

# (label, model, norm, image size, batch, [N, ...]) per grid. The quick profiles' shapes decide
# whether the figures fuse on a CPU: fig1 quick is ResNet-44 on 8x8 digits at batch 128 (groups of
# 2-3 series per norm), agc quick ResNet-8 at batches 32/128/512 (nf + 3 lambdas: groups of 4).
FUSED_GRIDS = {
    "quick": [("fig1 quick", "resnet44", norm, 8, 128, [2, 3]) for norm in ("bn", "none", "nf")]
    + [("agc quick", "resnet8", "nf", 8, b, [2, 4]) for b in (32, 128, 512)],
    "full": [("fig1 paper", "resnet110", norm, 32, 128, [2, 4, 8, 16]) for norm in ("bn", "none", "nf")]
    + [("agc paper", "resnet56", "nf", 32, b, [2, 6]) for b in (256, 512, 1024, 2048, 4096)],
}
# The paper profiles' shapes at N = 2, the smallest batch only: what a CPU can time in minutes.
FUSED_GRIDS["cpu"] = [("fig1 paper", "resnet110", norm, 32, 128, [2]) for norm in ("bn", "none", "nf")] + [
    ("agc paper", "resnet56", "nf", 32, 256, [2])
]


def steps_per_s_alone(models, data, config, device) -> float:
    """N runs one after another through train: total steps / total training seconds."""
    seconds = 0.0
    for m in models:
        r = train(m, data, config, device=device)
        seconds += r.steps * config.batch_size / r.images_per_s
    return len(models) * len(data.train_labels) // config.batch_size / seconds


def steps_per_s_fused(models, data, config, device) -> float:
    from nfstudy.train import train_fused

    results = train_fused(models, data, [config] * len(models), device=device)
    return sum(r.images_per_s for r in results) / config.batch_size  # every run trained through the same seconds


def one_run_variants(model_name, norm, data, batch, device, steps: int) -> dict[str, float]:
    """CUDA: one run's steps/s (forward, backward, SGD step; no engine) eager fp32, bf16 +
    channels_last, torch.compile, and CUDA graphs (compile mode reduce-overhead)."""
    loader = data.loader("train", batch, device=device)
    x, y = loader.first_batch()
    out = {}
    for name, amp, cl, mode in (
        ("eager fp32", False, False, None),
        ("bf16+channels_last", True, True, None),
        ("compile", True, True, "default"),
        ("cuda graphs", True, True, "reduce-overhead"),
    ):
        torch.manual_seed(0)
        model = create_model(model_name, norm).to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        xx = x.contiguous(memory_format=torch.channels_last) if cl else x
        net = torch.compile(model, mode=mode) if mode else model

        def step():
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(net(xx).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):  # compile, autotune, graph capture
            step()
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        out[name] = steps / (time.perf_counter() - start)
    return out


def fused_main(args, device) -> None:
    grid = args.grid or ("full" if device.type == "cuda" else "quick")
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"bench_train --fused: grid {grid}, {args.fused_steps} steps per run and round, {args.rounds} rounds, "
        f"{device} ({where}), torch {torch.__version__}"
    )
    print("| shape | model | norm | image | batch | N | alone steps/s | fused steps/s | fused / alone (median, rounds) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, model_name, norm, size, batch, ns in FUSED_GRIDS[grid]:
        data = load_dataset("synthetic", train_size=batch * args.fused_steps, test_size=64, image_size=size)
        config = TrainConfig(epochs=1, batch_size=batch, lr=0.01, augment=False, eval_batch_size=64, sync_every=args.fused_steps)
        if device.type == "cuda":
            variants = one_run_variants(model_name, norm, data, batch, device, 4 * args.fused_steps)
            print(
                f"| {label} | {model_name} | {norm} | {size} | {batch} | 1 | "
                + ", ".join(f"{k} {v:.2f}" for k, v in variants.items())
                + " | | |"
            )
        for n in ns:
            ratios, alone, fused = [], [], []
            for _ in range(args.rounds):

                def build():
                    torch.manual_seed(0)
                    return [create_model(model_name, norm) for _ in range(n)]

                alone.append(steps_per_s_alone(build(), data, config, device))
                fused.append(steps_per_s_fused(build(), data, config, device))
                ratios.append(fused[-1] / alone[-1])
            print(
                f"| {label} | {model_name} | {norm} | {size} | {batch} | {n} | {statistics.median(alone):.3f} | "
                f"{statistics.median(fused):.3f} | **{statistics.median(ratios):.2f}x** ({', '.join(f'{r:.2f}' for r in ratios)}) |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=2560, help="images per epoch (default: 20 batches)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile in the engine")
    parser.add_argument("--fused", action="store_true", help="fused N runs against N one at a time (see the docstring)")
    parser.add_argument("--grid", choices=sorted(FUSED_GRIDS), help="--fused: quick (CPU default), cpu, full (CUDA default)")
    parser.add_argument("--fused-steps", type=int, default=None, help="--fused: steps per run and round (CPU 3, CUDA 20)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", TorchvisionOpsUnavailable)  # datasets and transforms work without the ops

    device = resolve_device(args.device)
    if args.fused:
        args.fused_steps = args.fused_steps or (20 if device.type == "cuda" else 3)
        return fused_main(args, device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"bench_train: {args.model} (bn), batch {args.batch_size}, {args.images} images per epoch, "
        f"{device} ({where}), torch {torch.__version__}"
    )
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
    print(
        f"bench_train: engine / baseline = {statistics.median(ratios):.2f}x (median of {args.rounds} interleaved rounds, {data.name} data)"
    )


if __name__ == "__main__":
    main()
