"""The one call between ``loss.backward()`` and ``optimizer.step()``: clip by value, by norm, or AGC.

:class:`GradientClipper` holds the choice (a training loop calls it, or attaches it to an
optimizer); :func:`apply_gradient_clipping` is the functional form (Composer's
``apply_gradient_clipping``). AGC goes through the vectorised
:func:`~nfstudy.clip.fast.foreach_adaptive_clip_grad_`, with the head and layouts from
:mod:`~nfstudy.clip.heads`; value clipping is ``torch.nn.utils.clip_grad_value_``, norm
clipping ``torch.nn.utils.clip_grads_with_norm_`` given a total norm taken in float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..params import check_choice, check_positive
from . import heads
from .agc import AGC_EPS, AUTO, UnitDim
from .fast import foreach_adaptive_clip_grad_

__all__ = ["CLIPPING_TYPES", "GradientClipper", "apply_gradient_clipping"]

CLIPPING_TYPES = ("value", "norm", "adaptive")


@torch.no_grad()
def _clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_``, but the norms are taken in float32 (float64 if any
    gradient is float64). Torch takes each norm in the gradient's dtype: one fp16 gradient
    whose norm exceeds 65504 makes the total inf, and every gradient is multiplied by 0."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    device = grads[0].device
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=dtype).to(device) for g in grads]))
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)


@dataclass(frozen=True, eq=False)
class GradientClipper:
    """A reusable clipper: ``clip(model_or_parameters)`` after backward, before ``optimizer.step()``.

    ``clipping_type`` (lambda = ``clipping_threshold``):

    * ``"value"``: clamp every gradient element to [-lambda, lambda].
    * ``"norm"``: multiply every gradient by ``min(1, lambda / (||G|| + 1e-6))``, ||G|| the L2
      norm of all gradients together (torch's formula; norms in float32).
    * ``"adaptive"``: AGC (:mod:`nfstudy.clip.agc`), unit by unit. Given a *model*, the
      weight of its classifier ``head`` is left unclipped (``"auto"``:
      :func:`~nfstudy.clip.heads.find_head`; a module or its qualified name; ``None``: clip
      every parameter); given parameters, every one is clipped. ``eps``: the floor on
      ``||W_i||``; ``unit_dims``: parameter (or its name) -> the dimension that enumerates
      its units, or ``None`` for one unit per tensor, where the layout assumption fails.

    Everything acts on ``.grad`` after backward, so DDP's averaged gradients are clipped the
    same on every rank; sharded parameters (FSDP, DTensor) would be clipped per shard and are
    not supported. With fp16 AMP, call ``scaler.unscale_(optimizer)`` first. Parameters
    without a gradient are skipped. No host syncs.
    """

    clipping_type: str
    clipping_threshold: float
    eps: float = AGC_EPS
    head: Any = AUTO
    unit_dims: Mapping[Any, UnitDim] | None = None

    def __post_init__(self):
        check_choice("clipping_type", self.clipping_type, CLIPPING_TYPES)
        check_positive("clipping_threshold", self.clipping_threshold)
        check_positive("eps", self.eps)
        if not (self.head is None or isinstance(self.head, (str, nn.Module))):
            raise TypeError(f"head must be 'auto', None, a module or its qualified name, got {self.head!r}")

    def __call__(self, model_or_parameters: nn.Module | Iterable[torch.Tensor] | torch.Tensor) -> None:
        self._clip(model_or_parameters)

    def _clip(self, target: Any, only: set[int] | None = None) -> None:
        model = target if isinstance(target, nn.Module) else None
        scan = heads.scan(model) if model is not None else None
        params = scan.parameters if scan is not None else heads.as_parameters(target)
        if only is not None:
            params = [p for p in params if id(p) in only]
        if self.clipping_type == "value":
            torch.nn.utils.clip_grad_value_(params, self.clipping_threshold)
        elif self.clipping_type == "norm":
            _clip_grad_norm_(params, self.clipping_threshold)
        else:
            if model is None and self.head is not None and self.head != AUTO:
                raise ValueError("head= names a module of a model: pass the model itself, not its parameters")
            excluded = heads.head_weights(model, self.head, scan) if scan is not None else set()
            overrides = heads.unit_dim_overrides(model, self.unit_dims)
            if scan is not None:
                heads.check_interpretable(scan, overrides, excluded)
            if excluded:
                params = [p for p in params if id(p) not in excluded]
            foreach_adaptive_clip_grad_(params, self.clipping_threshold, self.eps, overrides)

    def attach(self, optimizer: torch.optim.Optimizer, model: nn.Module | None = None):
        """Clip before every ``optimizer.step()`` (a step pre-hook); returns a removable handle.

        Only the optimizer's parameters are clipped. Give ``model`` for AGC to find the
        head (and parameter names) in it; without it, every parameter is clipped.
        """

        def clip_before_step(opt, args, kwargs):
            params = [p for group in opt.param_groups for p in group["params"]]
            if model is None:
                self._clip(params)
            else:
                self._clip(model, only={id(p) for p in params})

        return optimizer.register_step_pre_hook(clip_before_step)


def apply_gradient_clipping(
    model_or_parameters: nn.Module | Iterable[torch.Tensor] | torch.Tensor,
    clipping_type: str,
    clipping_threshold: float,
    *,
    eps: float = AGC_EPS,
    head: Any = AUTO,
    unit_dims: Mapping[Any, UnitDim] | None = None,
) -> None:
    """Clip gradients in place, between ``loss.backward()`` and ``optimizer.step()``; the
    arguments are :class:`GradientClipper`'s."""
    GradientClipper(clipping_type, clipping_threshold, eps, head, unit_dims)(model_or_parameters)
