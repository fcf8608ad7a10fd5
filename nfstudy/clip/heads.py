"""What clipping needs from a model: its parameters, its classifier head, its weight layouts.

The head. AGC leaves the final classifier's weight unclipped, as Brock et al. 2021 do
(section 4.1); its bias is clipped, as in the official code. The classifier is found by
*module*, never by parameter order (timm's training script takes "the last two
parameters", which is the wrong tensors when anything is registered after the head): the
module(s) returned by the model's ``get_classifier()`` where it has one (timm's
convention), otherwise the last ``nn.Linear`` registered in the model.

Layouts. Weights whose dim 0 is not the output dimension (``ConvTranspose``: ``[in,
out/groups, *k]``) break AGC's layout assumption (:func:`nfstudy.clip.agc.unitwise_norm`);
given a model, AGC refuses to guess for them and asks for ``unit_dims``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .agc import AUTO, UnitDim, check_unit_dim

__all__ = ["find_head"]

# Weights stored as [in, out/groups, *k]: dim 0 is not the output dimension.
TRANSPOSED_WEIGHT_MODULES = (nn.modules.conv._ConvTransposeNd,)


@dataclass
class ModelScan:
    """What clipping needs from a model, in one pass over its modules."""

    parameters: list[torch.Tensor]  # model.parameters(), in its order
    last_linear: nn.Module | None
    transposed: list[tuple[str, nn.Module]]  # modules whose weight is [in, out/groups, *k]


def scan(model: nn.Module) -> ModelScan:
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
    return ModelScan(params, last_linear, transposed)


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
    return _classifier(model, scan(model).last_linear)


def head_weights(model: nn.Module, head: Any, model_scan: ModelScan) -> set[int]:
    """ids of the parameters AGC leaves unclipped: the weight of ``head`` ("auto": :func:`find_head`;
    a module or its qualified name; None: nothing)."""
    if head is None:
        return set()
    if isinstance(head, str) and head == AUTO:
        modules = _classifier(model, model_scan.last_linear)
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


def unit_dim_overrides(model: nn.Module | None, unit_dims: Mapping[Any, UnitDim] | None) -> dict[torch.Tensor, UnitDim]:
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
        out[param] = check_unit_dim(param.shape, dim, label)
    return out


def check_interpretable(model_scan: ModelScan, overrides: Mapping[torch.Tensor, UnitDim], excluded: set[int]) -> None:
    """Refuse to guess the units of weights whose dim 0 is not the output dimension."""
    for name, module in model_scan.transposed:
        weight = module.weight
        if weight is not None and weight not in overrides and id(weight) not in excluded:
            pname = f"{name}.weight" if name else "weight"
            raise ValueError(
                f"AGC cannot tell the output units of {pname}: {type(module).__name__} stores its weight as "
                f"[in_channels, out_channels/groups, *kernel], so dim 0 is not the output. Pass "
                f"unit_dims={{{pname!r}: 1}} (one unit per output channel; exact for groups=1) or "
                f"unit_dims={{{pname!r}: None}} (the whole kernel as one unit)"
            )


def as_parameters(target: Any) -> list[torch.Tensor]:
    """``target`` (a tensor or an iterable of them) as a list of parameters, or a TypeError."""
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
