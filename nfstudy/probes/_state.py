"""Probing leaves the model as it was: its train/eval mode, its buffers, BatchNorm's running statistics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def training_mode(model: nn.Module, train: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` in mode ``train`` inside the block, then give every submodule back
    its own mode (a model with, say, frozen BatchNorm layers in eval mode stays so)."""
    modes = {m: m.training for m in model.modules()}
    model.train(train)
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def preserved_state(model: nn.Module, train: bool = True) -> Iterator[nn.Module]:
    """:func:`training_mode`, and the buffers restored afterwards: a train-mode forward
    pass moves BatchNorm's running statistics."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    with training_mode(model, train):
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name in saved:
                        b.copy_(saved[name])


@contextlib.contextmanager
def frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm normalises as its mode says (train: the batch's statistics) but does not
    update its running statistics or ``num_batches_tracked`` while inside."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True
