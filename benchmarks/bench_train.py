"""Training throughput of nfstudy.train against the public reproduction's loop.

Baseline (docs/papers.md#bjorck-reproduction, the public reproduction of Bjorck et al.): a torchvision
``DataLoader`` over a dataset that returns PIL images, ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` per image on the CPU, each batch
copied to the device, and ``.item()`` twice per batch (loss and correct count).

Engine: :func:`nfstudy.train.train` -- the split resident on the device, crop and flip
as one gather there, no host sync per step, in its default precision (fp32 on every device;
bf16 autocast with channels_last is opt-in, ``precision="bf16"``) (and ``--compile``).

Both train the same model (same initial weights) with the same SGD on the same number of
images, one epoch each, interleaved (baseline, engine, baseline, engine, ...) so that a
machine's changing load hits both alike; images/s counts training steps only (the
engine's per-epoch test evaluation is excluded). The ratio engine / baseline is printed
per round and as the median.

    python benchmarks/bench_train.py                         # CPU: ResNet-20
    python benchmarks/bench_train.py --device cuda --model resnet110 --images 50000

Fused multi-run training (``--fused``): steps/s of N runs trained as one stacked network
(:func:`nfstudy.train.train_fused`) against one run through :func:`nfstudy.train.train` (N
runs one after another have its steps/s), interleaved per round, after an untimed warm-up of
each shape and N, on the figures' shapes; each training step of each run counts as one step.
On rows with ``variants``, one run's step is also timed bare (forward, backward, SGD step) as
``--variants`` says: eager fp32, bf16 autocast + channels_last, one CUDA graph, torch.compile.
``--budget-s`` starts no measurement after that many seconds; ``--jsonl`` writes one record
per measurement (tools/bench_tables.py); a measurement that fails (out of memory, a variant
this device cannot run) is recorded and the grid goes on.

    python benchmarks/bench_train.py --fused                 # CPU: the quick profiles' shapes (--grid quick)
    python benchmarks/bench_train.py --fused --grid cpu      # the paper shapes at N = 2 (ResNet-110; ResNet-56 at batch 256)
    python benchmarks/bench_train.py --fused --device cuda --budget-s 90 --jsonl b.jsonl   # GPU: --grid gpu
    python benchmarks/bench_train.py --fused --device cuda --grid variants --variants compile --jsonl b.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from nfstudy.compat import TorchvisionOpsUnavailable, import_torchvision
from nfstudy.data import DatasetNotFoundError, load_dataset
from nfstudy.models import create_model
from nfstudy.runtime import resolve_device
from nfstudy.train import TrainConfig, train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _jsonl import JsonLines  # noqa: E402  (benchmarks/_jsonl.py, beside this script)


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


@dataclasses.dataclass(frozen=True)
class Shape:
    """One row of a grid: a figure's training shape and the numbers of fused runs to time.
    ``variants``: also time one run's step through the ``--variants`` (see :data:`VARIANTS`);
    ``steps``: steps per run and round for this row (default ``--fused-steps``; fewer at
    large batches, where one step is long)."""

    label: str
    model: str
    norm: str
    image: int
    batch: int
    ns: tuple[int, ...]
    variants: bool = False
    steps: int | None = None


AGC_BATCHES = (256, 512, 1024, 2048, 4096)  # experiments/agc.py, the paper profile
# Steps per run and round at the AGC figure's batches on a GPU: about 5,000 images a round.
AGC_STEPS = {256: 20, 512: 10, 1024: 6, 2048: 4, 4096: 4}
# The grids. The quick profiles' shapes decide whether the figures fuse on a CPU: fig1 quick is
# ResNet-44 on 8x8 digits at batch 128 (groups of 2-3 series per norm), agc quick ResNet-8 at
# batches 32/128/512 (nf + 3 lambdas: groups of 4). The paper's: fig1 ResNet-110 at batch 128
# (groups of 3, 3, 2), agc ResNet-56 at batches 256 ... 4096 (nf + 5 lambdas: groups of 6).
FUSED_GRIDS: dict[str, list[Shape]] = {
    "quick": [Shape("fig1 quick", "resnet44", norm, 8, 128, (2, 3)) for norm in ("bn", "none", "nf")]
    + [Shape("agc quick", "resnet8", "nf", 8, b, (2, 4)) for b in (32, 128, 512)],
    # The paper shapes at N = 2, the smallest batch only: what a CPU can time in minutes.
    "cpu": [Shape("fig1 paper", "resnet110", norm, 32, 128, (2,)) for norm in ("bn", "none", "nf")]
    + [Shape("agc paper", "resnet56", "nf", 32, 256, (2,))],
    # Every paper shape, N up to 16 (fig1) and the AGC figure's groups of 6 at every batch.
    "full": [Shape("fig1 paper", "resnet110", norm, 32, 128, (2, 4, 8, 16), variants=True) for norm in ("bn", "none", "nf")]
    + [Shape("agc paper", "resnet56", "nf", 32, b, (2, 6), steps=AGC_STEPS[b]) for b in AGC_BATCHES],
    # The GPU default, a few minutes on an H100/H200 (bounded further by --budget-s), in the
    # order that fills in the cost table soonest: fig1's groups (N = 2, 3; one run's variants)
    # and agc's group of 6 at batch 256, then fig1's shapes at N = 4, 8, 16, then agc's other
    # batches, the largest (the likeliest to run out of memory) last.
    "gpu": [
        Shape("fig1 paper", "resnet110", norm, 32, 128, n, variants=True) for norm, n in (("bn", (2, 3)), ("none", (2, 3)), ("nf", (2,)))
    ]
    + [Shape("agc paper", "resnet56", "nf", 32, 256, (6,), steps=AGC_STEPS[256])]
    + [Shape("fig1 paper", "resnet110", norm, 32, 128, (4, 8, 16)) for norm in ("bn", "none", "nf")]
    + [Shape("agc paper", "resnet56", "nf", 32, b, (6,), steps=AGC_STEPS[b]) for b in (1024, 512, 2048, 4096)],
    # The AGC figure's groups alone (nf and its 5 lambdas at each batch; the first GPU session's
    # --grid gpu spent its budget before them): its cost table's step times.
    "agc": [Shape("agc paper", "resnet56", "nf", 32, b, (6,), steps=AGC_STEPS[b]) for b in AGC_BATCHES],
    # fig1's own groups (bn x 3, none x 3, nf x 2): the step times tools/bench_tables.py --fig1-epochs reads.
    "fig1": [Shape("fig1 paper", "resnet110", norm, 32, 128, (n,)) for norm, n in (("bn", 3), ("none", 3), ("nf", 2))],
    # One run's variants of the paper network alone (e.g. --variants compile, in a process of its own).
    "variants": [Shape("fig1 paper", "resnet110", "bn", 32, 128, (), variants=True)],
    # Seconds on a CPU: the code path of every measurement (tests, a dry run of a GPU session).
    "smoke": [Shape("smoke", "resnet8", "nf", 8, 32, (2,), variants=True, steps=2)],
}
# One run's step (forward, backward, SGD step; no engine around it) timed as:
VARIANTS = {
    "eager fp32": "fp32, contiguous (NCHW), eager (what nfstudy.train does by default)",
    "bf16+channels_last": "bf16 autocast, channels_last, eager (nfstudy.train's precision='bf16')",
    "cuda graph": "bf16+channels_last captured whole (forward, backward, SGD step) as one CUDA graph and replayed (CUDA only)",
    "compile": "bf16+channels_last through torch.compile (mode default); compile_s is the time of the first steps",
}
DEFAULT_VARIANTS = {"cuda": ("eager fp32", "bf16+channels_last", "cuda graph"), "cpu": ()}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_s_alone(model, data, config, device) -> float:
    """One run through :func:`nfstudy.train.train`: its steps / its training seconds (N runs
    one after another take N times as long, so their steps/s summed over runs is the same)."""
    r = train(model, data, config, device=device)
    return r.steps / (r.steps * config.batch_size / r.images_per_s)


def steps_per_s_fused(models, data, config, device) -> float:
    from nfstudy.train import train_fused

    results = train_fused(models, data, [config] * len(models), device=device)
    return sum(r.images_per_s for r in results) / config.batch_size  # every run trained through the same seconds


def one_run_variant(variant: str, model_name: str, norm: str, x, y, device, steps: int) -> dict[str, float]:
    """One run's steps/s (and, for compile, the seconds of its first steps) as ``variant`` says."""
    amp = variant != "eager fp32"
    cl = amp
    torch.manual_seed(0)
    model = create_model(model_name, norm).to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xx = x.contiguous(memory_format=torch.channels_last) if cl else x.contiguous()
    net = torch.compile(model) if variant == "compile" else model
    dtype = torch.bfloat16

    def step():
        with torch.autocast(device.type, dtype, enabled=amp, cache_enabled=variant != "cuda graph"):
            loss = F.cross_entropy(net(xx).float(), y)
        loss.backward()
        opt.step()

    def eager_step():
        opt.zero_grad(set_to_none=True)
        step()

    run = eager_step
    start = time.perf_counter()
    if variant == "cuda graph":
        if device.type != "cuda":
            raise RuntimeError("the cuda graph variant needs a CUDA device")
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires (momentum buffers exist after it)
            for _ in range(3):
                eager_step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)  # backward allocates the gradients from the graph's pool
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    for _ in range(3):  # warm-up: cuDNN autotuning, compilation, the graph's first replays
        run()
    _sync(device)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    seconds = time.perf_counter() - start
    out = {"steps_per_s": steps / seconds, "ms_per_step": 1e3 * seconds / steps, "steps": steps}
    if variant == "compile":
        out["compile_s"] = warm_s
    return out


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _error_text(error: BaseException) -> str:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "out of memory: " + str(error).split("\n")[0][:200]
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


