"""AGC for many parameters at once: an optimisation of :func:`nfstudy.clip.agc.adaptive_clip_grad_`.

The same arithmetic as the per-tensor definition in :mod:`~nfstudy.clip.agc` (tests/test_clip.py
checks they agree), with fewer kernels: tensors are grouped by (shape, dtype, unit layout);
a group of small tensors is stacked and reduced by one kernel, a large tensor by a kernel
of its own; the factors of all units are computed at once, into buffers reused call after
call, and applied by one ``torch._foreach_mul_``. The grouping depends on the shapes only
and is cached, so a training loop plans once. Where it pays, and by how much, is measured
by ``benchmarks/bench_clip.py`` (numbers in ``benchmarks/README.md``).
"""

from __future__ import annotations

import functools
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..params import check_positive
from .agc import AGC_EPS, GRAD_NORM_GUARD, UnitDim, check_dense, check_unit_dim, default_unit_dim, norm_dtype

__all__ = ["STACK_BELOW_NUMEL", "foreach_adaptive_clip_grad_"]

# Same-shaped tensors below this many elements are stacked and reduced in one kernel; larger
# ones get a kernel each. Stacking costs two extra passes over the data, a kernel costs a
# launch (on CPU about as long as a pass over ~10^4 floats). Chosen by the sweep in
# benchmarks/bench_clip.py on ResNet-110 (see benchmarks/README.md); tuned on CPU only.
STACK_BELOW_NUMEL = 16384


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
    target = dtype or norm_dtype(first)
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
    dtype = torch.float64 if any(dtype == torch.float64 for _, dtype, _ in specs) else torch.float32
    order = tuple(i for g in groups for i in g.indices)
    return _Plan(tuple(groups), order, tuple(g.units for g in groups), dtype)


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
    # agc.agc_scale, in place in the workspace
    max_norm = ws.weight_norms.clamp_(min=eps).mul_(threshold)
    keep = torch.lt(ws.grad_norms, max_norm)
    torch.div(max_norm, ws.grad_norms.clamp_(min=GRAD_NORM_GUARD), out=ws.scale)
    ws.scale.masked_fill_(keep, 1.0)
    torch._foreach_mul_([grads[i] for i in plan.order], ws.factors)


@functools.lru_cache(maxsize=1024)
def _default_unit_dim_of(shape: torch.Size) -> UnitDim:
    return default_unit_dim(shape)


@torch.no_grad()
def foreach_adaptive_clip_grad_(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    clipping_threshold: float,
    eps: float = AGC_EPS,
    unit_dims: Mapping[torch.Tensor, UnitDim] | None = None,
) -> None:
    """:func:`~nfstudy.clip.agc.adaptive_clip_grad_` (same arguments, same result), vectorised
    across parameters. With a float64 tensor present, every norm is taken in float64."""
    check_positive("clipping_threshold", clipping_threshold)
    check_positive("eps", eps)
    params = [parameters] if isinstance(parameters, torch.Tensor) else parameters
    overrides = {id(p): check_unit_dim(p.shape, dim, f"a parameter of shape {tuple(p.shape)}") for p, dim in (unit_dims or {}).items()}
    by_device: dict[torch.device, tuple[list, list, list]] = {}
    for p in params:
        grad = p.grad
        if grad is None:
            continue
        check_dense(p, grad)
        unit_dim = overrides[id(p)] if id(p) in overrides else _default_unit_dim_of(grad.shape)
        entry = by_device.get(grad.device)
        if entry is None:
            entry = by_device[grad.device] = ([], [], [])
        entry[0].append(p)
        entry[1].append(grad)
        entry[2].append((grad.shape, grad.dtype, unit_dim))
    for weights, grads, specs in by_device.values():
        _adaptive_clip_same_device(weights, grads, _plan(tuple(specs)), clipping_threshold, eps)
