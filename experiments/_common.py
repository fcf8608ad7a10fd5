"""Pieces the figure modules share: the ``+agc`` series suffix and the CIFAR ResNet of a
figure's parameters."""

from __future__ import annotations

import pandas as pd

from nfstudy.data import DATASETS
from nfstudy.models import INITS, NF_NORMS, NORMS, cifar_resnet
from nfstudy.params import AGC_SUFFIX, check_choice, check_positive


def split_agc(spec: str) -> tuple[str, bool]:
    """``"none+agc"`` -> ``("none", True)``, ``"bn"`` -> ``("bn", False)``; the caller checks the norm."""
    spec = str(spec)
    agc = spec.endswith(AGC_SUFFIX)
    return (spec[: -len(AGC_SUFFIX)] if agc else spec), agc


def make_resnet(params, norm: str, num_classes: int):
    """``cifar_resnet(params.depth, norm, params.init)``; an NF network gets the figure's
    ``nf_skip_gain_init`` where the figure has one (the model's default otherwise)."""
    gain = getattr(params, "nf_skip_gain_init", None)
    extra = {"skip_gain_init": gain} if norm in NF_NORMS and gain is not None else {}
    return cifar_resnet(params.depth, norm, params.init, num_classes=num_classes, **extra)


def check_network_params(params, *, norm_series: bool = True) -> None:
    """The checks every figure's ``Params`` share, each error naming the valid choices:
    ``dataset``, ``init``, ``depth`` and, where the figure has them, ``batch_size``,
    ``networks`` and ``image_size`` (32 with CIFAR-10); with ``norm_series`` every entry of
    ``series`` must be a norm."""
    check_choice("dataset", params.dataset, DATASETS)
    check_choice("init", params.init, INITS)
    check_positive("depth", params.depth, integer=True)
    for name in ("batch_size", "networks", "image_size"):
        if hasattr(params, name):
            check_positive(name, getattr(params, name), integer=True)
    if params.dataset == "cifar10" and getattr(params, "image_size", 32) != 32:
        raise ValueError(f"CIFAR-10 images are 32x32: image_size must be 32 with dataset cifar10, got {params.image_size}")
    if norm_series:
        for s in params.series:
            check_choice("series", s, NORMS)


def history_table(runs: list[tuple[dict, pd.DataFrame]]) -> pd.DataFrame:
    """One tidy history of several training runs: each run's ``keys`` (series, lr, ...) as
    leading columns of its per-epoch ``history``. A run that diverged in its first epoch
    has no rows; if none has any, the columns are still there."""
    frames = [pd.DataFrame(keys, index=history.index).join(history) for keys, history in runs]
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
