"""Models: CIFAR ResNets with norm = bn | none | ws | nf | nf_no_ws, NF layers, surgery, and
the registry of model families a figure can build (:func:`build_model`)."""

from .init import INITS, PAPER_INIT, initialize
from .layers import ACTIVATION_GAMMA, RELU_GAMMA, ScaledReLU, ScaledStdConv2d
from .registry import DEFAULT_MODEL, MODELS, build_model, check_model
from .resnet import NF_NORMS, NORMS, BasicBlock, CifarResNet, GlobalAvgPool, NFBlock, ResNetConfig, cifar_resnet, create_model
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
    "DEFAULT_MODEL",
    "INITS",
    "MODELS",
    "NF_NORMS",
    "NORMS",
    "PAPER_INIT",
    "RELU_GAMMA",
    "BasicBlock",
    "CifarResNet",
    "GlobalAvgPool",
    "NFBlock",
    "ResNetConfig",
    "ScaledReLU",
    "ScaledStdConv2d",
    "WeightLayer",
    "build_model",
    "check_model",
    "cifar_resnet",
    "create_model",
    "get_layer",
    "initialize",
    "remove_batchnorm",
    "swap_convs_for_ws",
    "swap_relus_for_scaled",
    "weight_layers",
]
