"""Probes: what a network's gradients, activations and loss do, collected on device."""

from .gradients import weight_gradients
from .landscape import (
    DIVERGENCE_THRESHOLD,
    ChannelMoments,
    LandscapeProbe,
    UpdateDirection,
    channel_moments_along_update,
    relative_loss_along_update,
    relative_loss_during_training,
)

__all__ = [
    "DIVERGENCE_THRESHOLD",
    "ChannelMoments",
    "LandscapeProbe",
    "UpdateDirection",
    "channel_moments_along_update",
    "relative_loss_along_update",
    "relative_loss_during_training",
    "weight_gradients",
]
