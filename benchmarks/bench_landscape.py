"""The landscape probe against the public reproduction's method (Bjorck et al. Fig. 3).

Baseline (docs/papers.md#bjorck-reproduction, ``fig3``; ``relative_loss_by_trial_steps`` in tests/_reference.py):
for each step size, save model and optimizer with ``torch.save``, forward, backward,
``optimizer.step()`` with ``lr = eta``, evaluate, restore both with ``torch.load``.
Ours (``nfstudy.probes.relative_loss_along_update``): one forward and backward pass,
then one forward pass per step size (``chunk_size`` of them vectorised together).
Arithmetic bound on the speed-up, forward = 1, backward = 2: (1 + 2 + 1) / 1 = 4 per
step size, minus our one forward/backward.

Same model (ResNet-110 by default), same mini-batch, same optimizer state (one real SGD
update taken, so the momentum buffers exist: mini-batch 1 of Fig. 3), in one process.
The two methods alternate within each round (the order flips every round) so that
machine load hits both alike; we report the median of the per-round ratios of wall time
and, on a CPU, of this process's CPU time (``time.process_time``), which other processes'
load on a shared machine disturbs far less. We assert that the relative losses agree where
both are finite, to :func:`agreement_bound`: 1e-5 in fp32, 2^-11 with TF32 convolutions
(cuDNN's default on a GPU).

    .venv/bin/python benchmarks/bench_landscape.py                  # make bench runs this
    .venv/bin/python benchmarks/bench_landscape.py --device cuda    # the batched path on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

warnings.simplefilter("ignore")
from nfstudy.data import load_dataset  # noqa: E402  (imports torchvision safely first)
from nfstudy.models import cifar_resnet  # noqa: E402
from nfstudy.probes import relative_loss_along_update  # noqa: E402
from nfstudy.probes.landscape import default_chunk_size  # noqa: E402
from nfstudy.runtime import resolve_device  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from _reference import relative_loss_by_trial_steps  # noqa: E402  (the reproduction's method, kept with the tests)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _jsonl import JsonLines  # noqa: E402  (benchmarks/_jsonl.py)

LEARNING_RATES = {"bn": 0.1, "none": 1e-4, "nf": 0.1}  # Fig. 3's training learning rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    """``(result, wall seconds, CPU seconds of this process)``."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average {load:.1f}, torch {torch.__version__}"


def agreement_bound(device: torch.device) -> tuple[float, str]:
    """How closely the two methods' relative losses must agree, and the arithmetic that sets it.

    fp32 (a CPU; a GPU with TF32 off): 1e-5. On a CPU both methods run the same kernels on
    the same weights (ours computes ``theta - eta * d`` with SGD's own arithmetic) and agree
    to ~5e-8; convolutions summed in another order (the GPU's vmapped, grouped ones against
    plain ones) move each output by about one float32 ulp, which moved the relative losses
    by at most 2.3e-7 in a CPU emulation (ResNet-20 and -110, BN, batch 128, 20 step sizes;
    every conv output of the evaluation passes jittered by one ulp at random).

    TF32 (CUDA with ``torch.backends.cudnn.allow_tf32``, PyTorch's default): 2^-11 = 4.9e-4,
    TF32's unit roundoff. cuDNN rounds every convolution's inputs to 10 mantissa bits, so an
    ulp-sized difference between the two paths' activations flips a rounding now and then,
    and each flip is a TF32 rounding (2^-11 relative), not a float32 one: the same one-ulp
    jitter under emulated TF32 (inputs rounded to nearest at 10 bits) moved the relative
    losses by 1.7e-5 (ResNet-20) and 3.7e-5 (ResNet-110) (benchmarks/tf32_emulation.py); the
    H200 measured 5.9e-5 (ResNet-110, BN, 20 step sizes), over the old bound of 1e-5. Two
    evaluations that each round to TF32 can differ by the arithmetic's resolution, not less;
    a real error (a wrong direction or step size) moves the large step sizes' relative
    losses by far more.
    """
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return 2.0**-11, "TF32 convolutions (cuDNN's default): their unit roundoff, 2^-11"
    return 1e-5, "fp32"


