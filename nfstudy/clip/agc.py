"""Adaptive gradient clipping (AGC): the definition, as small pure functions.

Brock, De, Smith, Simonyan, "High-Performance Large-Scale Image Recognition Without
Normalization" (ICML 2021, arXiv 2102.06171), section 4.1, eq. (3). For every unit i of a
parameter W with gradient G, and lambda the clipping threshold::

    G_i <- lambda * (||W_i||* / ||G_i||) * G_i    if ||G_i|| / ||W_i||* > lambda
    G_i <- G_i                                    otherwise,   ||W_i||* = max(||W_i||, eps)

:func:`unitwise_norm` is ``||.||`` of each unit, :func:`agc_scale` the factor eq. (3)
multiplies ``G_i`` by, :func:`unitwise_clip` the two composed; :func:`adaptive_clip_grad_`
applies them to the ``.grad`` of each parameter in turn. Two details are the official
code's (deepmind-research, ``nfnets/optim.py``): a unit is left alone when
``||G_i|| < lambda * ||W_i||*`` (strict), and the divisor is ``max(||G_i||, 1e-6)``.

:mod:`nfstudy.clip.fast` computes the same for many parameters at once;
:class:`~nfstudy.clip.GradientClipper` uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..params import check_positive

__all__ = ["AGC_EPS", "GRAD_NORM_GUARD", "adaptive_clip_grad_", "agc_scale", "default_unit_dim", "unitwise_clip", "unitwise_norm"]

# Brock et al. 2021, section 4.1: keeps a zero-initialised parameter (a gain, a bias) from
# being frozen at zero.
AGC_EPS = 1e-3
# Official code: clipped = grad * max_norm / max(||G_i||, 1e-6).
GRAD_NORM_GUARD = 1e-6
AUTO = "auto"

UnitDim = int | None  # the dimension that enumerates units; None: the tensor is one unit


def default_unit_dim(shape: Iterable[int]) -> UnitDim:
    """0 (one unit per output row / filter), or ``None`` if at most one dimension exceeds 1."""
    return 0 if sum(1 for s in shape if s > 1) > 1 else None


def norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Norms are taken in float32 (float64 for float64 tensors) whatever the gradient's dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_unit_dim(shape: torch.Size, unit_dim: Any, what: str) -> UnitDim:
    """``unit_dim`` made non-negative, or an error that names ``what`` and the valid values."""
    if unit_dim is None:
        return None
    if isinstance(unit_dim, bool) or not isinstance(unit_dim, int):
        raise TypeError(f"the unit dim of {what} must be an int or None (the whole tensor is one unit), got {unit_dim!r}")
    if not -len(shape) <= unit_dim < len(shape):
        raise ValueError(
            f"unit dim {unit_dim} is out of range for {what} of shape {tuple(shape)}: use 0..{len(shape) - 1}, or None for one unit"
            if shape
            else f"{what} is a scalar: its unit dim can only be None"
        )
    return unit_dim % len(shape)


def unitwise_norm(x: torch.Tensor, unit_dim: UnitDim | str = AUTO) -> torch.Tensor:
    """The L2 norm of each unit of ``x`` in float32 (float64 for float64), broadcastable to ``x``.

    Layout assumption: a unit is one *output* unit in PyTorch's layout, a row of a
    ``Linear`` weight ``[out, in]``, a filter of a ``Conv`` weight ``[out, in/groups, *k]``;
    its norm reduces over every dimension but 0. A tensor with at most one dimension
    larger than 1 (a scalar, a bias, a gain stored as ``[out, 1, 1, 1]``) is one unit: the
    official code's ``squeeze`` rule, which makes the answer independent of where singleton
    dimensions sit. (optax's ``unitwise_norm`` reduces every dimension but the *last*: JAX
    stores ``[in, out]``.)

    ``unit_dim``: the dimension that enumerates units where dim 0 is not the output
    (``ConvTranspose`` weights are ``[in, out/groups, *k]``: 1); ``None``: the whole tensor
    is one unit; ``"auto"``: :func:`default_unit_dim`.
    """
    unit_dim = default_unit_dim(x.shape) if unit_dim == AUTO else check_unit_dim(x.shape, unit_dim, "the tensor")
    dims = [d for d in range(x.ndim) if d != unit_dim]
    if x.ndim > 0 and not dims:  # a vector with unit_dim 0: every element is a unit
        return x.abs().to(norm_dtype(x.dtype))
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=norm_dtype(x.dtype))


def agc_scale(grad_norm: torch.Tensor, weight_norm: torch.Tensor, threshold: float, eps: float = AGC_EPS) -> torch.Tensor:
    """The factor eq. (3) multiplies each unit's gradient by: 1 where it does not clip."""
    max_norm = weight_norm.clamp(min=eps).mul_(threshold)
    scale = max_norm / grad_norm.clamp(min=GRAD_NORM_GUARD)
    return scale.masked_fill_(grad_norm < max_norm, 1.0)


def unitwise_clip(
    grad: torch.Tensor, weight: torch.Tensor, threshold: float, eps: float = AGC_EPS, unit_dim: UnitDim | str = AUTO
) -> torch.Tensor:
    """AGC of one gradient, out of place (in the gradient's dtype)."""
    scale = agc_scale(unitwise_norm(grad, unit_dim), unitwise_norm(weight, unit_dim), threshold, eps)
    return (grad * scale).to(grad.dtype)


def check_dense(p: torch.Tensor, grad: torch.Tensor) -> None:
    if grad.is_sparse:
        raise ValueError(
            f"AGC needs dense gradients; a parameter of shape {tuple(p.shape)} has a sparse one "
            "(nn.Embedding(sparse=True)?): leave it out of the parameters to clip"
        )


@torch.no_grad()
def adaptive_clip_grad_(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    clipping_threshold: float,
    eps: float = AGC_EPS,
    unit_dims: Mapping[torch.Tensor, UnitDim] | None = None,
) -> None:
    """AGC in place on the ``.grad`` of every parameter given (those without one are skipped).

    ``unit_dims`` maps a parameter to its unit dimension where the layout assumption of
    :func:`unitwise_norm` does not hold (``None``: the whole tensor is one unit).
    """
    check_positive("clipping_threshold", clipping_threshold)
    check_positive("eps", eps)
    unit_dims = unit_dims or {}
    for p in [parameters] if isinstance(parameters, torch.Tensor) else parameters:
        if p.grad is None:
            continue
        check_dense(p, p.grad)
        unit_dim = unit_dims[p] if p in unit_dims else AUTO
        p.grad.mul_(agc_scale(unitwise_norm(p.grad, unit_dim), unitwise_norm(p, unit_dim), clipping_threshold, eps))
