"""The training loop: :func:`train` runs epochs of SGD steps on one model until the budget
is spent or a step diverges; :func:`evaluate` measures the test split.

* **Step.** Forward (bf16 autocast on request), the summed cross-entropy scaled so that
  DDP's average over ranks is the gradient of the global batch's mean loss, then
  :func:`backward_and_step`: backward, ``clip(model)`` (with the unwrapped model, after
  DDP's all-reduce), ``optimizer.step()``. Per-step loss and correct counts stay on the
  device.
* **Everything else** (the schedule and warmup, the plateau rule, the host sync every
  ``sync_every`` steps and its divergence check, the epoch's history row, the files, the
  result) is the run's :class:`~nfstudy.train.state.Trainee`'s, shared with
  :func:`~nfstudy.train.train_fused`.
* **Resume.** With ``out_dir`` a later call resumes from ``checkpoint.pt``
  (:mod:`nfstudy.train.checkpoint`); a finished run returns at once; an interrupted run
  resumed gives the same history, bit for bit, as an uninterrupted one on the same
  machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DeviceLoader, ImageDataset
from ..runtime import progress, resolve_device
from .checkpoint import describe
from .config import TrainConfig
from .distributed import all_reduce, rank_and_world
from .state import ClipFn, Trainee, TrainResult, Window, batch_sizes, clip_and_step

__all__ = ["backward_and_step", "evaluate", "train"]


def train(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    clip: ClipFn | None = None,
    out_dir: str | os.PathLike | None = None,
    desc: str | None = None,
    on_epoch: Callable[[dict[str, Any]], Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` as ``config`` says (see :mod:`nfstudy.train`).

    ``clip(model)`` runs between backward and step; ``out_dir`` holds ``history.csv`` and
    ``checkpoint.pt`` (resumed when present); ``on_epoch(row)`` is called after every
    epoch with its history row (after the row is written, before any checkpoint).
    Under an initialised process group the model is trained with DDP.
    """
    run, loop = _start(model, data, config, seed, device, clip, out_dir, desc, on_epoch)
    while run.training:
        while run.extend_budget():  # not plateaued at the first drop: twice the epochs
            loop.bar.total = run.state.budget * run.steps
        run.start_epoch()
        loop.net.train()
        for b, (x, y) in enumerate(loop.train_loader.epoch_batches(run.state.epoch)):
            run.warm_up(b)
            with torch.autocast(run.device.type, torch.bfloat16, enabled=loop.amp):
                logits = loop.net(x)
            loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
            # DDP averages over ranks: so scaled, the gradient is that of the global batch's mean loss.
            backward_and_step(run.model, run.optimizer, loss_sum * (loop.world / run.sizes[b]), run.clip)
            run.record_step(b, loss_sum, logits, y)
            if run.sync_due(b):
                loop.show(run, run.record_window(b + 1, loop.world))  # the divergence check
                if run.diverged:
                    break
        if not run.diverged:
            run.end_epoch(*evaluate(loop.net, loop.test_loader, loop.amp, loop.world))
    loop.bar.close()
    run.finish()
    return run.result()


def backward_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: ClipFn | None = None) -> None:
    """One update after the forward pass: ``loss.backward()``, ``clip(model)`` if given,
    ``optimizer.step()``, then the gradients set to None."""
    loss.backward()
    clip_and_step(model, optimizer, clip)


@dataclass
class _Loop:
    """What one call of :func:`train` steps with besides the run: set up once, never saved."""

    net: nn.Module  # the run's model, wrapped in DDP and/or torch.compile
    amp: bool
    world: int
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    bar: Any

    def show(self, run: Trainee, read: Window) -> None:
        """The progress bar after a host sync."""
        self.bar.update(read.end - read.start)
        self.bar.set_postfix(
            epoch=run.state.epoch + 1,
            lr=f"{run.optimizer.param_groups[0]['lr']:.2g}",
            loss=f"{sum(read.losses) / len(read.losses):.3g}",
            acc=f"{float(run.step_correct[read.start : read.end].sum()) / read.images:.3f}",
            img_s=f"{read.images / read.seconds:.0f}",
        )


def _start(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    seed: int,
    device: str | torch.device,
    clip: ClipFn | None,
    out_dir: str | os.PathLike | None,
    desc: str | None,
    on_epoch: Callable[[dict[str, Any]], Any] | None,
) -> tuple[Trainee, _Loop]:
    """Place the model, build the optimizer, resume from ``out_dir``'s checkpoint, wrap the
    model (DDP, compile), build the loaders and the progress bar, in that order."""
    rank, world = rank_and_world()
    device = resolve_device(device)
    cuda = device.type == "cuda"
    amp, channels_last = config.autocast_and_layout(cuda)
    description = describe(model, data, config, seed, world)  # before any training touches the weights
    out = Path(out_dir) if out_dir is not None else None

    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if config.sync_batchnorm and world > 1 and cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    run = Trainee.open(
        model,
        config,
        description,
        seed=seed,
        device=device,
        clip=clip,
        out=out,
        on_epoch=on_epoch,
        writer=out is not None and rank == 0,
        restore_rng=True,
    )

    if cuda:
        torch.backends.cudnn.benchmark = True
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None) if world > 1 else model
    if config.compile:
        net = torch.compile(net)
    size = data.train_images.shape[-1]
    common = dict(seed=seed, device=device, channels_last=channels_last, rank=rank, world_size=world)
    train_loader = data.loader("train", config.batch_size, augment=config.augment, pad=size // 8, drop_last=config.drop_last, **common)
    test_loader = data.loader("test", config.eval_batch_size, shuffle=False, **common)
    run.size_epoch(batch_sizes(len(data.train_labels), config.batch_size, len(train_loader)), len(data.train_labels))
    if min(run.batch_sizes) < world:
        raise ValueError(
            f"the last batch of an epoch has {min(run.batch_sizes)} images, fewer than the {world} ranks: "
            "use drop_last=True or another batch_size"
        )
    steps, state = run.steps, run.state
    bar = progress(total=state.budget * steps, initial=state.epoch * steps, desc=desc, unit="step", **({"disable": True} if rank else {}))
    return run, _Loop(net, amp, world, train_loader, test_loader, bar)


@torch.no_grad()
def evaluate(net: nn.Module, loader: DeviceLoader, amp: bool = False, world_size: int = 1) -> tuple[float, float]:
    """``(mean loss, accuracy)`` of ``net`` in eval mode over every batch of ``loader``
    (summed over ranks when distributed); one host sync."""
    net.eval()
    totals = torch.zeros(3, device=loader.device, dtype=torch.float64)  # loss sum, correct, count
    for x, y in loader.epoch_batches(0):
        with torch.autocast(loader.device.type, torch.bfloat16, enabled=amp):
            out = net(x)
        totals[0] += F.cross_entropy(out.float(), y, reduction="sum")
        totals[1] += (out.argmax(1) == y).sum()
        totals[2] += len(y)
    loss_sum, correct, count = all_reduce(totals, world_size).tolist()
    return loss_sum / count, correct / count