def bench_series(series: str, args, data, device) -> dict:
    torch.manual_seed(0)
    model = cifar_resnet(args.depth, series, "xavier_uniform", num_classes=data.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATES[series], momentum=0.9, weight_decay=5e-4)
    batches = data.loader("train", args.batch_size, augment=True, seed=0, device=device, drop_last=True).epoch_batches(0)
    images, labels = next(batches)
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()  # one real update: momentum buffers exist
    optimizer.step()
    images, labels = next(batches)  # mini-batch 1
    steps = np.logspace(args.log10_min, args.log10_max, args.step_sizes)
    chunk = args.chunk_size or default_chunk_size(device)

    def ours():
        return relative_loss_along_update(model, optimizer, images, labels, steps, chunk_size=chunk).relative_loss

    with tempfile.TemporaryDirectory() as folder:

        def baseline():
            return relative_loss_by_trial_steps(model, optimizer, images, labels, steps, folder)

        ours()  # warm-up (allocator, kernels, functional_call's first trace)
        times_ours, times_base, ratios, cpu_ratios = [], [], [], []
        for round_ in range(args.rounds):
            order = (("ours", ours), ("base", baseline)) if round_ % 2 == 0 else (("base", baseline), ("ours", ours))
            got = {}
            for name, fn in order:
                got[name] = _timed(fn, device)
            (r_ours, t_ours, c_ours), (r_base, t_base, c_base) = got["ours"], got["base"]
            times_ours.append(t_ours)
            times_base.append(t_base)
            ratios.append(t_base / t_ours)
            cpu_ratios.append(c_base / c_ours)
            print(
                f"  {series:5s} round {round_ + 1}: baseline {t_base:7.2f}s  ours {t_ours:6.2f}s  wall ratio "
                f"{t_base / t_ours:5.2f}  CPU-time ratio {c_base / c_ours:5.2f}",
                flush=True,
            )
    both = np.isfinite(r_ours) & np.isfinite(r_base)
    worst = float(np.max(np.abs(r_ours[both] / r_base[both] - 1))) if both.any() else float("nan")
    evaluated = int(np.isfinite(r_base).sum())
    assert both.sum() >= min(3, len(steps)), f"{series}: too few finite step sizes to compare ({both.sum()})"
    bound, arithmetic = agreement_bound(device)
    assert worst <= bound, (
        f"{series}: relative losses differ by {worst:.2e} (relative) from the baseline's, over {bound:.1e} ({arithmetic})"
    )
    return {
        "series": series,
        "ours_s": statistics.median(times_ours),
        "baseline_s": statistics.median(times_base),
        "ratio": statistics.median(ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
        "max_rel_diff": worst,
        "agreement_bound": bound,
        "arithmetic": arithmetic,
        "compared": int(both.sum()),
        "baseline_evaluated": evaluated,
        "chunk": chunk,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=110)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--step-sizes", type=int, default=20, help="log-spaced step sizes (the paper profile uses 80)")
    parser.add_argument("--log10-min", type=float, default=-5.5)
    parser.add_argument("--log10-max", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--series", nargs="+", default=["bn", "none"], choices=sorted(LEARNING_RATES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--chunk-size", type=int, default=None, help="step sizes per forward pass (default: 1 on CPU, 16 on GPU)")
    parser.add_argument("--dataset", default="digits", help="digits (bundled) | synthetic | cifar10")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--jsonl", help="append one JSON record per series to this file (tools/bench_tables.py)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    # Two mini-batches are all the benchmark draws: synthetic data need not be a full training set.
    kwargs = {"train_size": 4 * args.batch_size, "test_size": 64} if args.dataset == "synthetic" else {}
    data = load_dataset(args.dataset, **kwargs)
    out = JsonLines(args.jsonl, "bench_landscape", device)
    print(
        f"bench_landscape: ResNet-{args.depth}, {args.dataset}, batch {args.batch_size}, {args.step_sizes} step sizes "
        f"10^{args.log10_min}..10^{args.log10_max}, {args.rounds} interleaved rounds"
    )
    print(f"machine: {machine(device)}")
    results = [bench_series(s, args, data, device) for s in args.series]
    k = args.step_sizes
    for r in results:
        out.write(
            "landscape",
            **r,
            depth=args.depth,
            batch=args.batch_size,
            step_sizes=k,
            rounds=args.rounds,
            dataset=args.dataset,
            bound=4 * k / (3 + k),
        )
    print(f"\n{'series':6s} {'baseline':>9s} {'ours':>8s} {'wall':>6s} {'CPU':>6s}  {'agreement (max rel diff)':>24s}  chunk")
    for r in results:
        note = (
            ""
            if r["baseline_evaluated"] == args.step_sizes
            else (f"  (the baseline stopped at its first non-finite loss: {r['baseline_evaluated']} of {args.step_sizes} step sizes)")
        )
        print(
            f"{r['series']:6s} {r['baseline_s']:8.2f}s {r['ours_s']:7.2f}s {r['ratio']:5.2f}x {r['cpu_ratio']:5.2f}x  "
            f"{r['max_rel_diff']:16.1e} on {r['compared']:2d}  {r['chunk']:5d}{note}"
        )
    target = 3.0 if device.type == "cpu" else 10.0
    print(
        f"\narithmetic bound on {device.type} for {k} step sizes (forward 1, backward 2): {4 * k / (3 + k):.2f}x; "
        f"target {target:g}x; relative losses agree to {results[0]['agreement_bound']:.1e} ({results[0]['arithmetic']}) "
        "where both are finite: yes (asserted)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
