"""Gradient clipping by value, by global norm, and adaptive gradient clipping (AGC).

One call between ``loss.backward()`` and ``optimizer.step()``, in the shape of
Composer's functional API::

    loss.backward()
    apply_gradient_clipping(model, "adaptive", 0.01)   # or "value" | "norm"
    optimizer.step()

or a reusable clipper, for a training loop or any optimizer::

    clip = GradientClipper("adaptive", 0.01)
    clip(model)                                # after backward, before optimizer.step()
    handle = clip.attach(optimizer, model)     # or: before every optimizer.step(), by itself

The three flavours (lambda = ``clipping_threshold``):

* ``"value"``: clamp every gradient element to [-lambda, lambda]
  (``torch.nn.utils.clip_grad_value_``).
* ``"norm"``: multiply every gradient by ``min(1, lambda / (||G|| + 1e-6))``, ||G|| the L2
  norm of all gradients together (``torch.nn.utils.clip_grad_norm_``'s formula, with the
  per-tensor norms taken in float32: see :func:`clip_grad_norm_`).
* ``"adaptive"``: AGC, Brock, De, Smith, Simonyan, "High-Performance Large-Scale Image
  Recognition Without Normalization" (ICML 2021, arXiv 2102.06171), section 4.1. For every
  unit i of every parameter W with gradient G::

      max_norm_i = lambda * max(||W_i||, eps)
      G_i <- G_i                                    if ||G_i|| < max_norm_i
      G_i <- G_i * max_norm_i / max(||G_i||, 1e-6)  otherwise

  eps = 1e-3 keeps a zero-initialised parameter (a gain, a bias) from being frozen at
  zero; the 1e-6 guard on the gradient norm is the official code's (deepmind-research,
  nfnets/optim.py), as is the strict ``<``.

Layout assumption (AGC). A unit is one *output* unit in PyTorch's layout: a row of a
``Linear`` weight ``[out, in]``, a filter of a ``Conv`` weight ``[out, in/groups, *k]``;
its norm reduces over every dimension but 0. A tensor with at most one dimension larger
than 1 (a scalar, a bias, a gain stored as ``[out, 1, 1, 1]``) is one unit: the official
code's ``squeeze`` rule, which makes the answer independent of where singleton
dimensions sit. Where dim 0 is not the output dimension (``ConvTranspose`` weights are
``[in, out/groups, *k]``), pass ``unit_dims={parameter or its name: dim}`` (``None``: the
whole tensor is one unit); given a model, AGC refuses to guess for the transposed
convolutions it finds. Norms are taken in float32 (float64 for float64 tensors) whatever
the gradient's dtype.

Head exclusion (AGC only). Given a *model*, the final classifier's weight is left
unclipped, as in the paper; its bias is clipped, as in the official code. The classifier
is found by module, never by parameter order (see :func:`find_head`): the module(s)
returned by the model's ``get_classifier()`` where it has one (timm's convention),
otherwise the last ``nn.Linear`` registered in the model. ``head=`` overrides the rule (a
module, its qualified name, or ``None`` to clip everything). Given a plain iterable of
parameters, every parameter is clipped. Value and norm clipping act on every parameter.

Everything acts on ``.grad`` after backward, so DDP's averaged gradients are clipped the
same on every rank; sharded parameters (FSDP, DTensor) would be clipped per shard and are
not supported. With fp16 AMP, call ``scaler.unscale_(optimizer)`` before clipping.
Parameters without a gradient are skipped. No host syncs and no host-built tensors per
call; AGC is vectorised across parameters (see :func:`adaptive_clip_grad_`).
"""

from __future__ import annotations

import functools
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from .params import check_choice, check_positive

__all__ = [
    "AGC_EPS",
    "CLIPPING_TYPES",
    "GRAD_NORM_GUARD",
    "GradientClipper",
    "adaptive_clip_grad_",
    "agc_scale",
    "apply_gradient_clipping",
    "clip_grad_norm_",
    "default_unit_dim",
    "find_head",
    "unitwise_clip",
    "unitwise_norm",
]

CLIPPING_TYPES = ("value", "norm", "adaptive")
AGC_EPS = 1e-3  # Brock et al. 2021, section 4.1
GRAD_NORM_GUARD = 1e-6  # official code: clipped = grad * max_norm / max(||G_i||, 1e-6)
AUTO = "auto"

