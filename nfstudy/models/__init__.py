"""Models: CIFAR ResNets with norm = bn | none | ws | nf, NF layers, and surgery."""

from .init import INITS, PAPER_INIT, initialize
from .layers import ACTIVATION_GAMMA, RELU_GAMMA, ScaledReLU, ScaledStdConv2d
from .resnet import NORMS, BasicBlock, CifarResNet, NFBlock, ResNetConfig, cifar_resnet, create_model
from .surgery import (
    WeightLayer,
    get_layer,
    remove_batchnorm,
    swap_convs_for_ws,
    swap_relus_for_scaled,
    weight_layers,
)

__all__ = [
    "ACTIVATION_GAMMA",
    "INITS",
    "NORMS",
    "PAPER_INIT",
    "RELU_GAMMA",
    "BasicBlock",
    "CifarResNet",
    "NFBlock",
    "ResNetConfig",
    "ScaledReLU",
    "ScaledStdConv2d",
    "WeightLayer",
    "cifar_resnet",
    "create_model",
    "get_layer",
    "initialize",
    "remove_batchnorm",
    "swap_convs_for_ws",
    "swap_relus_for_scaled",
    "weight_layers",
]
