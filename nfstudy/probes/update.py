"""The direction of one optimizer update, computed without taking it.

``d`` is what ``torch.optim.SGD.step()`` would apply with ``lr = 1``: weight decay added
to the gradient, then the momentum buffer (``buf = momentum * buf + (1 - dampening) * g``,
``buf = g`` at the first step), Nesterov and ``maximize`` as SGD does them, operation by
operation, so that ``theta - lr * d`` is bit for bit the parameters after the step. One
forward and one backward pass (``torch.autograd.grad``); ``.grad`` and ``optimizer.state``
are read, never written.

A network trained with gradient clipping (``clip``, the training engine's hook: a
callable that rescales ``.grad`` in place, e.g. ``nfstudy.clip.GradientClipper``) takes
the step of the *clipped* gradient: ``d`` is then SGD's update built from ``clip``'s
output (clipping first, then weight decay and momentum, in the order of a training step
``loss.backward(); clip(model); optimizer.step()``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._state import frozen_batchnorm_statistics, training_mode

__all__ = ["ClipFn", "LossFn", "UpdateDirection", "clipped_gradients", "sgd_update_direction"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ClipFn = Callable[[nn.Module], Any]  # rescales the model's .grad in place (nfstudy.clip.GradientClipper)


def sgd_update_direction(
    optimizer: torch.optim.Optimizer, grads: dict[torch.Tensor, torch.Tensor | None]
) -> dict[torch.Tensor, torch.Tensor]:
    """``{parameter: d}`` such that ``optimizer.step()``, with these gradients, would set
    ``p <- p - lr * d``; parameters without a gradient are left out (SGD skips them).

    Pure: ``optimizer.state`` (the momentum buffers) is read, never written. The
    arithmetic is ``torch.optim.SGD``'s own, operation by operation.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(
            f"the update direction is implemented for torch.optim.SGD, got {type(optimizer).__name__}: "
            "probe with SGD (momentum and weight decay are supported)"
        )
    directions = {}
    for group in optimizer.param_groups:
        wd, momentum = group["weight_decay"], group["momentum"]
        dampening, nesterov, maximize = group["dampening"], group["nesterov"], group.get("maximize", False)
        for p in group["params"]:
            g = grads.get(p)
            if g is None:
                continue
            g = -g if maximize else g
            if wd != 0:
                g = g.add(p.detach(), alpha=wd)
            if momentum != 0:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                buf = g.clone() if buf is None else buf.mul(momentum).add_(g, alpha=1 - dampening)
                g = g.add(buf, alpha=momentum) if nesterov else buf
            directions[p] = g
    return directions


def clipped_gradients(
    model: nn.Module, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], clip: ClipFn
) -> list[torch.Tensor | None]:
    """What ``clip(model)`` makes of the gradients ``grads`` of ``params``, with ``.grad``
    left as it was: the gradients are lent to ``.grad`` for the call (the clipper sees them
    exactly as after ``loss.backward()``, head exclusion and all), then taken back."""
    saved = [p.grad for p in params]
    try:
        for p, g in zip(params, grads):
            p.grad = g
        clip(model)
        return [p.grad for p in params]
    finally:
        for p, g in zip(params, saved):
            p.grad = g


@dataclass(frozen=True)
class UpdateDirection:
    """What one optimizer step on a mini-batch would do: ``theta <- theta - lr * direction``.

    ``params`` are the live parameters (detached views, not copies): use the direction
    before the model is trained further.
    """

    names: tuple[str, ...]  # names in model.named_parameters()
    params: tuple[torch.Tensor, ...]
    directions: tuple[torch.Tensor, ...]
    loss: torch.Tensor  # the batch's loss at theta: 0-dim, on the device

    @classmethod
    def compute(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        labels: torch.Tensor,
        loss_fn: LossFn = F.cross_entropy,
        train: bool = True,
        clip: ClipFn | None = None,
    ) -> UpdateDirection:
        """One forward and one backward pass on ``(images, labels)``; no state changes.

        ``clip``: the training step's gradient clipping (``clip(model)`` between backward and
        ``optimizer.step()``); the direction is then the one the clipped step takes.
        """
        names = {p: n for n, p in model.named_parameters(remove_duplicate=False)}
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        missing = [i for i, p in enumerate(params) if p not in names]
        if missing:
            raise ValueError(f"{len(missing)} of the optimizer's parameters are not parameters of the model")
        with training_mode(model, train), frozen_batchnorm_statistics(model), torch.enable_grad():
            loss = loss_fn(model(images), labels)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        if clip is not None:
            grads = clipped_gradients(model, params, grads, clip)
        directions = sgd_update_direction(optimizer, dict(zip(params, grads)))
        moved = [p for p in params if p in directions]
        return cls(
            names=tuple(names[p] for p in moved),
            params=tuple(p.detach() for p in moved),
            directions=tuple(directions[p].detach() for p in moved),
            loss=loss.detach(),
        )

    def params_at(self, step_size: float) -> dict[str, torch.Tensor]:
        """``theta - step_size * d``, computed as SGD computes it (``p.add(d, alpha=-lr)``)."""
        return {n: p.add(d, alpha=-float(step_size)) for n, p, d in zip(self.names, self.params, self.directions)}

    def stacked_params_at(self, step_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        """``theta - eta_k * d`` for every ``eta_k``, stacked along a new first dimension."""
        out = {}
        for n, p, d in zip(self.names, self.params, self.directions):
            eta = step_sizes.to(device=p.device, dtype=p.dtype).view(-1, *([1] * p.dim()))
            out[n] = torch.addcmul(p.unsqueeze(0), eta, d.unsqueeze(0), value=-1)
        return out

    def norm(self) -> torch.Tensor:
        """``||d||`` over every parameter: a 0-dim tensor on the device (float64 where it exists)."""
        dtype = torch.float32 if self.loss.device.type == "mps" else torch.float64
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d, dtype=dtype) for d in self.directions]))