UnitDim = Union[int, None]  # the dimension that enumerates units; None: the tensor is one unit

# Weights stored as [in, out/groups, *k]: dim 0 is not the output dimension.
TRANSPOSED_WEIGHT_MODULES = (nn.modules.conv._ConvTransposeNd,)

# Same-shaped tensors below this many elements are stacked and reduced in one kernel; larger
# ones get a kernel each. Stacking costs two extra passes over the data, a kernel costs a
# launch (a few microseconds on CPU, about as long as a pass over ~10^4 floats). Measured
# on ResNet-110 by benchmarks/bench_clip.py (see benchmarks/README.md): 1024..16384 are
# best, stacking nothing or everything is 20-30% slower. Tuned on CPU only.
STACK_BELOW_NUMEL = 16384


# --------------------------------------------------------------------------------------
# The definition: small pure functions (the reference the fast path is tested against)
# --------------------------------------------------------------------------------------


def default_unit_dim(shape: Iterable[int]) -> UnitDim:
    """0 (one unit per output row / filter), or ``None`` if at most one dimension exceeds 1."""
    return 0 if sum(1 for s in shape if s > 1) > 1 else None


def _norm_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_unit_dim(shape: torch.Size, unit_dim: Any, what: str) -> UnitDim:
    if unit_dim is None:
        return None
    if isinstance(unit_dim, bool) or not isinstance(unit_dim, int):
        raise TypeError(f"the unit dim of {what} must be an int or None (the whole tensor is one unit), got {unit_dim!r}")
    if not -len(shape) <= unit_dim < len(shape):
        raise ValueError(
            f"unit dim {unit_dim} is out of range for {what} of shape {tuple(shape)}: "
            f"use 0..{len(shape) - 1}, or None for one unit" if shape else f"{what} is a scalar: its unit dim can only be None"
        )
    return unit_dim % len(shape)


def unitwise_norm(x: torch.Tensor, unit_dim: UnitDim | str = AUTO) -> torch.Tensor:
    """The L2 norm of each unit of ``x`` in float32 (float64 for float64), broadcastable to ``x``.

    ``unit_dim``: the dimension that enumerates units; ``"auto"``: :func:`default_unit_dim`;
    ``None``: the whole tensor is one unit.
    """
    unit_dim = default_unit_dim(x.shape) if unit_dim == AUTO else _check_unit_dim(x.shape, unit_dim, "the tensor")
    dims = [d for d in range(x.ndim) if d != unit_dim]
    if x.ndim > 0 and not dims:  # a vector with unit_dim 0: every element is a unit
        return x.abs().to(_norm_dtype(x.dtype))
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=_norm_dtype(x.dtype))


def agc_scale(grad_norm: torch.Tensor, weight_norm: torch.Tensor, threshold: float, eps: float = AGC_EPS) -> torch.Tensor:
    """The factor AGC multiplies each unit's gradient by: 1 where it does not clip."""
    max_norm = weight_norm.clamp(min=eps).mul_(threshold)
    scale = max_norm / grad_norm.clamp(min=GRAD_NORM_GUARD)
    return scale.masked_fill_(grad_norm < max_norm, 1.0)


def unitwise_clip(
    grad: torch.Tensor, weight: torch.Tensor, threshold: float, eps: float = AGC_EPS, unit_dim: UnitDim | str = AUTO
) -> torch.Tensor:
    """AGC of one gradient, out of place (in the gradient's dtype)."""
    scale = agc_scale(unitwise_norm(grad, unit_dim), unitwise_norm(weight, unit_dim), threshold, eps)
    return (grad * scale).to(grad.dtype)


# --------------------------------------------------------------------------------------
# The fast path: AGC for many parameters at once, in place
# --------------------------------------------------------------------------------------


def _probe_foreach_norm_dtype() -> bool:
    try:  # torch._foreach_norm's dtype= is recent; without it low-precision norms go one by one
        torch._foreach_norm([torch.zeros(1, dtype=torch.float16)], 2, dtype=torch.float32)
        return True
    except (TypeError, RuntimeError):
        return False


_FOREACH_NORM_HAS_DTYPE = _probe_foreach_norm_dtype()


