"""What the activation probe costs: ResNet-110, one batch, every weight layer hooked.

Compares, in one process with interleaved repetitions (so a busy machine slows every
variant alike), the time of one no-grad train-mode forward pass of

* ``plain``: the model alone;
* ``probe``: ``nfstudy.probes.ActivationProbe(model, "weights")``: per-channel mean and
  variance of all 110 layers reduced on the device, one host transfer per forward;
* ``per-layer sync``: the same per-channel moments, but each hook copies its layer's
  to the host at once (``.tolist()``: one device synchronisation per layer);
* ``reproduction``: the public reproduction's hook (docs/papers.md#bjorck-reproduction): channel 0's
  mean and std, two ``.item()`` calls per layer.

and prints the medians and their ratios to ``plain``. On a CPU a synchronisation is
nearly free, so the sync-per-layer baselines cost about what the reductions cost; on
a GPU each one stalls the queue (run with ``--device cuda``).

    python benchmarks/bench_activation_probe.py [--device cpu] [--batch 128] [--reps 9] [--norm bn] [--threads N]

Both wall time and process CPU time are reported: on a machine shared with other jobs
the CPU time of a single-threaded run (``--threads 1``) is the steadier measure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from nfstudy.models import cifar_resnet, weight_layers
from nfstudy.probes import ActivationProbe, channel_moments
from nfstudy.runtime import resolve_device


class PerLayerSync:
    """The obvious baseline: the same moments, copied to the host by every hook."""

    def __init__(self, model):
        self.layers = [w.module for w in weight_layers(model)]
        self.records = []

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def _hook(self, module, args, output):
        self.records.append(channel_moments(output).tolist())

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


class ReproductionHooks(PerLayerSync):
    """The Bjorck reproduction's hook: ``output[:, 0].mean().abs().item()`` and ``.std().abs().item()``."""

    def _hook(self, module, args, output):
        channel = output[:, 0]
        self.records.append((channel.mean().abs().item(), channel.std().abs().item()))


def _variants(model):
    return {
        "plain": lambda: _Nothing(),
        "probe": lambda: ActivationProbe(model, "weights"),
        "per-layer sync": lambda: PerLayerSync(model),
        "reproduction": lambda: ReproductionHooks(model),
    }


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--norm", default="bn", help="bn | none | nf")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = cifar_resnet(110, args.norm).to(device).train()
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    variants = _variants(model)
    names = list(variants)
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    with torch.no_grad():
        for name in names:  # warm-up: allocator, kernels, hooks' first calls
            with variants[name]():
                model(x)
        _sync(device)
        load_before = os.getloadavg()
        for rep in range(args.reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate the order
                with variants[name]():
                    _sync(device)
                    start, start_cpu = time.perf_counter(), time.process_time()
                    model(x)
                    _sync(device)
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        load_after = os.getloadavg()
    base, base_cpu = statistics.median(times["plain"]), statistics.median(cpu["plain"])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}"
    print(
        f"activation probe, ResNet-110 ({args.norm}), batch {args.batch}, {len(weight_layers(model))} hooked layers, "
        f"{device} [{where}], {torch.get_num_threads()} threads, torch {torch.__version__}, {args.reps} interleaved reps"
    )
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other processes share the cores)")
    print(f"  {'':<15} {'wall, median':>14} {'x plain':>8}   {'CPU, median':>13} {'x plain':>8}")
    for name in names:
        wall, used = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"  {name:<15} {wall * 1e3:11.1f} ms {wall / base:8.3f}   {used * 1e3:10.1f} ms {used / base_cpu:8.3f}")


if __name__ == "__main__":
    main()
