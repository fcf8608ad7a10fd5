"""Which network a figure builds: one registry entry per model family, one builder.

* ``cifar_resnet`` (the default): the paper's network, He et al.'s CIFAR ResNet of depth
  6n+2 (Bjorck et al. use ResNet-110), norm bn | none | ws | nf; see
  :func:`~nfstudy.models.resnet.cifar_resnet`.
* ``torchvision_resnet``: torchvision's ImageNet ResNet (``torchvision.models.resnet<depth>``,
  untrained, ``num_classes`` outputs), as the public reproduction of Bjorck et al.
  (docs/papers.md#bjorck-reproduction) ran it on 32x32 CIFAR-10 with depth 101. Norm ``bn`` keeps its
  BatchNorms; ``none`` replaces every one with ``nn.Identity`` by
  :func:`~nfstudy.models.surgery.remove_batchnorm` (the reproduction's ``disable_bn``),
  after initialisation, so both start from the same conv weights. The ImageNet stem
  (7x7 stride-2 conv, max-pool) is kept, as the reproduction kept it: a 32x32 image is
  1x1 in the last stage.

Initialisation: ``init`` is applied to every model with
:func:`~nfstudy.models.init.initialize`. ``kaiming_fan_out`` is torchvision's own ResNet
scheme (convs ``kaiming_normal_(mode="fan_out")``, Linear PyTorch's default, BatchNorm
1 / 0), the one the reproduction used for its Figs 2, 3, 5 and 6; its Fig 1 used
``xavier_uniform`` (conv and linear weights). So the reproduction's figures are
``-p model torchvision_resnet -p depth 101`` plus, per figure: Fig 1 ``-p init
xavier_uniform`` (the figures' default, ``PAPER_INIT``); Figs 2, 3, 5, 6 ``-p init
kaiming_fan_out``.

Layer numbers (:func:`~nfstudy.models.surgery.weight_layers`) of torchvision's
ResNet-101: stem conv 1, ``layer1`` 2..10, ``layer2`` 11..22, ``layer3`` 23..91,
``layer4`` 92..100, fc 101 (three convs a bottleneck block: 1x1, 3x3, 1x1; downsample
convs are not numbered). Layer 55 is ``layer3.10.conv3`` (1x1); the reproduction's Fig 5
code counted the stem conv as 2, so its layers 5, 17, ..., 101 are our 4, 16, ..., 100
and its "layer 55" (the middle of the network, as the paper's) would be our 54,
``layer3.10.conv2`` (3x3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..params import check_choice
from .init import INITS, initialize
from .resnet import NORMS, PAPER_DEPTHS, cifar_resnet
from .surgery import remove_batchnorm

__all__ = ["DEFAULT_MODEL", "MODELS", "ModelSpec", "build_model", "check_model"]

DEFAULT_MODEL = "cifar_resnet"


@dataclass(frozen=True)
class ModelSpec:
    """A model family: the norms and depths it can be built with, and how."""

    norms: tuple[str, ...]
    depths: str  # the valid depths, in words, for error messages
    valid_depth: Callable[[int], bool]
    build: Callable[..., nn.Module]  # build(depth, norm, init, num_classes, **extra)


def _is_cifar_depth(depth: int) -> bool:
    return depth >= 8 and (depth - 2) % 6 == 0


def _cifar_resnet(depth: int, norm: str, init: str, num_classes: int, **extra) -> nn.Module:
    return cifar_resnet(depth, norm, init, num_classes=num_classes, **extra)


TORCHVISION_RESNET_DEPTHS = (18, 34, 50, 101, 152)  # torchvision.models.resnet<depth>


def _torchvision_resnet(depth: int, norm: str, init: str, num_classes: int) -> nn.Module:
    from ..compat import import_torchvision

    model = getattr(import_torchvision().models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    initialize(model, init)
    return remove_batchnorm(model) if norm == "none" else model


MODELS: dict[str, ModelSpec] = {
    "cifar_resnet": ModelSpec(
        norms=NORMS,
        depths=f"6n+2 with n >= 1, e.g. {', '.join(map(str, PAPER_DEPTHS))}",
        valid_depth=_is_cifar_depth,
        build=_cifar_resnet,
    ),
    "torchvision_resnet": ModelSpec(
        norms=("bn", "none"),
        depths=f"one of {', '.join(map(str, TORCHVISION_RESNET_DEPTHS))} (the public reproduction: 101)",
        valid_depth=lambda d: d in TORCHVISION_RESNET_DEPTHS,
        build=_torchvision_resnet,
    ),
}


def check_model(name: str, depth: int, norms=()) -> ModelSpec:
    """The spec of model ``name``; errors name the valid models, depths and norms."""
    check_choice("model", name, MODELS)
    spec = MODELS[name]
    if isinstance(depth, bool) or not isinstance(depth, int) or not spec.valid_depth(depth):
        raise ValueError(f"model {name}: depth must be {spec.depths}, got {depth!r} (pass it with -p depth)")
    bad = list(dict.fromkeys(n for n in norms if n not in spec.norms))
    if bad:
        raise ValueError(
            f"model {name} supports the norms {', '.join(spec.norms)} only, got {', '.join(map(repr, bad))}: "
            'drop those series (e.g. -p series \'["bn", "none"]\')'
        )
    return spec


def build_model(name: str, depth: int, norm: str, init: str = "kaiming_fan_out", num_classes: int = 10, **extra) -> nn.Module:
    """Model ``name`` (:data:`MODELS`) of ``depth`` with ``norm`` and ``init``; ``extra``
    goes to the builder (``cifar_resnet`` only: ``skip_gain_init``, ``alpha``, ...)."""
    check_choice("norm", norm, NORMS)
    check_choice("init", init, INITS)
    spec = check_model(name, depth, [norm])
    return spec.build(depth, norm, init, num_classes, **extra)
