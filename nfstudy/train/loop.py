"""The training loop: :func:`train` runs epochs of SGD steps until the budget is spent or a
step diverges; :func:`evaluate` measures the test split.

* **Step.** Forward (bf16 autocast on CUDA by default), the summed cross-entropy scaled so
  that DDP's average over ranks is the gradient of the global batch's mean loss, then
  :func:`backward_and_step`: backward, ``clip(model)`` (with the unwrapped model, after
  DDP's all-reduce), ``optimizer.step()``. Per-step loss and correct counts stay on the
  device.
* **Host sync** every ``sync_every`` steps and at the end of each epoch
  (:func:`_host_sync`): the window's sums are all-reduced over ranks and read once; a
  step diverges when its loss is not finite or exceeds ``divergence_factor`` times the
  very first step's loss. The run stops there with ``status = "diverged"``, without
  raising, so a sweep goes on; the recorded step is exact, but up to ``sync_every - 1``
  more steps may have run.
* **Epoch end** (:func:`_end_epoch`): the test split in eval mode, one history row (train
  metrics averaged over the epoch's mini-batches as trained on: train mode, augmented),
  ``history.csv`` rewritten atomically, ``on_epoch(row)``, a checkpoint every
  ``checkpoint_every`` epochs. Accuracies are fractions in [0, 1].
* **Resume.** With ``out_dir`` a later call resumes from ``checkpoint.pt``
  (:mod:`nfstudy.train.checkpoint`); a finished run returns at once; an interrupted run
  resumed gives the same history, bit for bit, as an uninterrupted one on the same
  machine.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data import DeviceLoader, ImageDataset
from ..runs import atomic_write_csv
from ..runtime import progress, resolve_device
from .checkpoint import CHECKPOINT_FORMAT, describe, fingerprint, load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from .config import TrainConfig
from .distributed import all_reduce, rank_and_world
from .schedule import learning_rate, milestone_epochs, plateaued, warmup_rate

__all__ = ["HISTORY_COLUMNS", "HISTORY_DESCRIPTIONS", "LoopState", "TrainResult", "backward_and_step", "evaluate", "history_frame", "train"]

# What each history.csv column of the engine means (figures' TABLES take these, one owner).
HISTORY_DESCRIPTIONS = {
    "epoch": "epochs completed",
    "step": "SGD updates completed",
    "progress_pct": "step as a percentage of the budget",
    "lr": "the learning rate at this epoch",
    "train_loss": "training loss (mean over the epoch's batches)",
    "train_accuracy": "training accuracy, in [0, 1]",
    "test_loss": "loss on the test split",
    "test_accuracy": "accuracy on the test split, in [0, 1]",
}
HISTORY_COLUMNS = list(HISTORY_DESCRIPTIONS)

ClipFn = Callable[[nn.Module], Any]  # rescales the model's .grad in place (nfstudy.clip.GradientClipper)


@dataclass
class TrainResult:
    history: pd.DataFrame  # one row per completed epoch, HISTORY_COLUMNS
    status: str  # "completed" | "diverged"
    epochs: int  # completed epochs
    budget: int  # final budget (after any plateau extensions)
    steps: int  # optimizer steps taken
    steps_per_epoch: int
    initial_loss: float  # loss of the first mini-batch
    diverged_step: int | None = None  # 1-based step whose loss diverged
    diverged_loss: float | None = None
    resumed_from: int = 0  # the epoch a checkpoint resumed from (0: a fresh start)
    images_per_s: float = float("nan")  # training throughput of this call (nan if nothing trained)
    model: nn.Module | None = dataclasses.field(default=None, repr=False)

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def diverged_pct(self) -> float | None:
        """Where the divergence happened, in % of the training budget."""
        if self.diverged_step is None:
            return None
        return 100.0 * self.diverged_step / (self.budget * self.steps_per_epoch)

    def summary(self) -> dict[str, Any]:
        """One tidy row: status, budget, divergence and the final epoch's metrics."""
        last = self.history.iloc[-1] if len(self.history) else None
        return {
            "status": self.status,
            "epochs": self.epochs,
            "budget": self.budget,
            "steps": self.steps,
            "initial_loss": self.initial_loss,
            "diverged_step": self.diverged_step,
            "diverged_pct": self.diverged_pct,
            "diverged_loss": self.diverged_loss,
            **{
                f"final_{k}": (float(last[k]) if last is not None and not self.diverged else float("nan"))
                for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
            },
        }


@dataclass
class LoopState:
    """Where the loop is: saved in every checkpoint (as a dict, under ``"state"``)."""

    epoch: int = 0  # completed epochs
    budget: int = 0  # epochs, doubled by the plateau rule
    extensions: int = 0  # budget doublings so far
    step: int = 0  # optimizer steps of the completed epochs (at the end: the diverged step, if any)
    history: list[dict] = field(default_factory=list)  # one row per completed epoch
    status: str = "running"  # running | completed | diverged
    initial_loss: float | None = None  # the first step's loss: the divergence reference
    diverged_step: int | None = None
    diverged_loss: float | None = None


