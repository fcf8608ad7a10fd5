"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", section 4.2) with
BatchNorm kept, removed, or replaced by Normalizer-Free machinery.

Depth is 6n + 2: a 3x3 stem conv, three stages of n basic blocks (16, 32, 64 channels;
the second and third stages halve the resolution in their first block), global average
pooling and a linear classifier. ResNet-20/56/110 are n = 3/9/18.

``norm`` selects the variant, i.e. the layers its blocks are built from (:data:`NORM_LAYERS`;
the blocks take them as callables, timm's ``conv_layer``/``norm_layer``/``act_layer``):

* ``"bn"``: the original, post-activation block ``relu(bn(conv(relu(bn(conv(x))))) + x)``
  with the parameter-free "option A" shortcut (subsample, zero-pad new channels).
* ``"none"``: Bjorck et al.'s ablation, the same network with every BatchNorm removed
  (the ``bn*`` modules are ``nn.Identity``; no biases are added).
* ``"ws"``: ``"none"`` with Scaled Weight-Standardised convs (what
  :func:`~nfstudy.models.surgery.swap_convs_for_ws` does to any model).
* ``"nf"``: the NF-ResNet of Brock, De, Smith (ICLR 2021), docs/papers.md#nf-resnet-block:
  pre-activation blocks ``h + alpha * g * f(h / beta)`` with scaled-WS convs (with bias),
  gamma-scaled ReLUs, alpha = 0.2, ``beta = sqrt(Var(h))`` from the analytic recursion
  ``Var(h_{i+1}) = Var(h_i) + alpha^2`` reset to 1 after the first (transition) block of
  each stage, whose shortcut (a 1x1 WS conv where the shape changes) takes the
  pre-activated, scaled input; ``g`` is a learnable skip gain (SkipInit), initialised to
  ``skip_gain_init`` (0 by default). A scaled ReLU precedes pooling.
* ``"nf_no_ws"``: the control of Brock, De, Smith's Fig. 2: the same NF-ResNet *without*
  Scaled WS: plain convs (with bias) that keep their initialisation (He init in that
  figure) and plain ReLUs. Brock et al. write Scaled WS as
  ``W_hat = gamma * (W - mean) / (std * sqrt(N))``, the nonlinearity's gain ``gamma`` inside
  the standardisation; removing it leaves the gain to the init (He: ``sqrt(2)`` for a ReLU),
  so the activations are not rescaled. Its filters have non-zero empirical means, which
  turn the positive mean of the ReLU into a channel mean shift.

Every variant numbers its main-path weight layers 1..depth the same way (see
:func:`~nfstudy.models.surgery.weight_layers`), so "layer 55" means the same position in
all of them, and exposes each block's residual branch as the submodule ``branch``.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..params import check_choice
from .init import INITS, initialize
from .layers import RELU_GAMMA, ScaledReLU, ScaledStdConv2d
from .surgery import WeightLayer, get_layer, weight_layers

__all__ = [
    "NF_NORMS",
    "NORMS",
    "NORM_LAYERS",
    "BasicBlock",
    "CifarResNet",
    "GlobalAvgPool",
    "Layers",
    "NFBlock",
    "ResNetConfig",
    "cifar_resnet",
    "create_model",
    "layers_for",
]

PAPER_DEPTHS = (20, 32, 44, 56, 110)  # He et al. 2016, Table 6

ConvLayer = Callable[..., nn.Module]  # conv_layer(in_channels, out_channels, kernel_size, stride=, padding=, bias=)


@dataclass(frozen=True)
class Layers:
    """The layers one variant is built from, passed to the stem and the blocks as callables."""

    conv_layer: ConvLayer
    norm_layer: Callable[[int], nn.Module]  # norm_layer(channels)
    act_layer: Callable[[], nn.Module]
    nf: bool  # NFBlocks (pre-activation, skip gain, biased convs) instead of BasicBlocks
    ws: bool  # Scaled WS convs: they carry the nonlinearity's gain gamma themselves


_RELU = functools.partial(nn.ReLU, inplace=True)

# norm -> its layers; layers_for binds ResNetConfig's ws_eps to the Scaled WS convs and gamma to
# the NF activations.
NORM_LAYERS: dict[str, Layers] = {
    "bn": Layers(nn.Conv2d, nn.BatchNorm2d, _RELU, nf=False, ws=False),
    "none": Layers(nn.Conv2d, nn.Identity, _RELU, nf=False, ws=False),
    "ws": Layers(ScaledStdConv2d, nn.Identity, _RELU, nf=False, ws=True),
    "nf": Layers(ScaledStdConv2d, nn.Identity, ScaledReLU, nf=True, ws=True),
    "nf_no_ws": Layers(nn.Conv2d, nn.Identity, ScaledReLU, nf=True, ws=False),
}
NORMS = tuple(NORM_LAYERS)  # ("bn", "none", "ws", "nf", "nf_no_ws")
NF_NORMS = tuple(n for n, layers in NORM_LAYERS.items() if layers.nf)  # the norms built from NFBlocks


@dataclass(frozen=True)
class ResNetConfig:
    depth: int = 110
    norm: str = "bn"
    init: str = "kaiming_fan_out"
    num_classes: int = 10
    in_channels: int = 3
    widths: tuple[int, int, int] = (16, 32, 64)
    alpha: float = 0.2  # NF: residual branch scale
    skip_gain_init: float = 0.0  # NF: SkipInit gain at initialisation
    gamma: float = RELU_GAMMA  # NF: activation scale
    ws_eps: float = 1e-4  # scaled WS: guard on N * var

    def __post_init__(self):
        check_choice("norm", self.norm, NORMS)
        check_choice("init", self.init, INITS)
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (e.g. {', '.join(map(str, PAPER_DEPTHS))}), got {self.depth!r}")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


def layers_for(config: ResNetConfig) -> Layers:
    """:data:`NORM_LAYERS` of ``config.norm`` with the config's constants bound: the WS eps,
    and gamma in the NF activations (1 without Scaled WS: the init carries the ReLU's gain)."""
    layers = NORM_LAYERS[config.norm]
    conv, act = layers.conv_layer, layers.act_layer
    if layers.ws:
        conv = functools.partial(conv, eps=config.ws_eps)
    if layers.nf:
        act = functools.partial(act, config.gamma if layers.ws else 1.0)
    return Layers(conv, layers.norm_layer, act, nf=layers.nf, ws=layers.ws)


class ShortcutA(nn.Module):
    """He et al.'s option A: subsample by the stride, zero-pad the extra channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels)) if self.extra_channels else x


class GlobalAvgPool(nn.Module):
    """The mean over height and width: ``[N, C, H, W] -> [N, C]``.

    What ``nn.AdaptiveAvgPool2d(1)`` followed by ``flatten(1)`` computes, and on a CPU by the
    same kernel (ATen's adaptive_avg_pool2d calls ``mean`` over H and W for an output of 1;
    tests/test_models.py holds the two bitwise equal). Written as the mean because under
    ``torch.func.vmap`` (fused training) with a channels_last input adaptive_avg_pool2d
    restrides its output with ``as_strided_``, which vmap has no batching rule for: it falls
    back to a slow loop over the stacked runs (seen on the first GPU session).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class BasicBlock(nn.Module):
    """``act(branch(x) + shortcut(x))``, branch = conv-norm-act-conv-norm (bias-free 3x3 convs)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] = _RELU,
    ):
        super().__init__()
        self.branch = nn.Sequential(
            OrderedDict(
                conv1=conv_layer(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                bn1=norm_layer(out_channels),
                relu1=act_layer(),
                conv2=conv_layer(out_channels, out_channels, 3, stride=1, padding=1, bias=False),
                bn2=norm_layer(out_channels),
            )
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()
        self.relu = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class NFBlock(nn.Module):
    """``shortcut + alpha * skip_gain * branch(act(h) / beta)`` (pre-activation NF block)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        alpha: float,
        beta: float,
        skip_gain_init: float,
        conv_layer: ConvLayer = ScaledStdConv2d,  # Scaled WS, or nn.Conv2d (the no-WS control)
        act_layer: Callable[[], nn.Module] = ScaledReLU,
    ):
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.preact = act_layer()
        self.branch = nn.Sequential(
            OrderedDict(
                conv1=conv_layer(in_channels, out_channels, 3, stride=stride, padding=1),
                relu1=act_layer(),
                conv2=conv_layer(out_channels, out_channels, 3, padding=1),
            )
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_layer(in_channels, out_channels, 1, stride=stride)
        else:
            self.shortcut = None
        self.skip_gain = nn.Parameter(torch.tensor(float(skip_gain_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gamma * relu is positively homogeneous, so act(x) / beta == act(x / beta).
        out = self.preact(x) * (1.0 / self.beta)
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        return shortcut + self.branch(out) * (self.alpha * self.skip_gain)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta:.4f}"


class CifarResNet(nn.Module):
    """A CIFAR ResNet of depth 6n+2; see the module docstring for the variants."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        c = config
        w1, w2, w3 = c.widths
        layers = layers_for(c)
        nf = layers.nf
        self.conv1 = layers.conv_layer(c.in_channels, w1, 3, padding=1, bias=nf)
        self.bn1 = layers.norm_layer(w1)
        # NF blocks pre-activate their input, so the stem ends at the conv there.
        self.relu = nn.Identity() if nf else layers.act_layer()

        expected_var = 1.0  # NF: analytic Var(h) at the input of the next block
        in_channels = w1
        for stage, (width, stride) in enumerate(zip(c.widths, (1, 2, 2)), start=1):
            blocks = []
            for index in range(c.blocks_per_stage):
                s = stride if index == 0 else 1
                if nf:
                    blocks.append(
                        NFBlock(
                            in_channels,
                            width,
                            s,
                            alpha=c.alpha,
                            beta=expected_var**0.5,
                            skip_gain_init=c.skip_gain_init,
                            conv_layer=layers.conv_layer,
                            act_layer=layers.act_layer,
                        )
                    )
                    if index == 0:
                        expected_var = 1.0  # the transition block's output restarts the recursion
                    expected_var += c.alpha**2
                else:
                    blocks.append(
                        BasicBlock(
                            in_channels,
                            width,
                            s,
                            conv_layer=layers.conv_layer,
                            norm_layer=layers.norm_layer,
                            act_layer=layers.act_layer,
                        )
                    )
                in_channels = width
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.final_act = layers.act_layer() if nf else nn.Identity()
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(w3, c.num_classes)
        initialize(self, c.init)

    @property
    def name(self) -> str:
        return f"ResNet-{self.config.depth} ({self.config.norm})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.pool(self.final_act(x))
        return self.fc(x)

    def weight_layers(self) -> list[WeightLayer]:
        """Main-path weight layers 1..depth from the input (stem, block convs, fc)."""
        return weight_layers(self)

    def layer(self, depth: int) -> nn.Module:
        """The module of weight layer ``depth`` (1-based, from the input)."""
        return get_layer(self, depth).module

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """``(name, block)`` for every residual block, from the input."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, (BasicBlock, NFBlock))]


def cifar_resnet(depth: int = 110, norm: str = "bn", init: str = "kaiming_fan_out", **kwargs) -> CifarResNet:
    """A CIFAR ResNet; ``kwargs`` go to :class:`ResNetConfig` (num_classes, alpha, ...)."""
    return CifarResNet(ResNetConfig(depth=depth, norm=norm, init=init, **kwargs))


def create_model(arch: str, norm: str = "bn", init: str = "kaiming_fan_out", **kwargs) -> CifarResNet:
    """A model by name: ``"resnet<depth>"`` with depth 6n+2 (resnet20, resnet56, resnet110, ...)."""
    match = re.fullmatch(r"resnet(\d+)", str(arch))
    if not match or (int(match.group(1)) - 2) % 6 or int(match.group(1)) < 8:
        valid = ", ".join(f"resnet{d}" for d in PAPER_DEPTHS)
        raise ValueError(f"unknown model {arch!r}: choose one of {valid} (any resnet<6n+2>)")
    return cifar_resnet(int(match.group(1)), norm=norm, init=init, **kwargs)
