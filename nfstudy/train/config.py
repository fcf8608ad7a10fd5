"""What a training run is: :class:`TrainConfig`, checked when it is made.

Defaults are Bjorck et al. 2018's recipe (appendix B, and the public reproduction): SGD with
momentum 0.9, weight decay 5e-4, batch 128, the rate divided by 10 at 50% and 75% of the
budget. A wrong value is an error naming the field and what would be right.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import DIVERGENCE
from ..params import check_choice, check_positive
from .schedule import PLATEAU_METRICS, milestone_epochs

__all__ = ["PRECISIONS", "TrainConfig"]

PRECISIONS = ("auto", "fp32", "bf16")


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
    extend_until_plateau: bool = False  # the paper's budget-doubling rule (nfstudy.train.schedule)
    plateau_window: int = 20  # epochs
    plateau_tol: float = 0.01  # progress: relative improvement of the train loss, or gain in train accuracy
    plateau_metric: str = "train_loss"  # train_loss | train_accuracy (nfstudy.train.schedule)
    max_extensions: int = 2
    divergence_factor: float = DIVERGENCE  # x the first step's loss
    precision: str = "auto"  # auto = fp32 on every device (the paper's arithmetic); bf16: autocast, opt-in
    sync_batchnorm: bool = False  # DDP on CUDA: BatchNorm over the global batch
    checkpoint_every: int = 5  # epochs
    sync_every: int = 50  # steps between host syncs (progress bar, divergence check)
    eval_batch_size: int = 1000
    compile: bool = False  # torch.compile the model
    channels_last: bool | None = None  # None: with bf16 on CUDA

    def __post_init__(self):
        check_positive("epochs", self.epochs, integer=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1] (0.1 divides the lr by 10), got {self.lr_decay!r}")
        self._check_milestones()
        for name in ("plateau_window", "checkpoint_every", "sync_every", "eval_batch_size"):
            check_positive(name, getattr(self, name), integer=True)
        check_positive("max_extensions", self.max_extensions, integer=True, allow_zero=True)
        check_positive("plateau_tol", self.plateau_tol, allow_zero=True)
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1 (a multiple of the first loss), got {self.divergence_factor!r}")
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("plateau_metric", self.plateau_metric, PLATEAU_METRICS)
        if self.extend_until_plateau:
            self._check_plateau_rule()

    def autocast_and_layout(self, cuda: bool) -> tuple[bool, bool]:
        """``(bf16 autocast, channels_last)`` for a run on CUDA (``cuda``) or not.

        bf16 only when asked (``precision="bf16"``): ``"auto"`` is fp32 everywhere. On an H200,
        at the paper's ResNet-110 and batch 128, bf16 autocast with channels_last measured
        slower than fp32 (benchmarks/README.md, "GPU"), and fp32 is the paper's arithmetic.
        ``channels_last`` unset follows bf16 on CUDA (the layout its tensor-core kernels want).
        """
        amp = self.precision == "bf16"
        return amp, (amp and cuda) if self.channels_last is None else self.channels_last

    def _check_milestones(self) -> None:
        """Milestones inside the budget, increasing; the warmup over before the first drop."""
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

    def _check_plateau_rule(self) -> None:
        """The rule decides at the first milestone, on more than ``plateau_window`` epochs."""
        if not self.milestones:
            raise ValueError("extend_until_plateau decides at the first milestone: give milestones")
        first = milestone_epochs(self.epochs, self.milestones)[0]
        if first <= self.plateau_window:
            raise ValueError(
                f"extend_until_plateau judges the last plateau_window={self.plateau_window} epochs before the first "
                f"milestone (epoch {first} of {self.epochs}): lower plateau_window below {first} or raise epochs"
            )
