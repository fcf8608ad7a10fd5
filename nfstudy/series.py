"""Series names: how a table's ``series`` column names a network, its clipping and its run.

A series is ``<norm>[+agc][@<tag>]``: ``"bn"``, ``"none+agc"``, ``"bn@lr=0.1"``. ``norm`` is
the network's normalisation (``bn | none | ws | nf``...), ``+agc`` (:data:`AGC_SUFFIX`) marks
a network trained with adaptive gradient clipping (Brock et al. 2021), and the tag after
``@`` tells apart runs of the same network (Figure 1: its learning rate). The figures build
names with :func:`series_name` and the plots and figures take them apart with
:func:`split_series` and :func:`split_agc`; nothing else writes or parses the format.
"""

from __future__ import annotations

from .constants import AGC_SUFFIX

__all__ = ["AGC_SUFFIX", "TAG", "network_of", "series_name", "split_agc", "split_series"]

TAG = "@"  # separates the network from the tag of its run


def series_name(norm: str, agc: bool = False, tag: str = "") -> str:
    """``("none", True, "lr=0.1")`` -> ``"none+agc@lr=0.1"``, ``("bn",)`` -> ``"bn"``."""
    return f"{norm}{AGC_SUFFIX if agc else ''}" + (f"{TAG}{tag}" if tag else "")


def split_series(series) -> tuple[str, str]:
    """``"none+agc@lr=0.1"`` -> ``("none+agc", "lr=0.1")``, ``"bn"`` -> ``("bn", "")``."""
    network, _, tag = str(series).partition(TAG)
    return network, tag


def network_of(series) -> str:
    """``"none+agc@lr=0.1"`` -> ``"none+agc"``: the network and its clipping, without the tag."""
    return split_series(series)[0]


def split_agc(network) -> tuple[str, bool]:
    """``"none+agc"`` -> ``("none", True)``, ``"bn"`` -> ``("bn", False)``; the caller checks the norm."""
    network = str(network)
    agc = network.endswith(AGC_SUFFIX)
    return (network[: -len(AGC_SUFFIX)] if agc else network), agc
