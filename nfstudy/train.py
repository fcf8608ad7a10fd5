"""The training engine: SGD with a step schedule, a clipping hook, divergence, resume, DDP.

Bjorck et al. 2018 (appendix B) train CIFAR ResNets with SGD (momentum 0.9; weight decay
5e-4 in the public reproduction), batch 128, and divide the learning rate by 10 at 50%
and 75% of the budget (165 epochs), "roughly doubling the number of epochs" when
learning has not plateaued. :func:`train` is that recipe, one function:

    from nfstudy.data import load_dataset
    from nfstudy.models import cifar_resnet
    from nfstudy.train import TrainConfig, train

    result = train(cifar_resnet(20, "bn"), load_dataset("digits"), TrainConfig(epochs=30, lr=0.1),
                   out_dir="runs/bn-0.1")          # history.csv + checkpoint.pt; rerun = resume
    result.history                                  # one row per epoch: losses, accuracies
    result.status                                   # "completed" or "diverged"

What it does, and the choices made:

* **Schedule.** :func:`learning_rate`: ``lr * lr_decay ** k`` where k counts the
  milestones (fractions of the budget) already reached; a milestone fraction f drops the
  rate from epoch ``floor(f * epochs)`` on (0-based; 165 epochs give 82 and 123, as the
  public reproduction's ``MultiStepLR``). The rate is set per epoch from the epoch alone,
  so resuming needs no scheduler state. ``warmup_epochs`` (large-batch training, Goyal et
  al. 2017) ramps it linearly per step, ``lr · (t + 1) / T`` for the first T steps, also a
  function of the step alone.
* **Plateau rule** (``extend_until_plateau``): at the first milestone, before the rate
  drops, if the train loss still improved by more than ``plateau_tol`` (relative) over
  the last ``plateau_window`` epochs, the budget doubles (at most ``max_extensions``
  times). Until the first drop the rate is constant, so this is exactly the paper's
  "train again with twice the epochs", without training again. With
  ``plateau_metric="train_accuracy"`` the rule judges the train accuracy instead
  (:func:`accuracy_has_plateaued`): ``plateau_tol`` is then in accuracy (0.01: one point),
  and a run within ``plateau_tol`` of 100% has plateaued. A loss that falls towards 0 keeps
  improving in relative terms long after the accuracy is at 100%; the accuracy does not.
* **Clipping hook.** ``clip(model)`` is called after ``loss.backward()`` (so after DDP's
  gradient all-reduce) and before ``optimizer.step()``, with the unwrapped model (not
  the DDP or compiled wrapper); ``nfstudy.clip``'s clippers are such callables.
* **Divergence.** A step diverges when its mini-batch loss is not finite or exceeds
  ``divergence_factor`` (default 1000, the relative-loss threshold of the paper's
  Fig. 3) times the loss of the very first step. The run stops there, with
  ``status = "diverged"`` and the step; it does not raise, so a sweep goes on. The check
  reads losses at host syncs every ``sync_every`` steps (per-step losses stay on the
  device in between), so the recorded step is exact but up to ``sync_every - 1`` more
  steps may have run.
* **Metrics.** Per epoch: ``train_loss``/``train_accuracy`` averaged over the epoch's
  mini-batches as trained on (train mode, augmented), ``test_loss``/``test_accuracy`` on
  the whole test split in eval mode; accuracies are fractions in [0, 1].
* **Files** (with ``out_dir``; only rank 0 writes): ``history.csv`` rewritten atomically
  after every epoch, and ``checkpoint.pt`` every ``checkpoint_every`` epochs and at the
  end: model, optimizer (momentum), epoch, budget, torch RNG states, history, status and
  a fingerprint of the configuration. Calling :func:`train` again with the same
  ``out_dir`` resumes from it (a finished run returns at once); an interrupted run
  resumed gives the same history, bit for bit, as an uninterrupted one on the same
  machine. A checkpoint of another configuration (hyper-parameters, precision, seed,
  dataset, model architecture or initial weights, number of ranks) raises
  :class:`CheckpointMismatch`, naming what differs; performance knobs
  (``checkpoint_every``, ``sync_every``, ``eval_batch_size``, ``compile``,
  ``channels_last``) are not part of the fingerprint.
* **CUDA.** Data resident on the GPU (:class:`~nfstudy.data.DeviceLoader`), bf16
  autocast (``precision="auto"``), channels_last, cuDNN autotuning, optional
  ``torch.compile``; no host sync per step.
* **Distributed.** Under ``torchrun`` (``python -m nfstudy.train`` calls
  :func:`init_distributed`; or initialise the process group yourself), the model is
  wrapped in DistributedDataParallel and each global batch of ``batch_size`` images is
  split evenly across ranks; the loss is scaled so that the averaged gradient is the
  gradient of the global batch's mean loss. Metrics are summed over ranks. BatchNorm
  normalises over each rank's share (the standard DDP behaviour), unless
  ``sync_batchnorm=True`` (CUDA only: PyTorch's SyncBatchNorm has no CPU kernel).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .constants import DIVERGENCE
from .data import ImageDataset
from .params import check_choice, check_positive
from .runs import atomic_write, atomic_write_csv
from .runtime import progress, resolve_device

__all__ = [
    "CheckpointMismatch",
    "TrainConfig",
    "TrainResult",
    "accuracy_has_plateaued",
    "evaluate",
    "has_plateaued",
    "init_distributed",
    "learning_rate",
    "milestone_epochs",
    "train",
]

PRECISIONS = ("auto", "fp32", "bf16")
PLATEAU_METRICS = ("train_loss", "train_accuracy")  # what the plateau rule judges
CHECKPOINT_FORMAT = 1
HISTORY_COLUMNS = [
    "epoch", "step", "progress_pct", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
]  # fmt: skip
# Fields that change speed, not results: left out of the checkpoint fingerprint.
PERFORMANCE_FIELDS = ("checkpoint_every", "sync_every", "eval_batch_size", "compile", "channels_last")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int  # the budget
    batch_size: int = 128  # global: split across ranks
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the budget where the lr drops
    lr_decay: float = 0.1  # the factor at each milestone
    warmup_epochs: float = 0.0  # the lr rises linearly, step by step, from lr/steps to lr over these epochs
    augment: bool = True  # pad-and-crop (pad = image size / 8: 4 px at 32) + horizontal flip
    drop_last: bool = False
    extend_until_plateau: bool = False  # the paper's budget-doubling rule (module docstring)
    plateau_window: int = 20  # epochs
    plateau_tol: float = 0.01  # progress: relative improvement of the train loss, or gain in train accuracy
    plateau_metric: str = "train_loss"  # train_loss | train_accuracy (module docstring)
    max_extensions: int = 2
    divergence_factor: float = DIVERGENCE  # x the first step's loss
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    sync_batchnorm: bool = False  # DDP on CUDA: BatchNorm over the global batch
    checkpoint_every: int = 5  # epochs
    sync_every: int = 50  # steps between host syncs (progress bar, divergence check)
    eval_batch_size: int = 1000
    compile: bool = False  # torch.compile the model
    channels_last: bool | None = None  # None: on CUDA

    def __post_init__(self):
        check_positive("epochs", self.epochs, integer=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1] (0.1 divides the lr by 10), got {self.lr_decay!r}")
        for m in self.milestones:
            if not 0 < m < 1:
                raise ValueError(
                    f"milestone {m!r} is outside the budget: milestones are fractions of the budget "
                    "strictly between 0 and 1, e.g. (0.5, 0.75) for 50% and 75% of the epochs"
                )
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones must increase, got {self.milestones!r}")
        check_positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
        end = milestone_epochs(self.epochs, self.milestones)[0] if self.milestones else self.epochs
        if self.warmup_epochs > end:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs!r} runs past the first lr drop (epoch {end} of {self.epochs}): "
                f"warm up for at most {end} epochs"
            )
        for name in ("plateau_window", "checkpoint_every", "sync_every", "eval_batch_size"):
            check_positive(name, getattr(self, name), integer=True)
        check_positive("max_extensions", self.max_extensions, integer=True, allow_zero=True)
        check_positive("plateau_tol", self.plateau_tol, allow_zero=True)
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1 (a multiple of the first loss), got {self.divergence_factor!r}")
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("plateau_metric", self.plateau_metric, PLATEAU_METRICS)
        if self.extend_until_plateau:
            if not self.milestones:
                raise ValueError("extend_until_plateau decides at the first milestone: give milestones")
            first = milestone_epochs(self.epochs, self.milestones)[0]
            if first <= self.plateau_window:
                raise ValueError(
                    f"extend_until_plateau judges the last plateau_window={self.plateau_window} epochs before the first "
                    f"milestone (epoch {first} of {self.epochs}): lower plateau_window below {first} or raise epochs"
                )


# --------------------------------------------------------------------------- schedule


def milestone_epochs(budget: int, milestones=(0.5, 0.75)) -> list[int]:
    """The 0-based epochs from which each milestone's drop applies: ``floor(f * budget)``."""
    return [max(1, int(f * budget)) for f in milestones]