def _whole_norms(tensors: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """One 0-d norm per tensor, in ``dtype`` (default: float32, float64 for float64 tensors)."""
    first = tensors[0].dtype
    target = dtype or _norm_dtype(first)
    if any(t.dtype != first for t in tensors):
        return [n for t in tensors for n in _whole_norms([t], target)]
    if first == target:
        return list(torch._foreach_norm(tensors))
    if _FOREACH_NORM_HAS_DTYPE:
        return list(torch._foreach_norm(tensors, 2, dtype=target))
    return [torch.linalg.vector_norm(t, dtype=target) for t in tensors]


def _norms_into(x: torch.Tensor, dims: tuple[int, ...], out: torch.Tensor) -> None:
    """Norms of ``x`` over ``dims`` written to ``out`` (no dims: every element is a unit)."""
    if not dims:  # vector_norm(dim=()) would reduce every dimension
        out.copy_(x.reshape(out.shape).abs())
    else:
        torch.linalg.vector_norm(x, dim=dims, dtype=None if x.dtype == out.dtype else out.dtype, out=out)


@dataclass(frozen=True)
class _Group:
    """Same-shaped, same-dtype tensors with the same unit layout."""

    indices: tuple[int, ...]  # positions in the caller's list of tensors
    unit_dim: UnitDim
    shape: tuple[int, ...]
    stacked: bool  # norms from one stacked copy (small tensors) or from each tensor
    scale_shape: tuple[int, ...]  # (len(indices), *shape with 1 in every reduced dimension)

    @property
    def units(self) -> int:
        return math.prod(self.scale_shape)

    @property
    def reduce(self) -> tuple[int, ...]:
        return tuple(d for d in range(len(self.shape)) if d != self.unit_dim)


@dataclass(frozen=True)
class _Plan:
    groups: tuple[_Group, ...]
    order: tuple[int, ...]  # tensor positions, group after group
    sizes: tuple[int, ...]  # units per group
    norm_dtype: torch.dtype
    # Buffers reused call after call, per (device, thread): a few floats per unit; see _Workspace.
    workspaces: dict = field(default_factory=dict, compare=False, repr=False)


@functools.lru_cache(maxsize=64)
def _plan(specs: tuple[tuple[torch.Size, torch.dtype, UnitDim], ...]) -> _Plan:
    """Group tensors by (shape, dtype, unit dim). A pure function of the layouts, hence
    cached: a training loop computes it once."""
    keyed: dict[Any, list[int]] = defaultdict(list)
    for i, spec in enumerate(specs):
        keyed[spec].append(i)
    groups = []
    for (shape, _, unit_dim), idx in keyed.items():
        kept = tuple(s if d == unit_dim else 1 for d, s in enumerate(shape))
        stacked = len(idx) > 1 and math.prod(shape) < STACK_BELOW_NUMEL
        groups.append(_Group(tuple(idx), unit_dim, tuple(shape), stacked, (len(idx), *kept)))
    norm_dtype = torch.float64 if any(dtype == torch.float64 for _, dtype, _ in specs) else torch.float32
    order = tuple(i for g in groups for i in g.indices)
    return _Plan(tuple(groups), order, tuple(g.units for g in groups), norm_dtype)


@dataclass
class _Workspace:
    """The unit norms and factors of one plan on one device, with their views cut once:
    cutting a view per tensor every call costs about as much as the arithmetic."""

    weight_norms: torch.Tensor  # (units,), plan order
    grad_norms: torch.Tensor
    scale: torch.Tensor
    weight_outs: list  # per group: its slice of the norms (stacked) or one slice per tensor
    grad_outs: list
    factors: list[torch.Tensor]  # views of scale in plan order, each broadcastable to its gradient

    @classmethod
    def build(cls, plan: _Plan, device: torch.device) -> _Workspace:
        norms = torch.empty(3, sum(plan.sizes), dtype=plan.norm_dtype, device=device)
        outs: list[list] = [[], []]
        for buffer, out in zip(norms[:2], outs):
            for piece, g in zip(buffer.split(plan.sizes), plan.groups):
                k = len(g.indices)
                if g.unit_dim is None:
                    out.append(piece)  # (k,): one norm per tensor
                elif g.stacked:
                    out.append(piece.view(k, -1))  # (k, units): a stacked reduction's output
                else:
                    out.append(list(piece.view(k, -1).unbind(0)))  # k x (units,)
        factors = [f for piece, g in zip(norms[2].split(plan.sizes), plan.groups) for f in piece.view(g.scale_shape).unbind(0)]
        return cls(norms[0], norms[1], norms[2], outs[0], outs[1], factors)


def _workspace(plan: _Plan, device: torch.device) -> _Workspace:
    key = (device, threading.get_ident())  # per thread: two threads never share buffers
    ws = plan.workspaces.get(key)
    if ws is None:
        ws = plan.workspaces[key] = _Workspace.build(plan, device)
    return ws


def _unit_norms_into(tensors: list[torch.Tensor], plan: _Plan, outs: list) -> None:
    """Every unit's norm, written into the workspace in plan order."""
    for g, out in zip(plan.groups, outs):
        members = [tensors[i] for i in g.indices]
        if g.stacked:
            _norms_into(torch.stack(members), tuple(d + 1 for d in g.reduce), out)
        elif g.unit_dim is None:
            torch.stack(_whole_norms(members, out.dtype), out=out)
        else:
            for t, o in zip(members, out):
                _norms_into(t, g.reduce, o)


def _adaptive_clip_same_device(weights: list[torch.Tensor], grads: list[torch.Tensor], plan: _Plan, threshold: float, eps: float):
    ws = _workspace(plan, grads[0].device)
    _unit_norms_into(grads, plan, ws.grad_outs)
    _unit_norms_into(weights, plan, ws.weight_outs)
    # agc_scale, in place in the workspace
    max_norm = ws.weight_norms.clamp_(min=eps).mul_(threshold)
    keep = torch.lt(ws.grad_norms, max_norm)
    torch.div(max_norm, ws.grad_norms.clamp_(min=GRAD_NORM_GUARD), out=ws.scale)
    ws.scale.masked_fill_(keep, 1.0)
    torch._foreach_mul_([grads[i] for i in plan.order], ws.factors)


@functools.lru_cache(maxsize=1024)
def _default_unit_dim_of(shape: torch.Size) -> UnitDim:
    return default_unit_dim(shape)


@torch.no_grad()
def adaptive_clip_grad_(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    clipping_threshold: float,
    eps: float = AGC_EPS,
    unit_dims: Mapping[torch.Tensor, UnitDim] | None = None,
) -> None:
    """AGC in place on the ``.grad`` of every parameter given (those without one are skipped).

    ``unit_dims`` maps a parameter to its unit dimension where :func:`default_unit_dim`
    does not hold (``None``: the whole tensor is one unit).

    Vectorised across parameters: tensors are grouped by (shape, dtype, unit layout); a
    group of small tensors is stacked and reduced by one kernel, a large tensor by a kernel
    of its own; the factors of all units are computed at once and applied by one
    ``torch._foreach_mul_``. The grouping depends on the shapes only and is cached.
    """
    check_positive("clipping_threshold", clipping_threshold)
    check_positive("eps", eps)
    params = [parameters] if isinstance(parameters, torch.Tensor) else parameters
    overrides = {
        id(p): _check_unit_dim(p.shape, dim, f"a parameter of shape {tuple(p.shape)}") for p, dim in (unit_dims or {}).items()
    }
    by_device: dict[torch.device, tuple[list, list, list]] = {}
    for p in params:
        grad = p.grad
        if grad is None:
            continue
        if grad.is_sparse:
            raise ValueError(
                f"AGC needs dense gradients; a parameter of shape {tuple(p.shape)} has a sparse one "
                "(nn.Embedding(sparse=True)?): leave it out of the parameters to clip"
            )
        unit_dim = overrides[id(p)] if id(p) in overrides else _default_unit_dim_of(grad.shape)
        entry = by_device.get(grad.device)
        if entry is None:
            entry = by_device[grad.device] = ([], [], [])
        entry[0].append(p)
        entry[1].append(grad)
        entry[2].append((grad.shape, grad.dtype, unit_dim))
    for weights, grads, specs in by_device.values():
        _adaptive_clip_same_device(weights, grads, _plan(tuple(specs)), clipping_threshold, eps)


# --------------------------------------------------------------------------------------
# Norm clipping with float32 norms
# --------------------------------------------------------------------------------------


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor] | torch.Tensor, clipping_threshold: float) -> torch.Tensor | None:
    """``torch.nn.utils.clip_grad_norm_(parameters, clipping_threshold)`` with float32 norms.

    The same formula, ``G <- G * min(1, lambda / (||G|| + 1e-6))``, but torch takes each
    tensor's norm in the gradient's dtype: an fp16 gradient whose norm exceeds 65504 makes
    torch's total norm inf, and every gradient is multiplied by 0. Returns the total norm
    (0-d, float32 or float64, on the first gradient's device; no host sync), or None without
    gradients.
    """
    check_positive("clipping_threshold", clipping_threshold)
    params = [parameters] if isinstance(parameters, torch.Tensor) else parameters
    by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            by_device[p.grad.device].append(p.grad)
    if not by_device:
        return None
    first = next(iter(by_device))
    norms = [n.to(first) for grads in by_device.values() for n in _whole_norms(grads)]
    total = torch.linalg.vector_norm(torch.stack(norms))
    factor = (clipping_threshold / (total + 1e-6)).clamp_(max=1.0)
    for device, grads in by_device.items():
        torch._foreach_mul_(grads, factor.to(device))
    return total


