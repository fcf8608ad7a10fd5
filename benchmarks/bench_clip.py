"""AGC speed: nfstudy.clip's vectorised path (``clip.fast``) against its definition applied
tensor by tensor (``clip.agc.adaptive_clip_grad_``) and timm's ``adaptive_clip_grad``.

    python benchmarks/bench_clip.py                 # what `make bench` runs
    python benchmarks/bench_clip.py --threads 1 --reps 30 --device cuda

Three gradient sets, each clipped in place by every implementation from the same saved
gradients (restored before every repetition, outside the timer), in one process, the
implementations interleaved within every repetition (a rotating order) so that a busy
machine slows all of them alike. Wall-clock and process CPU times are printed (median and
best, and their ratios): on a shared machine a short call is often preempted, which the
CPU time (with one torch thread) does not count. Before timing,
the results are asserted equal.

* ResNet-110 (BN) and ResNet-110 (NF) gradients of one backward pass (nfstudy.models).
  For the NF network, fast and agc are given timm's units for the one kind of
  tensor where the two definitions differ (gains stored as [out, 1, 1, 1]: one unit as
  the paper's code defines it, one unit per element for timm; see tests/test_clip.py),
  so that all three compute the same thing.
* A stack of large Linear layers (bandwidth, not launch overhead, dominates).

"floor" is no implementation: three passes (norm of W, norm of G, G scaled) over one flat
copy of all weights and gradients, the memory traffic any AGC needs, without per-tensor
costs.

Then the stacking threshold of nfstudy.clip.fast (STACK_BELOW_NUMEL) swept on ResNet-110 (NF),
and AGC's share of a ResNet-110 (NF) training step: forward, backward, clip, SGD step at
batch 128, ours and timm's clip in alternate steps (timm given the parameters less the
head's weight; ours given the model).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from nfstudy.compat import import_torchvision

    import_torchvision()  # before timm, which imports torchvision

from timm.utils.agc import adaptive_clip_grad as timm_adaptive_clip_grad  # noqa: E402

from nfstudy.clip import GradientClipper, adaptive_clip_grad_, fast  # noqa: E402
from nfstudy.clip.agc import default_unit_dim  # noqa: E402
from nfstudy.clip.fast import foreach_adaptive_clip_grad_  # noqa: E402
from nfstudy.models import cifar_resnet  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _jsonl import JsonLines  # noqa: E402  (benchmarks/_jsonl.py)

OUT = JsonLines(None, "bench_clip")  # main() points it at --jsonl
DEPTH = 110  # --depth: the ResNet of the gradient sets and of the training step

THRESHOLD = 0.01  # the paper's lambda for large batches


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(params, methods, reps, device, setups=None, unchecked=()):
    """Seconds per method and repetition, wall clock and process CPU time, every method
    once per repetition in a rotating order; results asserted equal first (but for the
    ``unchecked`` methods). ``setups[name]`` runs, untimed, before each call of that method."""
    setups = setups or {}
    grads = [p.grad for p in params]
    saved = [g.clone() for g in grads]

    def restore():
        torch._foreach_copy_(grads, saved)
        sync(device)

    outputs = {}
    for name, fn in methods.items():
        if name in unchecked:
            continue
        setups.get(name, lambda: None)()
        restore()
        fn()
        outputs[name] = [g.clone() for g in grads]
    reference = next(iter(outputs))
    for name, out in outputs.items():
        for a, b in zip(outputs[reference], out):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name} != {reference}: {m}")
    changed = sum(int((a != s).any()) for a, s in zip(outputs[reference], saved))
    names = list(methods)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            setups.get(name, lambda: None)()
            restore()
            start, start_cpu = time.perf_counter(), time.process_time()
            methods[name]()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    restore()
    return wall, cpu, changed


def floor_of(params):
    """The least any AGC can do: read W, read G, scale G, each as one pass over one flat tensor."""
    weights = torch.cat([p.detach().reshape(-1) for p in params])
    grads = torch.cat([p.grad.reshape(-1) for p in params])

    def three_passes():
        torch.linalg.vector_norm(weights)
        torch.linalg.vector_norm(grads)
        grads.mul_(1.0)

    return three_passes


def summary(times):
    median = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    text = ", ".join(f"{k} {median[k] * 1e3:.2f} ({best[k] * 1e3:.2f})" for k in times)
    ratios = "  ".join(f"{k}/fast {median[k] / median['fast']:.2f}x ({best[k] / best['fast']:.2f}x)" for k in times if k != "fast")
    return f"{text}  | {ratios}"


def resnet_gradients(norm, device, batch=32, seed=0):
    torch.manual_seed(seed)
    kwargs = {"skip_gain_init": 1.0} if norm == "nf" else {}  # SkipInit's 0 leaves branch gradients at 0
    model = cifar_resnet(DEPTH, norm, **kwargs).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    F.cross_entropy(model(x), y).backward()
    return model


def linear_stack(device, layers, width, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 0.01
    return model


def gradient_benchmarks(device, reps, layers, width):
    cases = {
        f"ResNet-{DEPTH} (BN)": resnet_gradients("bn", device),
        f"ResNet-{DEPTH} (NF)": resnet_gradients("nf", device),
        f"{layers} x Linear({width}, {width})": linear_stack(device, layers, width),
    }
    rows = []
    for case, model in cases.items():
        params = [p for p in model.parameters() if p.grad is not None]
        # timm's units: a tensor with ndim <= 1 is one unit, any other has one per row.
        # They differ from ours only for [out, 1, 1, 1] gains (NF), so we are given timm's.
        units = {p: 0 for p in params if p.ndim > 1 and default_unit_dim(p.shape) is None}
        numel = sum(p.numel() for p in params)
        methods = {
            "fast": lambda: foreach_adaptive_clip_grad_(params, THRESHOLD, unit_dims=units),
            "timm": lambda: timm_adaptive_clip_grad(params, THRESHOLD),
            "agc": lambda: adaptive_clip_grad_(params, THRESHOLD, unit_dims=units),
            "floor": floor_of(params),
        }
        n = reps if numel < 1e7 else max(5, reps // 4)
        wall, cpu, changed = time_interleaved(params, methods, n, device, unchecked={"floor"})
        rows.append((case, wall, cpu))
        OUT.write(
            "agc",
            case=case,
            tensors=len(params),
            parameters=numel,
            repetitions=n,
            wall_ms={k: 1e3 * statistics.median(v) for k, v in wall.items()},
            wall_best_ms={k: 1e3 * min(v) for k, v in wall.items()},
            cpu_ms={k: 1e3 * statistics.median(v) for k, v in cpu.items()},
        )
        print(f"{case}: {len(params)} tensors, {numel / 1e6:.2f}M parameters, {changed} clipped, {n} repetitions", flush=True)
        print(f"  wall ms, median (best): {summary(wall)}", flush=True)
        print(f"  CPU  ms, median (best): {summary(cpu)}", flush=True)
    return rows


def stacking_threshold_sweep(device, reps):
    """AGC on ResNet-110 (NF) gradients with fast.STACK_BELOW_NUMEL set to each value."""
    model = resnet_gradients("nf", device)
    params = [p for p in model.parameters() if p.grad is not None]
    default = fast.STACK_BELOW_NUMEL
    values = {"never": 0, "1024": 1024, "16384": 16384, "65536": 65536, "always": 2**62}

    def use(value):
        def setup():
            if fast.STACK_BELOW_NUMEL != value:
                fast.STACK_BELOW_NUMEL = value
                fast._plan.cache_clear()
                foreach_adaptive_clip_grad_(params, THRESHOLD)  # build the plan and its buffers, untimed

        return setup

    methods = {name: (lambda: foreach_adaptive_clip_grad_(params, THRESHOLD)) for name in values}
    setups = {name: use(value) for name, value in values.items()}
    _, cpu, _ = time_interleaved(params, methods, reps, device, setups)
    fast.STACK_BELOW_NUMEL = default
    fast._plan.cache_clear()
    medians = {name: statistics.median(t) for name, t in cpu.items()}
    OUT.write("agc_stacking", default=default, cpu_ms={name: 1e3 * m for name, m in medians.items()})
    print(
        f"ResNet-{DEPTH} (NF), stack same-shaped tensors below N elements (now {default}), CPU ms median: "
        + ", ".join(f"{name} {m * 1e3:.2f}" for name, m in medians.items()),
        flush=True,
    )


def training_step_share(device, steps, batch=128):
    """Seconds of (step, our clip, timm's clip): the two clips alternate step by step."""
    torch.manual_seed(0)
    model = cifar_resnet(DEPTH, "nf").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    ours = GradientClipper("adaptive", THRESHOLD)  # head: model.fc.weight left unclipped
    head_excluded = [p for n, p in model.named_parameters() if n != "fc.weight"]
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    clips = {"nfstudy": lambda: ours(model), "timm": lambda: timm_adaptive_clip_grad(head_excluded, THRESHOLD)}
    timing = {name: ([], []) for name in clips}  # step seconds, clip seconds
    for step in range(steps + 2):
        name = "nfstudy" if step % 2 == 0 else "timm"
        sync(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        sync(device)
        before_clip = time.perf_counter()
        clips[name]()
        sync(device)
        after_clip = time.perf_counter()
        opt.step()
        sync(device)
        end = time.perf_counter()
        if step >= 2:  # the first step of each warms up allocators and caches
            timing[name][0].append(end - start)
            timing[name][1].append(after_clip - before_clip)
    for name, (step_s, clip_s) in timing.items():
        share = statistics.median(c / s for c, s in zip(clip_s, step_s))
        OUT.write(
            "agc_step_share",
            clip=name,
            depth=DEPTH,
            batch=batch,
            steps=len(step_s),
            step_ms=1e3 * statistics.median(step_s),
            clip_ms=1e3 * statistics.median(clip_s),
            share=share,
        )
        print(
            f"ResNet-{DEPTH} (NF) step, batch {batch}, clip = {name:<8}: step {statistics.median(step_s):6.2f} s, "
            f"clip {statistics.median(clip_s) * 1e3:7.2f} ms = {share:.2%} of the step",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--reps", type=int, default=40, help="repetitions (a quarter for the Linear stack)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8, help="training steps for the share (half with each clip)")
    parser.add_argument("--depth", type=int, default=110, help="the ResNet's depth (default 110, the paper's)")
    parser.add_argument("--jsonl", help="append one JSON record per measurement to this file (tools/bench_tables.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    global OUT, DEPTH
    OUT, DEPTH = JsonLines(args.jsonl, "bench_clip", device), args.depth
    print(
        f"# AGC at lambda={THRESHOLD}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, device {device}, {args.reps} interleaved repetitions",
        flush=True,
    )
    gradient_benchmarks(device, args.reps, args.layers, args.width)
    stacking_threshold_sweep(device, args.reps // 2)
    if args.steps:
        training_step_share(device, args.steps)


if __name__ == "__main__":
    main()
