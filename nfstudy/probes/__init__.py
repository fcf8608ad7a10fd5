"""Probes: what a network's gradients, activations and loss do, collected on device."""

from .activations import (
    CHANNEL_STATISTICS,
    LAYER_STATISTICS,
    ActivationProbe,
    HookPoint,
    activation_statistics,
    channel_moments,
    hook_points,
)
from .gradients import weight_gradients
from .logits import DominantClass, LogitGradients, dominant_class, epoch_logit_gradients, logit_gradients

__all__ = [
    "CHANNEL_STATISTICS",
    "LAYER_STATISTICS",
    "ActivationProbe",
    "DominantClass",
    "HookPoint",
    "LogitGradients",
    "activation_statistics",
    "channel_moments",
    "dominant_class",
    "epoch_logit_gradients",
    "hook_points",
    "logit_gradients",
    "weight_gradients",
]