# --------------------------------------------------------------------------------------
# Models: which parameters, which head, which layout
# --------------------------------------------------------------------------------------


@dataclass
class _ModelScan:
    """What clipping needs from a model, in one pass over its modules."""

    parameters: list[torch.Tensor]  # model.parameters(), in its order
    last_linear: nn.Module | None
    transposed: list[tuple[str, nn.Module]]  # modules whose weight is [in, out/groups, *k]


def _scan(model: nn.Module) -> _ModelScan:
    params, seen, last_linear, transposed = [], set(), None, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = module
        elif isinstance(module, TRANSPOSED_WEIGHT_MODULES):
            transposed.append((name, module))
        for p in module._parameters.values():  # what model.parameters() walks, deduplicated alike
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return _ModelScan(params, last_linear, transposed)


def _classifier(model: nn.Module, last_linear: nn.Module | None) -> list[nn.Module]:
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        get_classifier = getattr(candidate, "get_classifier", None)
        if isinstance(candidate, nn.Module) and callable(get_classifier):
            found = get_classifier()
            found = found if isinstance(found, (tuple, list)) else [found]
            return [m for m in found if isinstance(m, nn.Module)]
    return [last_linear] if last_linear is not None else []


def find_head(model: nn.Module) -> list[nn.Module]:
    """The final classifier(s) of ``model``: by module, never by parameter order.

    The module(s) returned by ``get_classifier()`` where the model has one (timm's
    convention; a tuple for models with a distillation head), otherwise the last
    ``nn.Linear`` registered in the model (its ``modules()`` order). Wrappers (DDP's
    ``.module``, ``torch.compile``'s ``._orig_mod``) are looked through. Empty if none.
    """
    return _classifier(model, _scan(model).last_linear)


