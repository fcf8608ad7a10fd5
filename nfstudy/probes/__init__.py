"""Probes: what a network's gradients, activations and loss do, collected on device."""

from .activations import (
    CHANNEL_STATISTICS,
    LAYER_STATISTICS,
    ActivationProbe,
    ChannelMoments,
    HookPoint,
    activation_statistics,
    channel_moments,
    hook_points,
)
from .gradients import weight_gradients
from .landscape import (
    DIVERGENCE_THRESHOLD,
    ONSET_OUTCOMES,
    DivergenceOnset,
    LandscapeProbe,
    UpdateDirection,
    channel_moments_along_update,
    divergence_onset,
    relative_loss_along_update,
    relative_loss_during_training,
)
from .logits import DominantClass, LogitGradients, dominant_class, epoch_logit_gradients, logit_gradients

__all__ = [
    "CHANNEL_STATISTICS",
    "DIVERGENCE_THRESHOLD",
    "LAYER_STATISTICS",
    "ONSET_OUTCOMES",
    "ActivationProbe",
    "ChannelMoments",
    "DivergenceOnset",
    "DominantClass",
    "HookPoint",
    "LandscapeProbe",
    "LogitGradients",
    "UpdateDirection",
    "activation_statistics",
    "channel_moments",
    "channel_moments_along_update",
    "divergence_onset",
    "dominant_class",
    "epoch_logit_gradients",
    "hook_points",
    "logit_gradients",
    "relative_loss_along_update",
    "relative_loss_during_training",
    "weight_gradients",
]
