"""Figure 2 of Bjorck et al. 2018: gradients of one conv kernel at initialisation.

Tables: ``gradient_values`` (every value of the layer's weight gradient: seed, series,
layer, layer_name, index, value) and ``gradient_summary`` (per seed and series: n,
loss, mean, std, max_abs, kurtosis = excess kurtosis, 0 for a Gaussian).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..claims import Claim, near
from ..plots import figure, series_color, series_label

__all__ = ["claims", "plot"]

TITLE = "Gradients of a conv kernel at initialisation (Bjorck et al. 2018, Fig. 2)"

# The paper's magnitudes (../shared/PAPERS.md section D, read off its Fig. 2 to a factor
# ~2): the histograms' x-ranges, i.e. max |gradient|, and their ratio.
PAPER_RANGE = {"bn": (0.04, "With BN"), "none": (4.0, "Without BN")}
PAPER_RATIO = 100.0  # +-4 vs +-0.04
# Two-sided bands a factor 10 either way: the reading is good to ~2, and the data, batch
# and loss scaling are the paper's only in the paper profile (issue 11: "within a factor
# of 10 of PAPERS.md section D"). 1e9 is not ~100.
RANGE_FACTOR = 10.0
# "Heavy-tailed" needs a margin over BN, not > 0: at least the excess kurtosis of a Laplace
# distribution (3) more than BN's; the sampling error of the kurtosis of ~1e4 values is
# far below that.
HEAVIER_TAILS_MARGIN = 3.0


def _series_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["series"]))


def _on_a_common_scale(v: pd.DataFrame) -> pd.DataFrame:
    """Each seed's values rescaled to the std of the median seed (by std, the lower median): without BN the
    seeds' scales differ by orders of magnitude, and on common bins the smaller ones
    would all fall into the central bin (a spike that is no seed's shape). One seed, or a
    seed with std 0, is left as it is."""
    std = v.groupby("seed")["value"].std(ddof=0)
    spread = std[std > 0].sort_values()
    if not len(spread):
        return v
    reference = float(spread.iloc[(len(spread) - 1) // 2])
    factor = (reference / std).where(std > 0, 1.0)
    return v.assign(value=v["value"] * v["seed"].map(factor))


def _fractions(v: pd.DataFrame, edges: np.ndarray) -> np.ndarray:
    """Per seed (rows), the fraction of that seed's own gradient values in each bin."""
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
    Bottom row: every value, log scale, where heavy tails show. Each seed's histogram is
    the fraction of its own values per bin. With several seeds each seed's values are
    first rescaled to the median seed's std (:func:`_on_a_common_scale`), then the mean
    fraction per bin over seeds is drawn on common bins, with a band of +- one std; the
    text gives the unscaled std and max |g| (median over seeds).
    """
    values = tables["gradient_values"]
    summary = tables["gradient_summary"]
    order = _series_order(values)
    fig, axes = figure(2, len(order), width=3.6, height=2.6)
    seeds = sorted(values["seed"].unique())
    for column, series in enumerate(order):
        v = _on_a_common_scale(values[values["series"] == series])
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
        axes[1][column].set_xlabel("gradient value" if len(seeds) == 1 else "gradient value\n(each seed rescaled to the median seed's std)")
        layer = int(v["layer"].iloc[0])
        axes[0][column].set_title(f"{series_label(series)}, layer {layer}")
        axes[0][column].text(
            0.03,
            0.96,
            f"std {s['std'].median():.2g}\nmax |g| {s['max_abs'].median():.2g}\nexcess kurtosis {s['kurtosis'].median():.2g}"
            + (f"\nmedian of {len(seeds)} seeds\n(max |g| {s['max_abs'].min():.2g}..{s['max_abs'].max():.2g})" if len(seeds) > 1 else ""),
            transform=axes[0][column].transAxes,
            va="top",
            fontsize=8,
            bbox=dict(boxstyle="round", fc="white", alpha=0.85),
        )
    axes[0][0].set_ylabel("fraction of values\n(central 99.9%)")
    axes[1][0].set_ylabel("fraction of values\n(all, log scale)")
    fig.suptitle(TITLE, fontsize=10)
    return fig


def _range_claims(summary: pd.DataFrame) -> list[Claim]:
    found = []
    for series, (target, label) in PAPER_RANGE.items():
        if series in summary.index:
            found.append(
                Claim(
                    f"{label}: the layer-{int(summary.loc[series, 'layer'])} gradients lie within ~+-{target:g} (paper)",
                    f"max |grad|, {series_label(series)}",
                    summary.loc[series, "max_abs"],
                    **near(target, RANGE_FACTOR),
                )
            )
    return found


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    summary = tables["gradient_summary"].set_index("series")
    found = _range_claims(summary)
    if {"bn", "none"} <= set(summary.index):
        bn, none = summary.loc["bn"], summary.loc["none"]
        found += [
            Claim(
                f"Without BN the gradients are ~{PAPER_RATIO:g}x larger than with BN (paper: range +-4 vs +-0.04)",
                "max |grad, no BN| / max |grad, BN|",
                none["max_abs"] / bn["max_abs"],
                **near(PAPER_RATIO, RANGE_FACTOR),
            ),
            Claim(
                "Without BN the gradients are heavy-tailed, far more than with BN",
                "excess kurtosis(no BN) - excess kurtosis(BN)",
                none["kurtosis"] - bn["kurtosis"],
                ">=",
                HEAVIER_TAILS_MARGIN,
            ),
        ]
    if "nf" in summary.index:
        found.append(
            Claim(
                "(beyond the paper) The NF-ResNet's gradients do not blow up: no larger than the paper's BN range allows",
                "max |grad|, NF-ResNet",
                summary.loc["nf", "max_abs"],
                "<=",
                PAPER_RANGE["bn"][0] * RANGE_FACTOR,
                kind="extension",
            )
        )
    return found