def _head_weights(model: nn.Module, head: Any, scan: _ModelScan) -> set[int]:
    """ids of the parameters AGC leaves unclipped: the head's weight."""
    if head is None:
        return set()
    if isinstance(head, str) and head == AUTO:
        modules = _classifier(model, scan.last_linear)
    elif isinstance(head, str):
        try:
            modules = [model.get_submodule(head)]
        except AttributeError:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(
                f"head {head!r} is not a module of {type(model).__name__}: pass a qualified module name "
                f"(its Linear layers: {', '.join(linears) or 'none'}), a module, 'auto' or None"
            ) from None
    elif isinstance(head, nn.Module):
        modules = [head]
    else:
        raise TypeError(f"head must be 'auto', None, a module or its qualified name, got {head!r}")
    excluded = set()
    for module in modules:
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            excluded.add(id(weight))
        elif not (isinstance(head, str) and head == AUTO):
            raise ValueError(f"head {type(module).__name__} has no weight to leave unclipped: pass another module or head=None")
    return excluded


def _unit_dim_overrides(model: nn.Module | None, unit_dims: Mapping[Any, UnitDim] | None) -> dict[torch.Tensor, UnitDim]:
    """``unit_dims`` keyed by parameter (names looked up in ``model``), checked."""
    if not unit_dims:
        return {}
    named = dict(model.named_parameters()) if model is not None else {}
    out = {}
    for key, dim in unit_dims.items():
        if isinstance(key, str):
            if model is None:
                raise ValueError(f"unit_dims names a parameter ({key!r}): pass the model, or key unit_dims by parameter")
            if key not in named:
                raise ValueError(
                    f"unit_dims names {key!r}, which is not a parameter of {type(model).__name__} "
                    f"(names look like {next(iter(named), 'fc.weight')!r}; see model.named_parameters())"
                )
            param = named[key]
        elif isinstance(key, torch.Tensor):
            param = key
        else:
            raise TypeError(f"unit_dims keys must be parameters or their names, got {key!r}")
        label = repr(key) if isinstance(key, str) else f"a parameter of shape {tuple(param.shape)}"
        out[param] = _check_unit_dim(param.shape, dim, label)
    return out


