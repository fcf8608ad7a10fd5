"""Model surgery for any torch model, and a stable way to address "layer k".

* :func:`remove_batchnorm` replaces every BatchNorm (1d/2d/3d, SyncBatchNorm) with
  ``nn.Identity`` (the "no BN" ablation of Bjorck et al. 2018).
* :func:`swap_convs_for_ws` replaces every ``nn.Conv2d`` with a
  :class:`~nfstudy.models.layers.ScaledStdConv2d` carrying the same weights.
* :func:`swap_relus_for_scaled` replaces every ``nn.ReLU`` with a gamma-scaled ReLU.

Layer numbering (:func:`weight_layers`): Bjorck et al. speak of "layer 55" of a
ResNet-110. We number the *weight layers on the main path* (``nn.Conv*`` and
``nn.Linear`` modules) 1, 2, ... from the input, in the order the modules are
registered, which for the networks here (nfstudy's CIFAR ResNets, torchvision's
ResNets and VGGs) is the order the data meets them. Projection shortcuts (any module
under a submodule named ``shortcut`` or ``downsample``) are not on the main path and
are not numbered: they are not counted in a ResNet's nominal depth either. So a
ResNet-110 has weight layers 1..110 (stem conv, 108 block convs, classifier) whatever
its normalisation, and torchvision's ResNet-101 has 1..101.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .layers import RELU_GAMMA, ScaledReLU, ScaledStdConv2d

__all__ = [
    "SHORTCUT_NAMES",
    "WeightLayer",
    "get_layer",
    "remove_batchnorm",
    "swap_convs_for_ws",
    "swap_relus_for_scaled",
    "weight_layers",
]

WEIGHT_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
SHORTCUT_NAMES = frozenset({"shortcut", "downsample"})


@dataclass(frozen=True)
class WeightLayer:
    depth: int  # 1-based position from the input
    name: str  # qualified module name, e.g. "layer2.8.branch.conv1"
    module: nn.Module


def weight_layers(model: nn.Module) -> list[WeightLayer]:
    """The main-path weight layers of ``model``, numbered from 1 at the input."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYER_TYPES) and not SHORTCUT_NAMES.intersection(name.split(".")):
            found.append(WeightLayer(len(found) + 1, name, module))
    return found


def get_layer(model: nn.Module, depth: int) -> WeightLayer:
    """Weight layer number ``depth`` (1-based); a clear error names the valid range."""
    layers = weight_layers(model)
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(f"layer must be an int (1..{len(layers)}), got {depth!r}")
    if not 1 <= depth <= len(layers):
        raise IndexError(
            f"layer {depth} does not exist: {type(model).__name__} has weight layers 1..{len(layers)} "
            "(numbered from the input, main path only; see nfstudy.models.weight_layers)"
        )
    return layers[depth - 1]


def _replace_modules(model: nn.Module, should_replace, make_replacement) -> int:
    """Replace, in place, each submodule for which ``should_replace`` holds; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if should_replace(child):
                setattr(parent, child_name, make_replacement(child))
                count += 1
    return count


def remove_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` with ``nn.Identity`` (in place)."""
    _replace_modules(model, lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm), lambda m: nn.Identity())
    return model


def swap_convs_for_ws(model: nn.Module, gain_init: float = 1.0, eps: float = 1e-4) -> nn.Module:
    """Replace every ``nn.Conv2d`` with a Scaled-WS conv holding the same weights (in place)."""
    _replace_modules(
        model,
        lambda m: type(m) is nn.Conv2d,
        lambda m: ScaledStdConv2d.from_conv(m, gain_init=gain_init, eps=eps),
    )
    return model


def swap_relus_for_scaled(model: nn.Module, gamma: float = RELU_GAMMA) -> nn.Module:
    """Replace every ``nn.ReLU`` module with ``gamma * relu`` (in place).

    Only ReLU *modules* are found; a ``F.relu`` call inside a ``forward`` is not.
    """
    _replace_modules(model, lambda m: type(m) is nn.ReLU, lambda m: ScaledReLU(gamma))
    return model
