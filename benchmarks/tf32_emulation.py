"""Why the landscape benchmark's two methods disagree on a GPU: TF32, emulated on a CPU.

On the H200 (2026-12-04) bench_landscape.py's relative losses of ours (16 step sizes per
vmapped forward pass) and the reproduction's (one plain forward per step size) differed by
5.9e-5, over the 1e-5 that holds on a CPU. The two compute the same update direction and
differ only in their evaluation passes' convolutions, summed in other orders: outputs a
float32 ulp or so apart. cuDNN, by PyTorch's default (``torch.backends.cudnn.allow_tf32``),
rounds every convolution's inputs to TF32 (10 mantissa bits). This script measures, on a
CPU, ResNet-``depth`` at batch ``batch``, Fig. 3's 20 step sizes 10^-5.5 ... 10^0.5:

* fp32: every conv output of the evaluation passes jittered by one ulp at random, against
  no jitter: what another summation order does in fp32;
* TF32: the same with every conv's input and weight rounded to nearest at 10 mantissa bits
  first (what cuDNN does): the jitter now flips TF32 roundings;
* TF32 against fp32: how far TF32 itself moves the relative losses.

Measured 2026-12-04 (this repository's CPU, torch 2.13.0+cpu, 1 thread), BN, batch 128:

| network | fp32, one-ulp jitter | TF32, one-ulp jitter | TF32 against fp32 |
|---|---|---|---|
| ResNet-20 | 2.0e-7 | 1.7e-5 | 6.5e-2 (at the largest steps; 1e-6 at the smallest) |
| ResNet-110 | 2.3e-7 | 3.7e-5 | 1.2e-1 (at the largest steps; 4e-5 at the smallest) |

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tf32_emulation.py --depth 110   # ~3 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from nfstudy.data import load_dataset
from nfstudy.models import cifar_resnet
from nfstudy.probes import relative_loss_along_update

LEARNING_RATES = {"bn": 0.1, "none": 1e-4}


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to nearest (ties away from zero) at TF32's 10 mantissa bits, as
    ``cvt.rna.tf32.f32`` does; the gradient passes through unchanged."""
    bits = x.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & -0x2000).view(torch.float32).reshape(x.shape)
    return x + (rounded - x).detach()


@contextlib.contextmanager
def convolutions(tf32: bool, jitter: torch.Generator | None):
    """``F.conv2d`` with TF32-rounded inputs, and, with ``jitter``, each output of a pass
    without gradients (the evaluation passes) moved by -1, 0 or +1 float32 ulp at random."""
    conv2d = F.conv2d

    def conv(x, w, *args, **kwargs):
        if tf32:
            x, w = to_tf32(x), to_tf32(w)
        y = conv2d(x, w, *args, **kwargs)
        if jitter is not None and not torch.is_grad_enabled():
            y = y * (1 + (torch.randint(0, 3, y.shape, generator=jitter) - 1).float() * 2.0**-24)
        return y

    torch.nn.functional.conv2d = conv
    try:
        yield
    finally:
        torch.nn.functional.conv2d = conv2d


def relative_losses(depth: int, batch: int, series: str, tf32: bool, jitter: bool) -> np.ndarray:
    """bench_landscape.py's setting: one real SGD update, then the probe on mini-batch 1."""
    data = load_dataset("synthetic", train_size=4 * batch, test_size=64)
    torch.manual_seed(0)
    model = cifar_resnet(depth, series, "xavier_uniform", num_classes=data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATES[series], momentum=0.9, weight_decay=5e-4)
    batches = data.loader("train", batch, augment=True, seed=0, device="cpu", drop_last=True).epoch_batches(0)
    images, labels = next(batches)
    model.train()
    optimizer.zero_grad()
    with convolutions(tf32, None):
        F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    images, labels = next(batches)
    steps = np.logspace(-5.5, 0.5, 20)
    with convolutions(tf32, torch.Generator().manual_seed(1) if jitter else None):
        return relative_loss_along_update(model, optimizer, images, labels, steps, chunk_size=1).relative_loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--series", default="bn", choices=sorted(LEARNING_RATES))
    args = parser.parse_args(argv)
    found = {}
    for tf32 in (False, True):
        for jitter in (False, True):
            start = time.perf_counter()
            found[tf32, jitter] = relative_losses(args.depth, args.batch_size, args.series, tf32, jitter)
            print(f"  tf32={tf32} jitter={jitter}: {time.perf_counter() - start:.0f} s", flush=True)

    def worst(a, b):
        both = np.isfinite(a) & np.isfinite(b)
        return float(np.max(np.abs(a[both] / b[both] - 1)))

    print(f"ResNet-{args.depth} ({args.series}), batch {args.batch_size}: max relative difference of the relative losses")
    print(f"  fp32, one-ulp jitter:  {worst(found[False, True], found[False, False]):.1e}")
    print(f"  TF32, one-ulp jitter:  {worst(found[True, True], found[True, False]):.1e}")
    print(f"  TF32 against fp32:     {worst(found[True, False], found[False, False]):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
