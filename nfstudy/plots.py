"""Shared plotting style: series names, colours, and small helpers.

Each figure's own drawing lives in ``plot`` of each figure module (``experiments/<figure>.py``); this module keeps
every figure consistent (BN is always blue, no-BN red, NF green, ...).
"""

from __future__ import annotations

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "module://ipykernel")):
    matplotlib.use("Agg")  # headless unless a notebook already chose its inline backend

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from .series import split_agc, split_series  # noqa: E402

__all__ = ["SERIES_COLORS", "SERIES_LABELS", "figure", "series_color", "series_label", "series_linestyle", "style"]

# Series names used in every CSV (the ``series`` column) and how figures show them.
SERIES_LABELS = {
    "bn": "BN",
    "none": "no BN",
    "ws": "no BN + scaled WS",
    "nf": "NF-ResNet",
    "none+agc": "no BN + AGC",
    "nf+agc": "NF-ResNet + AGC",
    "bn+agc": "BN + AGC",
}
_PALETTE = sns.color_palette("colorblind")
SERIES_COLORS = {
    "bn": _PALETTE[0],
    "none": _PALETTE[3],
    "ws": _PALETTE[4],
    "nf": _PALETTE[2],
    # A network trained with adaptive gradient clipping keeps its network's colour and is
    # drawn dashed (series_linestyle): "the same network, clipped" reads at a glance.
    "none+agc": _PALETTE[3],
    "nf+agc": _PALETTE[2],
    "bn+agc": _PALETTE[0],
}


def series_label(series: str) -> str:
    base, rest = split_series(series)  # "bn@lr=0.1" -> "BN, lr=0.1"
    label = SERIES_LABELS.get(base, base)
    return f"{label}, {rest}" if rest else label


def series_color(series: str):
    return SERIES_COLORS.get(split_series(series)[0], _PALETTE[7])


def series_linestyle(series: str) -> str:
    """Dashed for a network trained with AGC (``"nf+agc"``, ``"none+agc@lr=0.1"``), else solid."""
    return "--" if split_agc(split_series(series)[0])[1] else "-"


def style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "axes.titleweight": "bold", "savefig.dpi": 150})


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 4.0, height: float = 3.2, **kwargs):
    """A styled figure of ``nrows x ncols`` panels, each ``width x height`` inches."""
    style()
    kwargs.setdefault("squeeze", False)
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **kwargs)