def fused_main(args, device) -> int:
    grid = args.grid or ("gpu" if device.type == "cuda" else "quick")
    variants = DEFAULT_VARIANTS["cuda" if device.type == "cuda" else "cpu"] if args.variants is None else args.variants
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    out = JsonLines(args.jsonl, "bench_train", device)
    clock = time.monotonic()
    budget = args.budget_s or float("inf")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(
        f"bench_train --fused: grid {grid}, {args.fused_steps} steps per run and round (fewer at large batches), "
        f"{args.rounds} rounds, variants {', '.join(variants) or 'none'}, budget {budget:g} s, {device} ({where}), "
        f"torch {torch.__version__}"
    )
    print("| shape | model | norm | image | batch | N | alone steps/s | fused steps/s | fused / alone (median, rounds) |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    failures = 0

    def over_budget(what: dict) -> bool:
        spent = time.monotonic() - clock
        if spent < budget:
            return False
        out.write("skipped", **what, reason=f"--budget-s {budget:g} spent ({spent:.0f} s)")
        print(f"| {what} | skipped: budget spent |", flush=True)
        return True

    for shape in FUSED_GRIDS[grid]:
        keys = {"label": shape.label, "model": shape.model, "norm": shape.norm, "image": shape.image, "batch": shape.batch}
        steps = shape.steps or args.fused_steps
        data = load_dataset("synthetic", train_size=shape.batch * steps, test_size=64, image_size=shape.image)
        warm = load_dataset("synthetic", train_size=shape.batch * 2, test_size=64, image_size=shape.image)
        config = TrainConfig(epochs=1, batch_size=shape.batch, lr=0.01, augment=False, eval_batch_size=64, sync_every=steps)
        if shape.variants and variants:
            x, y = data.loader("train", shape.batch, device=device).first_batch()
            for variant in variants:
                what = {**keys, "n": 1, "variant": variant}
                if over_budget(what):
                    continue
                out.write("started", **what)  # a variant stopped from outside (compile at its limit) leaves this alone
                try:
                    found = one_run_variant(variant, shape.model, shape.norm, x, y, device, 4 * steps)
                except Exception as error:  # one variant failing (say, no CUDA graph capture) is a finding, not the end
                    failures += 1
                    out.write("error", **what, error=_error_text(error))
                    print(f"| {shape.label} | {shape.model} | {shape.norm} | 1 | {variant}: {_error_text(error)} |", flush=True)
                    _free(device)
                    continue
                out.write("variant", **what, **found)
                extra = f", compile {found['compile_s']:.1f} s" if "compile_s" in found else ""
                print(
                    f"| {shape.label} | {shape.model} | {shape.norm} | {shape.image} | {shape.batch} | 1 | {variant}: "
                    f"{found['steps_per_s']:.2f} steps/s, {found['ms_per_step']:.2f} ms/step{extra} | | |",
                    flush=True,
                )
                _free(device)
            del x, y
        if not shape.ns or over_budget({**keys, "n": 1, "variant": "alone"}):
            continue

        def build(n):
            torch.manual_seed(0)
            return [create_model(shape.model, shape.norm) for _ in range(n)]

        try:  # warm-up, untimed: cuDNN autotuning for the shape and the stack's first trace
            steps_per_s_alone(build(1)[0], warm, config, device)
        except Exception as error:
            failures += 1
            out.write("error", **keys, n=1, error=_error_text(error))
            _free(device)
            continue
        alone_rounds = []
        for n in shape.ns:
            what = {**keys, "n": n, "steps": steps}
            if over_budget(what):
                continue
            try:
                steps_per_s_fused(build(n), warm, config, device)  # warm-up of this N
                ratios, alone, fused = [], [], []
                for r in range(args.rounds):
                    if len(alone_rounds) <= r:
                        alone_rounds.append(steps_per_s_alone(build(1)[0], data, config, device))
                    alone.append(alone_rounds[r])
                    fused.append(steps_per_s_fused(build(n), data, config, device))
                    ratios.append(fused[-1] / alone[-1])
            except Exception as error:
                failures += 1
                out.write("error", **what, error=_error_text(error))
                print(
                    f"| {shape.label} | {shape.model} | {shape.norm} | {shape.image} | {shape.batch} | {n} | {_error_text(error)} |",
                    flush=True,
                )
                _free(device)
                continue
            out.write(
                "fused",
                **what,
                rounds=args.rounds,
                alone_steps_per_s=statistics.median(alone),
                fused_steps_per_s=statistics.median(fused),
                ratio=statistics.median(ratios),
                ratios=ratios,
            )
            print(
                f"| {shape.label} | {shape.model} | {shape.norm} | {shape.image} | {shape.batch} | {n} | {statistics.median(alone):.3f} | "
                f"{statistics.median(fused):.3f} | **{statistics.median(ratios):.2f}x** ({', '.join(f'{r:.2f}' for r in ratios)}) |",
                flush=True,
            )
            _free(device)
    print(f"bench_train --fused: {time.monotonic() - clock:.0f} s, {failures} measurement(s) failed", flush=True)
    return 1 if failures else 0


def _variant_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=2560, help="images per epoch (default: 20 batches)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --fused on CUDA 2)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the engine")
    parser.add_argument("--fused", action="store_true", help="fused N runs against N one at a time (see the docstring)")
    parser.add_argument(
        "--grid",
        choices=sorted(FUSED_GRIDS),
        help="--fused: quick (CPU default), gpu (CUDA default), cpu, full, agc, fig1, variants, smoke",
    )
    parser.add_argument("--fused-steps", type=int, default=None, help="--fused: steps per run and round (CPU 3, CUDA 20)")
    parser.add_argument(
        "--variants",
        type=_variant_list,
        default=None,
        help=f"--fused: one run's variants to time on rows that have them, comma-separated from: {', '.join(VARIANTS)} "
        "(CUDA default: all but compile; CPU: none)",
    )
    parser.add_argument("--budget-s", type=float, default=None, help="--fused: start no measurement after this many seconds")
    parser.add_argument("--jsonl", help="append one JSON record per measurement to this file (tools/bench_tables.py)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", TorchvisionOpsUnavailable)  # datasets and transforms work without the ops

    device = resolve_device(args.device)
    if args.fused:
        args.fused_steps = args.fused_steps or (20 if device.type == "cuda" else 3)
        args.rounds = args.rounds or (2 if device.type == "cuda" else 3)
        return fused_main(args, device)
    args.rounds = args.rounds or 3
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
    out = JsonLines(args.jsonl, "bench_train", device)
    data = cifar_or_stand_in(args.images)
    ratios = []
    keys = {"model": args.model, "norm": "bn", "batch": args.batch_size, "images": len(data.train_labels), "compile": args.compile}
    for r in range(args.rounds):
        torch.manual_seed(0)
        base = baseline_epoch(create_model(args.model, "bn"), data, args.batch_size, 0.1, device)
        torch.manual_seed(0)
        ours = engine_epoch(create_model(args.model, "bn"), data, args.batch_size, 0.1, device, args.compile)
        ratios.append(ours / base)
        out.write("engine_round", **keys, round=r + 1, baseline_images_per_s=base, engine_images_per_s=ours, ratio=ours / base)
        print(f"  round {r + 1}: baseline {base:8.1f} img/s   engine {ours:8.1f} img/s   ratio {ours / base:.2f}x", flush=True)
    out.write("engine", **keys, data=data.name, rounds=args.rounds, ratio=statistics.median(ratios), ratios=ratios)
    print(
        f"bench_train: engine / baseline = {statistics.median(ratios):.2f}x (median of {args.rounds} interleaved rounds, {data.name} data)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
