"""One run being trained, whichever engine steps it: :class:`Trainee` owns everything
:func:`~nfstudy.train.train` and :func:`~nfstudy.train.train_fused` do with a run outside
the forward and backward pass itself.

* **State.** :class:`LoopState`, saved in every checkpoint as a dict under ``"state"``
  (so either engine resumes the other's checkpoints).
* **Schedule.** The epoch's rate (:func:`~nfstudy.train.schedule.learning_rate`), the
  linear warmup per step, and the plateau rule that doubles the budget at the first
  milestone (:meth:`Trainee.extend_budget`).
* **Update.** ``clip(model)`` (the unwrapped model, after the gradients are complete),
  ``optimizer.step()``, gradients set to None (:func:`clip_and_step`).
* **Host sync** (:meth:`Trainee.record_window`): the window's per-step sums, all-reduced
  over ranks, are read once; a step diverges when its loss is not finite or exceeds
  ``divergence_factor`` times the very first step's loss. The run then stops with
  ``status = "diverged"``, without raising, so a sweep goes on; the recorded step is exact,
  but up to ``sync_every - 1`` more steps may have run.
* **Epoch end** (:meth:`Trainee.end_epoch`): one history row (train metrics averaged over
  the epoch's mini-batches as trained on: train mode, augmented; test metrics as measured
  by the engine), ``history.csv`` rewritten atomically, ``on_epoch(row)``, a checkpoint
  every ``checkpoint_every`` epochs. Accuracies are fractions in [0, 1].
* **Finish and result** (:meth:`Trainee.finish`, :meth:`Trainee.result`): the status, the
  final history and checkpoint (unless the run had finished before), :class:`TrainResult`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import nn

from ..runs import atomic_write_csv
from .checkpoint import CHECKPOINT_FORMAT, fingerprint, load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from .config import TrainConfig
from .distributed import all_reduce
from .schedule import learning_rate, milestone_epochs, plateaued, warmup_rate

__all__ = [
    "HISTORY_COLUMNS",
    "HISTORY_DESCRIPTIONS",
    "LoopState",
    "TrainResult",
    "Trainee",
    "batch_sizes",
    "clip_and_step",
    "history_frame",
]

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
    """Where a run is: saved in every checkpoint (as a dict, under ``"state"``)."""

    epoch: int = 0  # completed epochs
    budget: int = 0  # epochs, doubled by the plateau rule
    extensions: int = 0  # budget doublings so far
    step: int = 0  # optimizer steps of the completed epochs (at the end: the diverged step, if any)
    history: list[dict] = field(default_factory=list)  # one row per completed epoch
    status: str = "running"  # running | completed | diverged
    initial_loss: float | None = None  # the first step's loss: the divergence reference
    diverged_step: int | None = None
    diverged_loss: float | None = None


class Window(NamedTuple):
    """Steps ``start..end-1`` of an epoch, as one host sync read them."""

    start: int
    end: int
    losses: list[float]  # mean loss per step
    images: float
    seconds: float


def batch_sizes(n: int, batch_size: int, steps: int) -> list[int]:
    """The global batch size of each of an epoch's ``steps`` over ``n`` images."""
    return [min(batch_size, n - b * batch_size) for b in range(steps)]


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, clip: ClipFn | None) -> None:
    """The update once the gradients are complete: ``clip(model)`` if given,
    ``optimizer.step()``, then the gradients set to None."""
    if clip is not None:
        clip(model)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass(eq=False)