@dataclass
class _Run:
    """What one call of :func:`train` works with, set up once and never saved."""

    config: TrainConfig
    model: nn.Module  # unwrapped: what clip() sees and the checkpoint saves
    net: nn.Module  # model, wrapped in DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    clip: ClipFn | None
    device: torch.device
    amp: bool
    world: int
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    warmup_steps: int
    images: int  # per epoch, over all ranks
    batch_sizes: list[int]  # global, per step of an epoch
    sizes: torch.Tensor  # the same, on the device
    step_loss: torch.Tensor  # per-step loss sums, on the device until a host sync
    step_correct: torch.Tensor
    bar: Any
    description: dict[str, Any]  # the checkpoint fingerprint's
    out: Path | None
    writer: bool  # rank 0 with an out_dir
    trained_images: float = 0.0
    trained_seconds: float = 0.0
    tick: float = 0.0  # when the images since the last host sync started

    @property
    def steps(self) -> int:
        return len(self.batch_sizes)

    def checkpoint(self, state: LoopState) -> None:
        if self.writer:
            save_checkpoint(
                self.out / "checkpoint.pt",
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": fingerprint(self.description),
                    "description": self.description,
                    "state": dataclasses.asdict(state),
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "rng": rng_states(self.device),
                },
            )

    def write_history(self, state: LoopState) -> None:
        if self.writer:
            atomic_write_csv(history_frame(state.history, state.budget), self.out / "history.csv")


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
    run, state = _start(model, data, config, seed, device, clip, out_dir, desc)
    resumed_from, finished_before = state.epoch, state.status != "running"
    while state.status == "running" and state.epoch < state.budget:
        if _extend_budget(state, config):  # not plateaued at the first drop: twice the epochs
            run.bar.total = state.budget * run.steps
            continue
        lr = learning_rate(state.epoch, state.budget, config.lr, config.milestones, config.lr_decay)
        _set_lr(run.optimizer, lr)
        run.net.train()
        synced, run.tick = 0, time.perf_counter()
        for b, (x, y) in enumerate(run.train_loader.epoch_batches(state.epoch)):
            _train_step(run, b, x, y, lr, state.epoch * run.steps + b)
            if b + 1 == run.steps or b + 1 - synced >= config.sync_every:
                _host_sync(run, state, synced, b + 1)  # divergence check, progress
                synced = b + 1
                if state.status == "diverged":
                    break
        if state.status == "diverged":
            break
        _end_epoch(run, state, on_epoch)
    run.bar.close()
    return _finish(run, state, resumed_from, finished_before)


def backward_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: ClipFn | None = None) -> None:
    """One update after the forward pass: ``loss.backward()``, ``clip(model)`` if given,
    ``optimizer.step()``, then the gradients set to None."""
    loss.backward()
    if clip is not None:
        clip(model)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _train_step(run: _Run, b: int, x: torch.Tensor, y: torch.Tensor, lr: float, global_step: int) -> None:
    """Step ``b`` of the epoch at rate ``lr`` (or the warmup's); its sums stay on the device."""
    if run.warmup_steps and global_step <= run.warmup_steps:  # linear warmup, then the schedule's rate
        _set_lr(run.optimizer, warmup_rate(lr, global_step, run.warmup_steps))
    with torch.autocast(run.device.type, torch.bfloat16, enabled=run.amp):
        logits = run.net(x)
    loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
    # DDP averages over ranks: so scaled, the gradient is that of the global batch's mean loss.
    backward_and_step(run.model, run.optimizer, loss_sum * (run.world / run.sizes[b]), run.clip)
    run.step_loss[b], run.step_correct[b] = loss_sum.detach(), (logits.argmax(1) == y).sum()


def _host_sync(run: _Run, state: LoopState, start: int, end: int) -> None:
    """Read steps ``start..end-1`` of the epoch at once (summed over ranks): mark the first
    diverged step, if any, in ``state``; count the throughput; update the progress bar."""
    window = slice(start, end)
    for totals in (run.step_loss[window], run.step_correct[window]):
        all_reduce(totals, run.world)  # every step's sums, once, over all ranks
    losses = (run.step_loss[window] / run.sizes[window]).tolist()
    if state.initial_loss is None:
        state.initial_loss = losses[0]
    for i, value in enumerate(losses):
        if not math.isfinite(value) or value > run.config.divergence_factor * state.initial_loss:
            state.status, state.diverged_step, state.diverged_loss = "diverged", state.epoch * run.steps + start + i + 1, value
            break
    seconds, images = time.perf_counter() - run.tick, float(sum(run.batch_sizes[window]))
    run.trained_seconds, run.trained_images = run.trained_seconds + seconds, run.trained_images + images
    run.bar.update(end - start)
    run.bar.set_postfix(
        epoch=state.epoch + 1,
        lr=f"{run.optimizer.param_groups[0]['lr']:.2g}",
        loss=f"{sum(losses) / len(losses):.3g}",
        acc=f"{float(run.step_correct[window].sum()) / images:.3f}",
        img_s=f"{images / seconds:.0f}",
    )
    run.tick = time.perf_counter()