def learning_rate(epoch: int, budget: int, lr: float, milestones=(0.5, 0.75), decay: float = 0.1) -> float:
    """The learning rate of 0-based ``epoch`` within ``budget`` epochs."""
    return lr * decay ** sum(epoch >= m for m in milestone_epochs(budget, milestones))


def has_plateaued(train_losses: list[float], window: int, tol: float) -> bool:
    """True unless the best loss of the last ``window`` epochs beats the best before them
    by more than ``tol`` (relative). A non-finite loss counts as no progress."""
    if len(train_losses) <= window:
        raise ValueError(f"need more than {window} epochs of losses to judge a plateau, got {len(train_losses)}")
    before = min(train_losses[:-window])
    recent = min(train_losses[-window:])
    return not (math.isfinite(recent) and recent < (1 - tol) * before)


def accuracy_has_plateaued(train_accuracies: list[float], window: int, tol: float) -> bool:
    """True unless the best train accuracy of the last ``window`` epochs beats the best
    before them by more than ``tol`` (absolute: 0.01 is one point); also True once the best
    is within ``tol`` of 100%, where no more than ``tol`` is left to gain."""
    if len(train_accuracies) <= window:
        raise ValueError(f"need more than {window} epochs of accuracies to judge a plateau, got {len(train_accuracies)}")
    before, recent = max(train_accuracies[:-window]), max(train_accuracies[-window:])
    return recent >= 1 - tol or not recent > before + tol


