"""The learning-rate schedule and the plateau rule: pure functions of the epoch and the history.

Bjorck et al. 2018 (appendix B) divide the learning rate by 10 at 50% and 75% of the budget
and "roughly double the number of epochs" when learning has not plateaued.

* :func:`learning_rate`: ``lr * lr_decay ** k`` where k counts the milestones (fractions of
  the budget) already reached; a milestone fraction f drops the rate from epoch
  ``floor(f * epochs)`` on (0-based; 165 epochs give 82 and 123, as the public
  reproduction's ``MultiStepLR``). A function of the epoch alone, so resuming needs no
  scheduler state. Warmup (Goyal et al. 2017), ``lr · (t + 1) / T`` for the first T steps,
  is applied per step by the loop (:func:`warmup_rate`).
* The plateau rule (``TrainConfig.extend_until_plateau``): at the first milestone, before
  the rate drops, if the train loss still improved by more than ``plateau_tol`` (relative)
  over the last ``plateau_window`` epochs, the budget doubles (at most ``max_extensions``
  times). Until the first drop the rate is constant, so this is exactly the paper's "train
  again with twice the epochs", without training again. With
  ``plateau_metric="train_accuracy"`` the rule judges the train accuracy instead
  (:func:`accuracy_has_plateaued`): ``plateau_tol`` is then in accuracy (0.01: one point),
  and a run within ``plateau_tol`` of 100% has plateaued. A loss that falls towards 0 keeps
  improving in relative terms long after the accuracy is at 100%; the accuracy does not.
"""

from __future__ import annotations

import math

__all__ = [
    "PLATEAU_METRICS",
    "accuracy_has_plateaued",
    "has_plateaued",
    "learning_rate",
    "milestone_epochs",
    "plateaued",
    "warmup_rate",
]

PLATEAU_METRICS = ("train_loss", "train_accuracy")  # what the plateau rule judges


def milestone_epochs(budget: int, milestones=(0.5, 0.75)) -> list[int]:
    """The 0-based epochs from which each milestone's drop applies: ``floor(f * budget)``."""
    return [max(1, int(f * budget)) for f in milestones]


def learning_rate(epoch: int, budget: int, lr: float, milestones=(0.5, 0.75), decay: float = 0.1) -> float:
    """The learning rate of 0-based ``epoch`` within ``budget`` epochs."""
    return lr * decay ** sum(epoch >= m for m in milestone_epochs(budget, milestones))


def warmup_rate(lr: float, step: int, warmup_steps: int) -> float:
    """The rate of 0-based global ``step`` during a linear warmup over ``warmup_steps``
    steps: ``lr * (step + 1) / warmup_steps``, capped at ``lr``."""
    return lr * min(1.0, (step + 1) / warmup_steps)


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


def plateaued(history: list[dict], metric: str, window: int, tol: float) -> bool:
    """The plateau rule on ``metric`` (one of :data:`PLATEAU_METRICS`) of the history rows so far."""
    if metric == "train_accuracy":
        return accuracy_has_plateaued([r["train_accuracy"] for r in history], window, tol)
    return has_plateaued([r["train_loss"] for r in history], window, tol)
