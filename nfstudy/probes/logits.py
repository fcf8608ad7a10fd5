"""Gradients of the loss with respect to the output logits: Bjorck et al. 2018, Fig. 6.

Rows are images, columns classes. For cross-entropy the gradient of image i's own loss
with respect to its logits is ``softmax(z_i) - onehot(y_i)``: the true class's entry is
negative (strengthen it), every other entry is positive and equals the probability the
network gives that class. A network that "predicts the same class for every input"
shows one column close to +1 in every row whose label is another class; at a uniform
prediction every non-true entry is already positive (1/C), so it is the *size* of the
entries, not their sign, that tells the two apart (:func:`dominant_class`).

Scale: we report the gradient of each image's own loss, i.e. of the batch's *summed*
loss. The mean-reduced loss that training minimises has exactly these rows divided by
the batch size; rows of different batch sizes stay comparable this way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._state import preserved_state

__all__ = ["DominantClass", "LogitGradients", "dominant_class", "epoch_logit_gradients", "logit_gradients"]


@dataclass(frozen=True)
class LogitGradients:
    """``gradients`` and ``logits`` (images x classes) and ``labels``, on the model's device."""

    gradients: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    loss: float  # mean loss over the images

    def cpu(self) -> LogitGradients:
        """The same on the host (one transfer per tensor)."""
        return LogitGradients(self.gradients.cpu(), self.logits.cpu(), self.labels.cpu(), self.loss)

    def mean_by_label(self, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means, counts)``: the mean gradient row of the images of each true class
        (``num_classes x classes``, float64, on the device; a class without images gives
        a row of zeros) and how many images each has. This is the epoch average that keeps
        the rows' meaning: an average by position in the batch mixes a different random
        image into each row every batch, and every row tends to the same vector."""
        k = num_classes if num_classes is not None else self.gradients.shape[1]
        grads = self.gradients.to(torch.float32 if self.gradients.device.type == "mps" else torch.float64)
        sums = torch.zeros(k, grads.shape[1], dtype=grads.dtype, device=grads.device).index_add_(0, self.labels, grads)
        counts = torch.bincount(self.labels, minlength=k)
        return sums / counts.clamp(min=1).unsqueeze(1), counts


def _gradient_of_logits(
    logits: torch.Tensor, labels: torch.Tensor, loss_fn: Callable[..., torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    # The loss depends on the network only through the logits, so the graph is cut here:
    # no backward pass through the network is needed for d loss / d logits.
    z = logits.detach()
    z = (z.float() if z.dtype in (torch.float16, torch.bfloat16) else z.clone()).requires_grad_(True)
    with torch.enable_grad():
        summed = loss_fn(z, labels, reduction="sum")
        (grad,) = torch.autograd.grad(summed, z)
    return grad, summed.detach()


def logit_gradients(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
    train: bool = True,
) -> LogitGradients:
    """d loss_i / d logits_i for every image of one mini-batch (see the module docstring).

    ``loss_fn(logits, labels, reduction=...)`` is any loss with a ``reduction`` argument.
    The model runs in train mode by default (BatchNorm uses the batch's statistics, as
    at the first step of training) and is restored afterwards, buffers included.
    """
    with preserved_state(model, train), torch.no_grad():
        logits = model(images)
    grad, summed = _gradient_of_logits(logits, labels, loss_fn)
    return LogitGradients(grad, logits.detach(), labels, float(summed) / len(labels))


def epoch_logit_gradients(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
    train: bool = True,
) -> LogitGradients:
    """:func:`logit_gradients` of every batch of ``batches`` (an epoch, say), each batch
    normalised on its own as in training, concatenated on the device. The model is left
    unchanged: every batch sees the network at initialisation."""
    grads, logits, labels, total = [], [], [], None
    with preserved_state(model, train), torch.no_grad():
        for images, y in batches:
            z = model(images)
            g, summed = _gradient_of_logits(z, y, loss_fn)
            grads.append(g)
            logits.append(z)
            labels.append(y)
            total = summed if total is None else total + summed  # stays on the device
    if not grads:
        raise ValueError("no batches: the loader yielded nothing (is batch_size larger than the split with drop_last?)")
    labels_all = torch.cat(labels)
    return LogitGradients(torch.cat(grads), torch.cat(logits), labels_all, float(total) / len(labels_all))


@dataclass(frozen=True)
class DominantClass:
    """How far a network predicts one class for every input (from logit gradients alone).

    ``probability = gradient + onehot(label)`` recovers the softmax (cross-entropy).
    ``cls`` is the class with the largest mean probability over the images; ``share`` the
    fraction of the images labelled otherwise to which the network gives ``cls`` more
    than half its probability (so ``cls`` is their prediction whatever the image);
    ``mean_probability`` the mean probability of ``cls`` over those images (the mean of
    its gradient column there); ``top1_share`` the fraction of all images whose argmax is
    the most frequent argmax (argmax alone ignores confidence: a nearly uniform softmax
    can still rank one class first everywhere); ``n_predicted`` how many classes are
    anyone's argmax.
    """

    cls: int
    share: float
    mean_probability: float
    top1_share: float
    n_predicted: int
    n_images: int


def dominant_class(gradients, labels) -> DominantClass:
    """:class:`DominantClass` of cross-entropy logit gradients (images x classes)."""
    g = np.asarray(gradients.cpu() if isinstance(gradients, torch.Tensor) else gradients, dtype=np.float64)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    if g.ndim != 2 or len(g) != len(y) or not len(y):
        raise ValueError(f"expected images x classes gradients and one label per image, got {g.shape} and {y.shape}")
    probability = g.copy()
    probability[np.arange(len(y)), y] += 1.0
    cls = int(probability.mean(0).argmax())
    others = y != cls
    column = probability[others, cls]
    predicted = probability.argmax(1)
    counts = np.bincount(predicted, minlength=g.shape[1])
    return DominantClass(
        cls=cls,
        share=float((column > 0.5).mean()) if others.any() else float("nan"),
        mean_probability=float(column.mean()) if others.any() else float("nan"),
        top1_share=float(counts.max() / len(y)),
        n_predicted=int((counts > 0).sum()),
        n_images=int(len(y)),
    )