def _plateaued(history: list[dict], config: TrainConfig) -> bool:
    """The plateau rule on ``config.plateau_metric`` of the epochs so far."""
    if config.plateau_metric == "train_accuracy":
        return accuracy_has_plateaued([r["train_accuracy"] for r in history], config.plateau_window, config.plateau_tol)
    return has_plateaued([r["train_loss"] for r in history], config.plateau_window, config.plateau_tol)


# --------------------------------------------------------------------------- distributed


def init_distributed(device: str | torch.device = "auto") -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; under ``torchrun`` (``WORLD_SIZE > 1``) this also
    starts the process group: NCCL with one GPU per process (``cuda:LOCAL_RANK``) when
    the device is CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device)
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(t)
    return t


# --------------------------------------------------------------------------- results


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


class CheckpointMismatch(ValueError):
    """A checkpoint was written for another configuration; it is never resumed silently."""


# --------------------------------------------------------------------------- checkpoints


def _sha256(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def describe(model: nn.Module, data: ImageDataset, config: TrainConfig, seed: int, world_size: int) -> dict[str, Any]:
    """What the checkpoint fingerprint covers, readable (for the mismatch message)."""
    # No warmup (and the default plateau metric) are left out, so checkpoints written before those options existed still resume.
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in PERFORMANCE_FIELDS}
    if not config.warmup_epochs:
        fields.pop("warmup_epochs")
    if config.plateau_metric == "train_loss":  # the default, as before the option existed
        fields.pop("plateau_metric")
    return {
        **fields,
        "seed": seed,
        "world_size": world_size,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_architecture": hashlib.sha256(repr(model).encode()).hexdigest()[:16],
        "model_initial_weights": _sha256(model.state_dict().values()),
        "dataset": data.name,
        "dataset_shape": [len(data.train_labels), len(data.test_labels), *data.train_images.shape[1:]],
        "dataset_content": _sha256([data.train_images, data.train_labels, data.test_images, data.test_labels]),
    }


