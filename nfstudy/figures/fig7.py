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

from ..claims import Claim
from ..plots import figure

__all__ = ["claims", "plot"]

TITLE = "Singular values of products of random Gaussian matrices (Bjorck et al. 2018, Fig. 7)"


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
    s = tables["singular_value_summary"].groupby("factors").mean(numeric_only=True).sort_index()
    if len(s) < 2:
        return []
    frac, largest = s["frac_small"].to_numpy(), s["largest"].to_numpy()
    names = " < ".join(str(k) for k in s.index)
    small = float(s["small"].iloc[0])
    return [
        Claim(
            "With more factors, more of the singular values pile up near 0",
            f"min ratio of the fraction below {small:g} between consecutive factor counts ({names})",
            float((frac[1:] / frac[:-1]).min()),
            ">",
            1.0,
        ),
        Claim(
            "With more factors, the largest singular value grows",
            f"min ratio of the largest singular value between consecutive factor counts ({names})",
            float((largest[1:] / largest[:-1]).min()),
            ">",
            1.0,
        ),
        Claim(
            "(theory, beyond the paper) The largest singular value sits at the Fuss-Catalan edge sqrt((k+1)^(k+1)/k^k)",
            "max over factor counts of |largest / edge - 1|",
            float(np.abs(largest / s["edge"].to_numpy() - 1).max()),
            "<=",
            0.1,
        ),
    ]