def _check_interpretable(scan: _ModelScan, overrides: Mapping[torch.Tensor, UnitDim], excluded: set[int]) -> None:
    """Refuse to guess the units of weights whose dim 0 is not the output dimension."""
    for name, module in scan.transposed:
        weight = module.weight
        if weight is not None and weight not in overrides and id(weight) not in excluded:
            pname = f"{name}.weight" if name else "weight"
            raise ValueError(
                f"AGC cannot tell the output units of {pname}: {type(module).__name__} stores its weight as "
                f"[in_channels, out_channels/groups, *kernel], so dim 0 is not the output. Pass "
                f"unit_dims={{{pname!r}: 1}} (one unit per output channel; exact for groups=1) or "
                f"unit_dims={{{pname!r}: None}} (the whole kernel as one unit)"
            )


def _as_parameters(target: Any) -> list[torch.Tensor]:
    if isinstance(target, torch.Tensor):
        return [target]
    if isinstance(target, (str, bytes)) or not isinstance(target, Iterable):
        raise TypeError(f"expected a model or an iterable of parameters, got {type(target).__name__}")
    params = list(target)
    for p in params:
        if not isinstance(p, torch.Tensor):
            hint = " (an optimizer's param_groups? use GradientClipper.attach(optimizer))" if isinstance(p, dict) else ""
            raise TypeError(f"expected a model or an iterable of parameters, got an iterable holding {type(p).__name__}{hint}")
    return params


@dataclass(frozen=True, eq=False)
class GradientClipper:
    """A reusable clipper: ``clip(model_or_parameters)`` after backward, before ``optimizer.step()``.

    ``clipping_type``: ``"value"`` | ``"norm"`` | ``"adaptive"``; ``clipping_threshold``:
    lambda. For AGC only: ``eps`` (1e-3); ``head``, the classifier whose weight is left
    unclipped when given a model (``"auto"``: :func:`find_head`; a module or its qualified
    name; ``None``: clip every parameter); ``unit_dims``, parameter (or its name) -> the
    dimension that enumerates its units, or ``None`` for one unit per tensor.
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
        scan = _scan(model) if model is not None else None
        params = scan.parameters if scan is not None else _as_parameters(target)
        if only is not None:
            params = [p for p in params if id(p) in only]
        if self.clipping_type == "value":
            torch.nn.utils.clip_grad_value_(params, self.clipping_threshold)
        elif self.clipping_type == "norm":
            clip_grad_norm_(params, self.clipping_threshold)
        else:
            if model is None and self.head is not None and self.head != AUTO:
                raise ValueError("head= names a module of a model: pass the model itself, not its parameters")
            excluded = _head_weights(model, self.head, scan) if scan is not None else set()
            overrides = _unit_dim_overrides(model, self.unit_dims)
            if scan is not None:
                _check_interpretable(scan, overrides, excluded)
            if excluded:
                params = [p for p in params if id(p) not in excluded]
            adaptive_clip_grad_(params, self.clipping_threshold, self.eps, overrides)

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
    """Clip gradients in place, between ``loss.backward()`` and ``optimizer.step()``.

    The flavours, AGC's layout assumption and the head rule are in the module docstring;
    the arguments are :class:`GradientClipper`'s.
    """
    GradientClipper(clipping_type, clipping_threshold, eps, head, unit_dims)(model_or_parameters)