def _fingerprint(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def _load(path: Path, description: dict[str, Any]) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointMismatch(
            f"cannot read the checkpoint {path}: it is truncated, corrupt or not written by nfstudy.train "
            f"({type(error).__name__}); delete it to start over"
        ) from error
    if state.get("fingerprint") != _fingerprint(description):
        theirs = state.get("description", {})
        keys = sorted(set(theirs) | set(description))
        diff = [f"{k}: {theirs.get(k)!r} there, {description.get(k)!r} here" for k in keys if theirs.get(k) != description.get(k)]
        raise CheckpointMismatch(
            f"the checkpoint {path} was written for another configuration ({'; '.join(diff) or 'format'}). "
            f"It is not resumed: delete {path.parent} to train this configuration from scratch, "
            "or give this run another output folder."
        )
    return state


# --------------------------------------------------------------------------- the loop


@torch.no_grad()
def evaluate(net: nn.Module, loader, amp: bool = False, world_size: int = 1) -> tuple[float, float]:
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
    loss_sum, correct, count = _all_reduce(totals, world_size).tolist()
    return loss_sum / count, correct / count


def _history_frame(rows: list[dict], budget: int) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[c for c in HISTORY_COLUMNS if c != "progress_pct"])
    df.insert(2, "progress_pct", 100.0 * df["epoch"] / budget)
    return df


