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

One module per concern, each read top to bottom:

* :mod:`~nfstudy.train.config`: :class:`TrainConfig`, every field checked when made.
* :mod:`~nfstudy.train.schedule`: the learning rate per epoch (milestones, warmup) and the
  plateau rule that doubles the budget.
* :mod:`~nfstudy.train.state`: one run being trained, whichever engine steps it: its
  :class:`LoopState`, the warmup, the plateau rule, the divergence check (a loss not finite
  or above ``divergence_factor`` times the first step's, default the paper's Fig. 3
  threshold), the history row, the checkpoint, :class:`TrainResult`.
* :mod:`~nfstudy.train.loop`: :func:`train` (the loop on one screen), :func:`evaluate`.
* :mod:`~nfstudy.train.checkpoint`: ``checkpoint.pt`` and its configuration fingerprint;
  resuming another configuration's checkpoint raises :class:`CheckpointMismatch`.
* :mod:`~nfstudy.train.distributed`: process group, rank and world size.
* :mod:`~nfstudy.train.fused`: :func:`train_fused`, several runs of one architecture
  trained as one stacked network (``torch.func``), each run's files as :func:`train` writes them.
* :mod:`~nfstudy.train.pool`: :func:`train_runs`, independent runs side by side in worker
  processes (one per core at one torch thread), each as :func:`train` trains it here.
* :mod:`~nfstudy.train.cli`: ``python -m nfstudy.train``.

The clipping hook: ``clip(model)`` is called after ``loss.backward()`` (so after DDP's
gradient all-reduce) and before ``optimizer.step()``, with the unwrapped model (not the
DDP or compiled wrapper); ``nfstudy.clip``'s clippers are such callables.

**CUDA.** Data resident on the GPU (:class:`~nfstudy.data.DeviceLoader`), fp32 (bf16 autocast
with channels_last on request, ``precision="bf16"``), cuDNN autotuning, optional
``torch.compile``; no host sync per step.

**Distributed.** Under ``torchrun`` (``python -m nfstudy.train`` calls
:func:`init_distributed`; or initialise the process group yourself), the model is wrapped
in DistributedDataParallel and each global batch of ``batch_size`` images is split evenly
across ranks; the loss is scaled so that the averaged gradient is the gradient of the
global batch's mean loss. Metrics are summed over ranks. BatchNorm normalises over each
rank's share (the standard DDP behaviour), unless ``sync_batchnorm=True`` (CUDA only:
PyTorch's SyncBatchNorm has no CPU kernel).
"""

from .checkpoint import (
    CHECKPOINT_FORMAT,
    PERFORMANCE_FIELDS,
    CheckpointMismatch,
    describe,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from .cli import _parser, main  # noqa: F401  (_parser: tests/test_readme.py checks the README's commands with it)
from .config import PRECISIONS, TrainConfig
from .distributed import init_distributed
from .fused import SHARED_FIELDS, train_fused
from .loop import backward_and_step, evaluate, train
from .pool import FUSE_CHOICES, WORKERS_ENV, TrainJob, pool_workers, train_runs, use_fused
from .schedule import PLATEAU_METRICS, accuracy_has_plateaued, has_plateaued, learning_rate, milestone_epochs
from .state import HISTORY_COLUMNS, HISTORY_DESCRIPTIONS, LoopState, TrainResult, history_frame

__all__ = [
    "CHECKPOINT_FORMAT",
    "HISTORY_COLUMNS",
    "HISTORY_DESCRIPTIONS",
    "PERFORMANCE_FIELDS",
    "PLATEAU_METRICS",
    "PRECISIONS",
    "SHARED_FIELDS",
    "CheckpointMismatch",
    "FUSE_CHOICES",
    "LoopState",
    "WORKERS_ENV",
    "TrainConfig",
    "TrainJob",
    "TrainResult",
    "accuracy_has_plateaued",
    "backward_and_step",
    "describe",
    "evaluate",
    "fingerprint",
    "has_plateaued",
    "history_frame",
    "init_distributed",
    "learning_rate",
    "load_checkpoint",
    "milestone_epochs",
    "save_checkpoint",
    "pool_workers",
    "train",
    "train_fused",
    "train_runs",
    "use_fused",
    "train_runs",
]