class Trainee:
    """One run: its model, optimizer and :class:`LoopState`, and every rule both engines
    apply to it (see the module docstring). Made by :meth:`open`, sized by :meth:`size_epoch`."""

    model: nn.Module  # unwrapped: what clip() sees and the checkpoint saves
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    clip: ClipFn | None
    seed: int
    device: torch.device
    description: dict[str, Any]  # the checkpoint fingerprint's
    out: Path | None
    writer: bool  # writes history.csv and checkpoint.pt (rank 0 with an out_dir)
    on_epoch: Callable[[dict[str, Any]], Any] | None
    state: LoopState
    resumed_from: int  # the epoch a checkpoint resumed from
    finished_before: bool  # the checkpoint was of a finished run: nothing to train, nothing to write
    batch_sizes: list[int] = field(default_factory=list)  # global, per step of an epoch
    images: int = 0  # per epoch, over all ranks: the train loss and accuracy's denominator
    sizes: torch.Tensor | None = None  # batch_sizes, on the device
    step_loss: torch.Tensor | None = None  # per-step loss sums, on the device until a host sync
    step_correct: torch.Tensor | None = None
    warmup_steps: int = 0
    lr: float = 0.0  # the schedule's rate of the current epoch
    synced: int = 0  # steps of the current epoch read by a host sync
    finished: bool = False
    tick: float = 0.0  # when the steps since the last host sync started
    trained_images: float = 0.0
    trained_seconds: float = 0.0

    @classmethod
    def open(
        cls,
        model: nn.Module,
        config: TrainConfig,
        description: dict[str, Any],
        *,
        seed: int,
        device: torch.device,
        clip: ClipFn | None,
        out: Path | None,
        on_epoch: Callable[[dict[str, Any]], Any] | None,
        writer: bool,
        restore_rng: bool,
    ) -> Trainee:
        """The run of ``model`` (already on ``device``) with its SGD optimizer, resumed from
        ``out/checkpoint.pt`` when there is one (and the torch RNG with it if ``restore_rng``)."""
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        state = LoopState(budget=config.epochs)
        if out is not None and (out / "checkpoint.pt").is_file():
            saved = load_checkpoint(out / "checkpoint.pt", description)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if restore_rng:
                restore_rng_states(saved["rng"], device)
            state = LoopState(**saved["state"])
        return cls(
            model,
            config,
            optimizer,
            clip,
            int(seed),
            device,
            description,
            out,
            writer,
            on_epoch,
            state,
            state.epoch,
            state.status != "running",
        )

    def size_epoch(self, sizes: list[int], images: int) -> None:
        """An epoch is ``len(sizes)`` steps of these global batch sizes over ``images`` images."""
        steps = len(sizes)
        self.batch_sizes, self.images = sizes, images
        self.sizes = torch.tensor(sizes, device=self.device, dtype=torch.float32)
        self.step_loss, self.step_correct = torch.zeros(steps, device=self.device), torch.zeros(steps, device=self.device)
        self.warmup_steps = round(self.config.warmup_epochs * steps)

    @property
    def steps(self) -> int:
        return len(self.batch_sizes)

    @property
    def training(self) -> bool:
        return self.state.status == "running" and self.state.epoch < self.state.budget

    @property
    def diverged(self) -> bool:
        return self.state.status == "diverged"

    def extend_budget(self) -> bool:
        """The plateau rule, at the first milestone before the rate drops: double the budget
        (True) unless the run has plateaued or used its ``max_extensions``."""
        s, c = self.state, self.config
        first_drop = milestone_epochs(s.budget, c.milestones)[0] if c.milestones else None
        if (
            self.training
            and c.extend_until_plateau
            and s.epoch == first_drop
            and s.extensions < c.max_extensions
            and not plateaued(s.history, c.plateau_metric, c.plateau_window, c.plateau_tol)
        ):
            s.budget, s.extensions = 2 * s.budget, s.extensions + 1
            return True
        return False

    def start_epoch(self) -> None:
        """Set the schedule's rate for the epoch; the host-sync window starts."""
        self.lr = learning_rate(self.state.epoch, self.state.budget, self.config.lr, self.config.milestones, self.config.lr_decay)
        self._set_lr(self.lr)
        self.synced, self.tick = 0, time.perf_counter()

    def warm_up(self, b: int) -> None:
        """Step ``b`` of the epoch: during the linear warmup, its rate; then the schedule's."""
        step = self.state.epoch * self.steps + b
        if self.warmup_steps and step <= self.warmup_steps:
            self._set_lr(warmup_rate(self.lr, step, self.warmup_steps))

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def record_step(self, b: int, loss_sum: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Keep step ``b``'s loss sum and correct count on the device."""
        self.step_loss[b], self.step_correct[b] = loss_sum.detach(), (logits.argmax(1) == y).sum()

    def sync_due(self, b: int) -> bool:
        """A host sync after step ``b``: every ``sync_every`` steps and at the epoch's end."""
        return b + 1 == self.steps or b + 1 - self.synced >= self.config.sync_every

    def record_window(self, end: int, world: int = 1) -> Window:
        """Read the steps since the last host sync up to ``end`` (summed over ``world`` ranks):
        mark the first diverged step, if any; count the throughput."""
        s, window = self.state, slice(self.synced, end)
        for totals in (self.step_loss[window], self.step_correct[window]):
            all_reduce(totals, world)  # every step's sums, once, over all ranks
        losses = (self.step_loss[window] / self.sizes[window]).tolist()
        if s.initial_loss is None:
            s.initial_loss = losses[0]
        for i, value in enumerate(losses):
            if not math.isfinite(value) or value > self.config.divergence_factor * s.initial_loss:
                s.status, s.diverged_step, s.diverged_loss = "diverged", s.epoch * self.steps + self.synced + i + 1, value
                break
        read = Window(self.synced, end, losses, float(sum(self.batch_sizes[window])), time.perf_counter() - self.tick)
        self.trained_seconds, self.trained_images = self.trained_seconds + read.seconds, self.trained_images + read.images
        self.synced, self.tick = end, time.perf_counter()
        return read

    def end_epoch(self, test_loss: float, test_accuracy: float) -> None:
        """Append the epoch's history row, write it, report it, checkpoint when due."""
        s = self.state
        s.epoch += 1
        s.step = s.epoch * self.steps
        row = dict(
            epoch=s.epoch,
            step=s.step,
            lr=self.optimizer.param_groups[0]["lr"],
            train_loss=float(self.step_loss.sum()) / self.images,
            train_accuracy=float(self.step_correct.sum()) / self.images,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
        )
        s.history.append(row)
        self.write_history()
        if self.on_epoch is not None:
            self.on_epoch({**row, "progress_pct": 100.0 * s.epoch / s.budget})
        if s.epoch % self.config.checkpoint_every == 0 and s.epoch < s.budget:
            self.checkpoint()

    def write_history(self) -> None:
        if self.writer:
            atomic_write_csv(history_frame(self.state.history, self.state.budget), self.out / "history.csv")

    def checkpoint(self) -> None:
        if not self.writer:
            return
        # Cloned: under train_fused the weights are views into the stack, and torch.save would
        # write every run's storage.
        model_state = {key: value.clone() for key, value in self.model.state_dict().items()}
        save_checkpoint(
            self.out / "checkpoint.pt",
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fingerprint(self.description),
                "description": self.description,
                "state": dataclasses.asdict(self.state),
                "model": model_state,
                "optimizer": self.optimizer.state_dict(),
                "rng": rng_states(self.device),
            },
        )

    def finish(self) -> None:
        """Close the run: its status, the final history and checkpoint (unless it had finished before)."""
        s = self.state
        if s.status == "running":
            s.status = "completed"
        if s.diverged_step is not None:
            s.step = s.diverged_step
        if not self.finished_before:
            self.write_history()
            self.checkpoint()
        self.finished = True

    def result(self) -> TrainResult:
        s = self.state
        return TrainResult(
            history=history_frame(s.history, s.budget),
            status=s.status,
            epochs=s.epoch,
            budget=s.budget,
            steps=s.step,
            steps_per_epoch=self.steps,
            initial_loss=float("nan") if s.initial_loss is None else s.initial_loss,
            diverged_step=s.diverged_step,
            diverged_loss=s.diverged_loss,
            resumed_from=self.resumed_from,
            images_per_s=self.trained_images / self.trained_seconds if self.trained_seconds else float("nan"),
            model=self.model,
        )


def history_frame(rows: list[dict], budget: int) -> pd.DataFrame:
    """The history rows as :data:`HISTORY_COLUMNS`, ``progress_pct`` in % of ``budget``."""
    df = pd.DataFrame(rows, columns=[c for c in HISTORY_COLUMNS if c != "progress_pct"])
    df.insert(2, "progress_pct", 100.0 * df["epoch"] / budget)
    return df