def train(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    clip: Callable[[nn.Module], Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    desc: str | None = None,
    on_epoch: Callable[[dict[str, Any]], Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` as ``config`` says; see the module docstring.

    ``clip(model)`` runs between backward and step; ``out_dir`` holds ``history.csv`` and
    ``checkpoint.pt`` (resumed when present); ``on_epoch(row)`` is called after every
    epoch with its history row (after the row is written, before any checkpoint).
    Under an initialised process group the model is trained with DDP.
    """
    rank, world = _rank_and_world()
    device = resolve_device(device)
    cuda = device.type == "cuda"
    amp = config.precision == "bf16" or (config.precision == "auto" and cuda)
    channels_last = cuda if config.channels_last is None else config.channels_last
    description = describe(model, data, config, seed, world)  # before any training touches the weights
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    writer = out is not None and rank == 0

    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if config.sync_batchnorm and world > 1 and cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    s = dict(epoch=0, budget=config.epochs, extensions=0, step=0, history=[], status="running", initial_loss=None, diverged_step=None, diverged_loss=None)  # fmt: skip
    if ckpt_path is not None and ckpt_path.is_file():
        saved = _load(ckpt_path, description)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"]["torch"])
        if cuda and saved["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(saved["rng"]["cuda"], device)
        s.update(saved["state"])
    resumed_from, finished_before = s["epoch"], s["status"] != "running"

    def checkpoint():
        if writer:
            rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if cuda else None}
            _save(ckpt_path, {"format": CHECKPOINT_FORMAT, "fingerprint": _fingerprint(description), "description": description,
                              "state": s, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng})  # fmt: skip

    if cuda:
        torch.backends.cudnn.benchmark = True
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None) if world > 1 else model
    if config.compile:
        net = torch.compile(net)
    size = data.train_images.shape[-1]
    common = dict(seed=seed, device=device, channels_last=channels_last, rank=rank, world_size=world)
    train_loader = data.loader("train", config.batch_size, augment=config.augment, pad=size // 8, drop_last=config.drop_last, **common)  # fmt: skip
    test_loader = data.loader("test", config.eval_batch_size, shuffle=False, **common)
    steps = len(train_loader)
    n = len(data.train_labels)
    batch_sizes = [min(config.batch_size, n - b * config.batch_size) for b in range(steps)]  # global
    if min(batch_sizes) < world:
        raise ValueError(f"the last batch of an epoch has {min(batch_sizes)} images, fewer than the {world} ranks: "
                         "use drop_last=True or another batch_size")  # fmt: skip
    sizes = torch.tensor(batch_sizes, device=device, dtype=torch.float32)
    step_loss = torch.zeros(steps, device=device)  # per-step loss sums, on the device until a sync
    step_correct = torch.zeros(steps, device=device)
    bar = progress(total=s["budget"] * steps, initial=s["epoch"] * steps, desc=desc, unit="step", **({"disable": True} if rank else {}))  # fmt: skip
    trained_images, trained_seconds = 0.0, 0.0
    warmup_steps = round(config.warmup_epochs * steps)

    while s["status"] == "running" and s["epoch"] < s["budget"]:
        first_drop = milestone_epochs(s["budget"], config.milestones)[0] if config.milestones else None
        if (config.extend_until_plateau and s["epoch"] == first_drop and s["extensions"] < config.max_extensions
                and not _plateaued(s["history"], config)):  # fmt: skip
            s["budget"], s["extensions"] = 2 * s["budget"], s["extensions"] + 1  # not plateaued: twice the epochs
            bar.total = s["budget"] * steps
            continue
        lr = learning_rate(s["epoch"], s["budget"], config.lr, config.milestones, config.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = lr
        net.train()
        synced, tick = 0, time.perf_counter()
        for b, (x, y) in enumerate(train_loader.epoch_batches(s["epoch"])):
            if warmup_steps and s["epoch"] * steps + b <= warmup_steps:  # linear warmup, then the schedule's rate
                step_lr = lr * min(1.0, (s["epoch"] * steps + b + 1) / warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = step_lr
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                logits = net(x)
            loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
            (loss_sum * (world / sizes[b])).backward()  # DDP averages over ranks: the global batch's mean loss
            if clip is not None:
                clip(model)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss[b], step_correct[b] = loss_sum.detach(), (logits.argmax(1) == y).sum()
            if b + 1 == steps or b + 1 - synced >= config.sync_every:  # a host sync: check, report
                window = slice(synced, b + 1)
                for totals in (step_loss[window], step_correct[window]):
                    _all_reduce(totals, world)  # every step's sums, once, over all ranks
                losses = (step_loss[window] / sizes[window]).tolist()
                if s["initial_loss"] is None:
                    s["initial_loss"] = losses[0]
                for i, value in enumerate(losses):
                    if not math.isfinite(value) or value > config.divergence_factor * s["initial_loss"]:
                        s.update(status="diverged", diverged_step=s["epoch"] * steps + synced + i + 1, diverged_loss=value)
                        break
                seconds, images = time.perf_counter() - tick, float(sum(batch_sizes[window]))
                trained_seconds, trained_images = trained_seconds + seconds, trained_images + images
                bar.update(b + 1 - synced)
                bar.set_postfix(epoch=s["epoch"] + 1, lr=f"{optimizer.param_groups[0]['lr']:.2g}", loss=f"{sum(losses) / len(losses):.3g}",
                                acc=f"{float(step_correct[window].sum()) / images:.3f}", img_s=f"{images / seconds:.0f}")  # fmt: skip
                synced, tick = b + 1, time.perf_counter()
                if s["status"] == "diverged":
                    break
        if s["status"] == "diverged":
            break
        test_loss, test_accuracy = evaluate(net, test_loader, amp, world)
        s["epoch"] += 1
        s["step"] = s["epoch"] * steps
        row = dict(epoch=s["epoch"], step=s["step"], lr=optimizer.param_groups[0]["lr"], train_loss=float(step_loss.sum()) / n,
                   train_accuracy=float(step_correct.sum()) / n, test_loss=test_loss, test_accuracy=test_accuracy)  # fmt: skip
        s["history"].append(row)
        if writer:
            atomic_write_csv(_history_frame(s["history"], s["budget"]), out / "history.csv")
        if on_epoch is not None:
            on_epoch({**row, "progress_pct": 100.0 * s["epoch"] / s["budget"]})
        if s["epoch"] % config.checkpoint_every == 0 and s["epoch"] < s["budget"]:
            checkpoint()
    bar.close()

    if s["status"] == "running":
        s["status"] = "completed"
    if s["diverged_step"] is not None:
        s["step"] = s["diverged_step"]
    if writer and not finished_before:
        atomic_write_csv(_history_frame(s["history"], s["budget"]), out / "history.csv")
        checkpoint()
    return TrainResult(
        history=_history_frame(s["history"], s["budget"]),
        status=s["status"],
        epochs=s["epoch"],
        budget=s["budget"],
        steps=s["step"],
        steps_per_epoch=steps,
        initial_loss=float("nan") if s["initial_loss"] is None else s["initial_loss"],
        diverged_step=s["diverged_step"],
        diverged_loss=s["diverged_loss"],
        resumed_from=resumed_from,
        images_per_s=trained_images / trained_seconds if trained_seconds else float("nan"),
        model=model,
    )


# --------------------------------------------------------------------------- command line


def _parser():
    import argparse

    from .data import DATASETS
    from .models import INITS, NORMS

    parser = argparse.ArgumentParser(prog="python -m nfstudy.train", description=main.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for history.csv and checkpoint.pt (resumed when present)")
    parser.add_argument("--model", default="resnet20", help="resnet<6n+2>: resnet20, resnet32, resnet56, resnet110, ...")
    parser.add_argument("--norm", default="bn", choices=NORMS)
    parser.add_argument("--init", default="kaiming_fan_out", choices=INITS)
    parser.add_argument("--dataset", default="cifar10", choices=DATASETS)
    parser.add_argument("--image-size", type=int, help="digits / synthetic only")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128, help="global: split across ranks")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=0.0, help="linear lr warmup, per step")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--extend-until-plateau", action="store_true")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--sync-batchnorm", action="store_true", help="DDP on CUDA: BatchNorm over the global batch")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m nfstudy.train`` (or ``torchrun --nproc_per_node N -m nfstudy.train``):
    train one CIFAR ResNet, write ``history.csv`` and ``checkpoint.pt`` into ``--out``,
    print the outcome as JSON. Running the same command again resumes."""
    from .data import load_dataset
    from .models import create_model

    args = _parser().parse_args(argv)

    rank, world, device = init_distributed(args.device)
    try:
        data = load_dataset(args.dataset, **({"image_size": args.image_size} if args.image_size else {}))
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
            augment=not args.no_augment, extend_until_plateau=args.extend_until_plateau, precision=args.precision,
            sync_batchnorm=args.sync_batchnorm, compile=args.compile, checkpoint_every=args.checkpoint_every,
        )  # fmt: skip
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        model = create_model(args.model, args.norm, args.init, num_classes=data.num_classes)
        desc = f"{args.model} {args.norm} lr={args.lr:g}"
        result = train(model, data, config, seed=args.seed, device=device, out_dir=args.out, desc=desc)
        if rank == 0:
            print(json.dumps({**result.summary(), "world_size": world, "images_per_s": result.images_per_s}, default=float))
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
