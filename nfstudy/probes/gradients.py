"""Gradients of chosen weight layers after one forward/backward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.surgery import get_layer
from ._state import preserved_state

__all__ = ["weight_gradients"]


def weight_gradients(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    layers: Sequence[int],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    train: bool = True,
) -> tuple[dict[int, torch.Tensor], float]:
    """``({layer: gradient of its weight}, loss)`` for one mini-batch.

    ``layers`` are 1-based weight-layer depths (:func:`nfstudy.models.weight_layers`).
    The model runs in train mode by default (BatchNorm uses batch statistics, as at the
    first step of training); its mode and buffers (BatchNorm's running statistics) are
    restored afterwards. Existing ``.grad`` values are discarded. The gradients stay on
    the model's device.
    """
    modules = {depth: get_layer(model, depth).module for depth in layers}
    with preserved_state(model, train):
        try:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels)
            loss.backward()
            grads = {depth: module.weight.grad.detach().clone() for depth, module in modules.items()}
        finally:
            model.zero_grad(set_to_none=True)
    return grads, float(loss.detach())
