"""Reference implementations the tests (and benchmarks) hold the library to; not part of nfstudy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nfstudy.probes.landscape import check_step_sizes
from nfstudy.probes.update import LossFn


def relative_loss_by_trial_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    step_sizes,
    folder,
    *,
    loss_fn: LossFn = F.cross_entropy,
) -> np.ndarray:
    """The public reproduction's method (docs/papers.md#bjorck-reproduction, ``fig3``), the reference
    that tests/test_landscape.py and benchmarks/bench_landscape.py compare against. Slow on purpose.

    For each step size: save model and optimizer to ``folder`` with ``torch.save``, set the
    learning rate, forward, backward, ``optimizer.step()``, evaluate the loss on the same
    batch, restore both with ``torch.load``. Like the original it stops at the first
    non-finite loss; the step sizes it did not evaluate (and that one) are NaN.
    """
    steps = check_step_sizes(step_sizes).tolist()
    model_file, optimizer_file = Path(folder) / "model_state.tmp", Path(folder) / "optimizer_state.tmp"
    torch.save(model.state_dict(), model_file)
    torch.save(optimizer.state_dict(), optimizer_file)
    relative = np.full(len(steps), np.nan)
    model.train()
    for i, lr in enumerate(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        current_loss = loss_fn(model(images), labels)
        current_loss.backward()
        optimizer.step()
        with torch.no_grad():
            tmp_loss = loss_fn(model(images), labels)
        relative[i] = (tmp_loss / current_loss).item()
        model.load_state_dict(torch.load(model_file))
        optimizer.load_state_dict(torch.load(optimizer_file))
        if not math.isfinite(tmp_loss.item()):
            relative[i] = np.nan
            break
    optimizer.zero_grad()
    return relative
