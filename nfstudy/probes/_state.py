"""Probing leaves the model as it was: its train/eval mode and its buffers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def preserved_state(model: nn.Module, train: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` in mode ``train`` inside the block, then restore its mode and its
    buffers: a train-mode forward pass moves BatchNorm's running statistics."""
    was_training = model.training
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.train(train)
    try:
        yield model
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in saved:
                    b.copy_(saved[name])