def _end_epoch(run: _Run, state: LoopState, on_epoch: Callable[[dict[str, Any]], Any] | None) -> None:
    """Evaluate, append the epoch's history row, write it, report it, checkpoint when due."""
    test_loss, test_accuracy = evaluate(run.net, run.test_loader, run.amp, run.world)
    state.epoch += 1
    state.step = state.epoch * run.steps
    row = dict(
        epoch=state.epoch,
        step=state.step,
        lr=run.optimizer.param_groups[0]["lr"],
        train_loss=float(run.step_loss.sum()) / run.images,
        train_accuracy=float(run.step_correct.sum()) / run.images,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
    )
    state.history.append(row)
    run.write_history(state)
    if on_epoch is not None:
        on_epoch({**row, "progress_pct": 100.0 * state.epoch / state.budget})
    if state.epoch % run.config.checkpoint_every == 0 and state.epoch < state.budget:
        run.checkpoint(state)


def _extend_budget(state: LoopState, config: TrainConfig) -> bool:
    """The plateau rule, at the first milestone before the rate drops: double the budget
    (True) unless the run has plateaued or used its ``max_extensions``."""
    first_drop = milestone_epochs(state.budget, config.milestones)[0] if config.milestones else None
    if (
        config.extend_until_plateau
        and state.epoch == first_drop
        and state.extensions < config.max_extensions
        and not plateaued(state.history, config.plateau_metric, config.plateau_window, config.plateau_tol)
    ):
        state.budget, state.extensions = 2 * state.budget, state.extensions + 1
        return True
    return False


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _finish(run: _Run, state: LoopState, resumed_from: int, finished_before: bool) -> TrainResult:
    """Close the run: its status, the final history and checkpoint (unless it had finished before)."""
    if state.status == "running":
        state.status = "completed"
    if state.diverged_step is not None:
        state.step = state.diverged_step
    if run.writer and not finished_before:
        run.write_history(state)
        run.checkpoint(state)
    return TrainResult(
        history=history_frame(state.history, state.budget),
        status=state.status,
        epochs=state.epoch,
        budget=state.budget,
        steps=state.step,
        steps_per_epoch=run.steps,
        initial_loss=float("nan") if state.initial_loss is None else state.initial_loss,
        diverged_step=state.diverged_step,
        diverged_loss=state.diverged_loss,
        resumed_from=resumed_from,
        images_per_s=run.trained_images / run.trained_seconds if run.trained_seconds else float("nan"),
        model=run.model,
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
) -> tuple[_Run, LoopState]:
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
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    state = LoopState(budget=config.epochs)
    if out is not None and (out / "checkpoint.pt").is_file():
        saved = load_checkpoint(out / "checkpoint.pt", description)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        restore_rng_states(saved["rng"], device)
        state = LoopState(**saved["state"])

    if cuda:
        torch.backends.cudnn.benchmark = True
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None) if world > 1 else model
    if config.compile:
        net = torch.compile(net)
    size = data.train_images.shape[-1]
    common = dict(seed=seed, device=device, channels_last=channels_last, rank=rank, world_size=world)
    train_loader = data.loader("train", config.batch_size, augment=config.augment, pad=size // 8, drop_last=config.drop_last, **common)
    test_loader = data.loader("test", config.eval_batch_size, shuffle=False, **common)
    steps = len(train_loader)
    n = len(data.train_labels)
    batch_sizes = [min(config.batch_size, n - b * config.batch_size) for b in range(steps)]  # global
    if min(batch_sizes) < world:
        raise ValueError(
            f"the last batch of an epoch has {min(batch_sizes)} images, fewer than the {world} ranks: "
            "use drop_last=True or another batch_size"
        )
    bar = progress(total=state.budget * steps, initial=state.epoch * steps, desc=desc, unit="step", **({"disable": True} if rank else {}))
    run = _Run(
        config=config,
        model=model,
        net=net,
        optimizer=optimizer,
        clip=clip,
        device=device,
        amp=amp,
        world=world,
        train_loader=train_loader,
        test_loader=test_loader,
        warmup_steps=round(config.warmup_epochs * steps),
        images=n,
        batch_sizes=batch_sizes,
        sizes=torch.tensor(batch_sizes, device=device, dtype=torch.float32),
        step_loss=torch.zeros(steps, device=device),
        step_correct=torch.zeros(steps, device=device),
        bar=bar,
        description=description,
        out=out,
        writer=out is not None and rank == 0,
    )
    return run, state


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


def history_frame(rows: list[dict], budget: int) -> pd.DataFrame:
    """The history rows as :data:`HISTORY_COLUMNS`, ``progress_pct`` in % of ``budget``."""
    df = pd.DataFrame(rows, columns=[c for c in HISTORY_COLUMNS if c != "progress_pct"])
    df.insert(2, "progress_pct", 100.0 * df["epoch"] / budget)
    return df
