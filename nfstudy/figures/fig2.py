"""Figure 2 of Bjorck et al. 2018: gradients of one conv kernel at initialisation.

Tables: ``gradient_values`` (every value of the layer's weight gradient: seed, series,
layer, layer_name, index, value) and ``gradient_summary`` (per seed and series: n,
loss, mean, std, max_abs, kurtosis = excess kurtosis, 0 for a Gaussian).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..claims import Claim
from ..plots import figure, series_color, series_label

__all__ = ["claims", "plot"]

TITLE = "Gradients of a conv kernel at initialisation (Bjorck et al. 2018, Fig. 2)"


def _series_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["series"]))


def _fractions(v: pd.DataFrame, edges: np.ndarray) -> np.ndarray:
    """Per seed (rows), the fraction of gradient values in each bin."""
    return np.stack([np.histogram(g, bins=edges)[0] / len(g) for _, g in v.groupby("seed")["value"]])


def _panel(ax, fractions: np.ndarray, edges: np.ndarray, color) -> None:
    mean = fractions.mean(0)
    if len(fractions) > 1:  # +- one standard deviation across seeds, behind the mean
        std = fractions.std(0)
        ax.stairs(mean + std, edges, baseline=np.clip(mean - std, 0, None), fill=True, color="0.6", alpha=0.6, lw=0)
    ax.stairs(mean, edges, fill=True, color=color, alpha=0.8)


def plot(tables: dict[str, pd.DataFrame], bins: int = 101):
    """One column per series, each with its own x-range (as in the paper).

    Top row: the histogram of the central 99.9% of the values (linear, like the paper).
    Bottom row: every value, log scale, where heavy tails show. With several seeds: the
    mean fraction per bin over seeds on common bins, and a band of +- one std.
    """
    values = tables["gradient_values"]
    summary = tables["gradient_summary"]
    order = _series_order(values)
    fig, axes = figure(2, len(order), width=3.6, height=2.6)
    seeds = sorted(values["seed"].unique())
    for column, series in enumerate(order):
        v = values[values["series"] == series]
        s = summary[summary["series"] == series]
        color = series_color(series)
        magnitude = v["value"].abs()
        for row, limit in enumerate((float(magnitude.quantile(0.999)), float(magnitude.max()))):
            ax = axes[row][column]
            limit = limit or 1.0
            edges = np.linspace(-limit, limit, bins + 1)
            _panel(ax, _fractions(v, edges), edges, color)
            ax.set_xlim(-limit, limit)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        axes[1][column].set_yscale("log")
        axes[1][column].set_xlabel("gradient value")
        layer = int(v["layer"].iloc[0])
        axes[0][column].set_title(f"{series_label(series)}, layer {layer}")
        axes[0][column].text(
            0.03,
            0.96,
            f"std {s['std'].mean():.2g}\nmax |g| {s['max_abs'].mean():.2g}\nexcess kurtosis {s['kurtosis'].mean():.2g}"
            + (f"\nmean of {len(seeds)} seeds" if len(seeds) > 1 else ""),
            transform=axes[0][column].transAxes,
            va="top",
            fontsize=8,
            bbox=dict(boxstyle="round", fc="white", alpha=0.85),
        )
    axes[0][0].set_ylabel("fraction of values\n(central 99.9%)")
    axes[1][0].set_ylabel("fraction of values\n(all, log scale)")
    fig.suptitle(TITLE, fontsize=10)
    return fig


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    summary = tables["gradient_summary"].set_index("series")
    found = []
    if {"bn", "none"} <= set(summary.index):
        bn, none = summary.loc["bn"], summary.loc["none"]
        found += [
            Claim(
                "Without BN the gradients are far larger than with BN (paper: ~100x, range +-4 vs +-0.04)",
                "std(grad, no BN) / std(grad, BN)",
                none["std"] / bn["std"],
                ">=",
                10.0,
            ),
            Claim(
                "Without BN the gradients are heavier-tailed than with BN",
                "excess kurtosis(no BN) - excess kurtosis(BN)",
                none["kurtosis"] - bn["kurtosis"],
                ">",
                0.0,
            ),
        ]
    if {"nf", "none"} <= set(summary.index):
        found.append(
            Claim(
                "(beyond the paper) NF-ResNet gradients do not blow up like the no-BN network's",
                "std(grad, no BN) / std(grad, NF)",
                summary.loc["none", "std"] / summary.loc["nf", "std"],
                ">=",
                10.0,
            )
        )
    return found
