"""Figure 7 of Bjorck et al. 2018: singular values of products of random Gaussian matrices.

Tables: ``singular_values`` (seed, factors, sample, index, singular_value: every singular
value of every product, descending within a sample) and ``singular_value_summary`` (per
seed and number of factors: size, samples, mean_square (1 in expectation), largest (mean
over samples), edge (its Fuss-Catalan limit), median, small, frac_small (the fraction of
singular values below ``small``)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..claims import Claim, near
from ..plots import figure

__all__ = ["claims", "plot"]

TITLE = "Singular values of products of random Gaussian matrices (Bjorck et al. 2018, Fig. 7)"

# The paper's magnitudes (../shared/PAPERS.md section D, read off its Fig. 7): the support
# of the histograms of 1, 3, 5 factors. Their n -> inf limits are the Fuss-Catalan edges
# 2, 3.08, 3.86; at finite size the largest sits a little below.
PAPER_SUPPORT = {1: 2.0, 3: 3.2, 5: 4.0}
SUPPORT_FACTOR = 1.25  # a band of +-25%: between the paper's neighbouring supports (3.2/4 = 0.8)
# "Grows" with a margin: each step at least 10% (the paper's smallest step, 3 -> 5
# factors, is 3.2 -> 4, a factor 1.25; its spike counts grow 2100 -> 3800, 1.8).
GROWTH_MARGIN = 1.1
EDGE_TOLERANCE = 0.1  # the finite-size gap to the edge at size >= 200 is a few per cent


def _color(i: int, n: int):
    import matplotlib.pyplot as plt

    return plt.get_cmap("viridis")(0.15 + 0.7 * i / max(n - 1, 1))


def _fractions(v: pd.DataFrame, edges: np.ndarray, log: bool = False) -> np.ndarray:
    """Per seed (rows): the density of singular values in each bin (per unit of log10 of
    the singular value with ``log``, so that equal areas hold equal mass on a log axis)."""
    widths = np.diff(np.log10(edges)) if log else np.diff(edges)
    return np.stack([np.histogram(s, bins=edges)[0] / len(s) / widths for _, s in v.groupby("seed")["singular_value"]])


def _stairs(ax, density: np.ndarray, edges: np.ndarray, color, label: str, fill: bool) -> None:
    mean = density.mean(0)
    if len(density) > 1:  # +- one standard deviation across seeds
        std = density.std(0)
        ax.stairs(mean + std, edges, baseline=np.clip(mean - std, 0, None), fill=True, color="0.6", alpha=0.5, lw=0)
    ax.stairs(mean, edges, fill=fill, color=color, alpha=0.75 if fill else 1.0, lw=1.6, label=label)


def plot(tables: dict[str, pd.DataFrame], bins: int = 60):
    """One histogram (density) per number of factors on a common linear axis, the
    Fuss-Catalan edge dashed; last panel: all of them on a log axis, where the mass
    near 0 shows."""
    values, summary = tables["singular_values"], tables["singular_value_summary"]
    factors = sorted(values["factors"].unique())
    n_seeds = values["seed"].nunique()
    fig, axes = figure(1, len(factors) + 1, width=3.3, height=3.0)
    top = max(float(values["singular_value"].max()), float(summary["edge"].max())) * 1.02
    edges = np.linspace(0, top, bins + 1)
    positive = values["singular_value"][values["singular_value"] > 0]
    # From the 0.1% quantile: a few singular values of a 5-factor product reach 1e-10.
    log_edges = np.logspace(np.log10(positive.quantile(0.001)), np.log10(top), bins + 1)
    for i, k in enumerate(factors):
        v = values[values["factors"] == k]
        s = summary[summary["factors"] == k]
        color = _color(i, len(factors))
        ax = axes[0][i]
        _stairs(ax, _fractions(v, edges), edges, color, f"{k} factor{'s' if k > 1 else ''}", fill=True)
        ax.axvline(s["edge"].iloc[0], color="k", ls="--", lw=1)
        small = s["small"].iloc[0]
        ax.axvspan(0, small, color="0.85", zorder=0)
        ax.set_title(f"{k} factor{'s' if k > 1 else ''}")
        ax.text(
            0.97,
            0.96,
            f"below {small:g}: {s['frac_small'].mean():.1%}\nlargest {s['largest'].mean():.2f}\n(edge {s['edge'].iloc[0]:.2f}, dashed)",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            bbox=dict(boxstyle="round", fc="white", alpha=0.85),
        )
        ax.set_xlabel("singular value")
        _stairs(axes[0][-1], _fractions(v, log_edges, log=True), log_edges, color, f"{k} factor{'s' if k > 1 else ''}", fill=False)
    axes[0][0].set_ylabel("density")
    last = axes[0][-1]
    last.set_xscale("log")
    last.set_title("all, log axis")
    last.set_ylabel("density per decade")
    last.set_xlabel("singular value")
    last.legend(fontsize=8, loc="upper left")
    size, samples = int(summary["size"].iloc[0]), int(summary["samples"].iloc[0])
    seeds = f"; mean of {n_seeds} seeds, band +- one std" if n_seeds > 1 else ""
    fig.suptitle(f"{TITLE}\n{samples} products of {size}x{size} matrices with N(0, 1/{size}) entries per panel{seeds}", fontsize=10)
    return fig


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    """Every claim is a theorem about random matrices (kind ``sanity``): it checks the
    set-up, and counts toward no reproduction score."""
    s = tables["singular_value_summary"].groupby("factors").mean(numeric_only=True).sort_index()
    found = [
        Claim(
            f"A product of {k} Gaussian matrices has its singular values up to ~{PAPER_SUPPORT[k]:g} (paper)",
            f"largest singular value / {PAPER_SUPPORT[k]:g}, {k} factor{'s' if k > 1 else ''} (mean over samples)",
            float(s.loc[k, "largest"] / PAPER_SUPPORT[k]),
            **near(1.0, SUPPORT_FACTOR),
            kind="sanity",
        )
        for k in s.index
        if k in PAPER_SUPPORT
    ]
    if len(s) < 2:
        return found
    frac, largest = s["frac_small"].to_numpy(), s["largest"].to_numpy()
    names = " < ".join(str(k) for k in s.index)
    small = float(s["small"].iloc[0])
    return found + [
        Claim(
            "With more factors, more of the singular values pile up near 0 (paper: spike counts ~0 / 2100 / 3800)",
            f"min ratio of the fraction below {small:g} between consecutive factor counts ({names})",
            float((frac[1:] / frac[:-1]).min()),
            ">=",
            GROWTH_MARGIN,
            kind="sanity",
        ),
        Claim(
            "With more factors, the largest singular value grows (paper: ~2 / ~3.2 / ~4)",
            f"min ratio of the largest singular value between consecutive factor counts ({names})",
            float((largest[1:] / largest[:-1]).min()),
            ">=",
            GROWTH_MARGIN,
            kind="sanity",
        ),
        Claim(
            "The largest singular value sits at the Fuss-Catalan edge sqrt((k+1)^(k+1)/k^k)",
            "max over factor counts of |largest / edge - 1|",
            float(np.abs(largest / s["edge"].to_numpy() - 1).max()),
            "<=",
            EDGE_TOLERANCE,
            kind="sanity",
        ),
    ]
