"""Probes: what a network's gradients, activations and loss do, collected on device."""

from .gradients import weight_gradients

__all__ = ["weight_gradients"]
