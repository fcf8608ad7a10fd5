"""Pieces the figure modules share: the ``+agc`` series suffix and the CIFAR ResNet of a
figure's parameters."""

from __future__ import annotations

from nfstudy.models import cifar_resnet

# A series "norm+agc" trains (or probes) the network "norm" with adaptive gradient clipping.
AGC_SUFFIX = "+agc"


def split_agc(spec: str) -> tuple[str, bool]:
    """``"none+agc"`` -> ``("none", True)``, ``"bn"`` -> ``("bn", False)``; the caller checks the norm."""
    spec = str(spec)
    agc = spec.endswith(AGC_SUFFIX)
    return (spec[: -len(AGC_SUFFIX)] if agc else spec), agc


def make_resnet(params, norm: str, num_classes: int):
    """``cifar_resnet(params.depth, norm, params.init)``; an NF network gets the figure's
    ``nf_skip_gain_init`` where the figure has one (the model's default otherwise)."""
    gain = getattr(params, "nf_skip_gain_init", None)
    extra = {"skip_gain_init": gain} if norm == "nf" and gain is not None else {}
    return cifar_resnet(params.depth, norm, params.init, num_classes=num_classes, **extra)
