"""Figure 5 of Bjorck et al. 2018: channel means and stds vs depth at initialisation.

Table ``activation_stats``: seed, series, network, depth, layer_name, statistic, value,
one row per (network, sampled weight layer, statistic); statistics
``avg_channel_abs_mean`` (mean over channels of |channel mean|), ``avg_channel_std``,
``avg_channel_var``, ``avg_channel_sq_mean``, in the activation's own units.

Error bars are over networks (every network of every seed present): the mean and
standard deviation of log10 of the statistic, i.e. a geometric mean with a
multiplicative spread, which is what a log axis shows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..claims import Claim
from ..plots import figure, series_color, series_label

__all__ = ["claims", "growth", "log_profile", "plot"]

TITLE = "Channel statistics vs depth at initialisation (Bjorck et al. 2018, Fig. 5)"
PANELS = {
    "avg_channel_abs_mean": "channel means: mean$_C$ |mean$_c$|",
    "avg_channel_std": "channel stds: mean$_C$ std$_c$",
}
PANELS_TEXT = {"avg_channel_abs_mean": "mean_C |channel mean|", "avg_channel_std": "mean_C channel std"}


def _factor(log10_factor: float) -> str:
    return f"×10$^{{{log10_factor:.1f}}}$" if abs(log10_factor) >= 2 else f"×{10**log10_factor:.2g}"


def _series_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["series"]))


def log_profile(table: pd.DataFrame, series: str, statistic: str) -> pd.DataFrame:
    """Per sampled depth: mean and std over networks (and seeds) of log10(statistic), and n."""
    rows = table[(table["series"] == series) & (table["statistic"] == statistic)]
    logs = rows.assign(log10=np.log10(rows["value"].where(rows["value"] > 0)))
    return logs.groupby("depth")["log10"].agg(mean="mean", std="std", n="size").reset_index()


def growth(table: pd.DataFrame, series: str, statistic: str) -> float:
    """log10 of the change of the statistic from the first to the last sampled layer
    (on the mean over networks of log10): 2 means 100x larger at the last layer."""
    profile = log_profile(table, series, statistic)
    return float(profile["mean"].iloc[-1] - profile["mean"].iloc[0])


def _log_linear_r2(table: pd.DataFrame, series: str, statistic: str) -> float:
    """R^2 of a straight-line fit of log10(statistic) against depth: 1 = exactly exponential."""
    profile = log_profile(table, series, statistic)
    x, y = profile["depth"].to_numpy(float), profile["mean"].to_numpy(float)
    if len(x) < 3 or not np.isfinite(y).all():
        return float("nan")
    residual = y - np.polyval(np.polyfit(x, y, 1), x)
    return float(1.0 - (residual**2).sum() / ((y - y.mean()) ** 2).sum())


def plot(tables: dict[str, pd.DataFrame]):
    """Two panels (channel means, channel stds) against the sampled layer depth, log
    scale; one line per series, error bars +- one std of log10 over networks."""
    table = tables["activation_stats"]
    n_networks = table.groupby(["seed", "network"]).ngroups
    n_seeds = table["seed"].nunique()
    fig, axes = figure(1, len(PANELS), width=4.6, height=3.6)
    for ax, (statistic, label) in zip(axes[0], PANELS.items()):
        for offset, series in enumerate(_series_order(table)):
            profile = log_profile(table, series, statistic)
            depth = profile["depth"].to_numpy(float) + (offset - 1) * 0.8  # keep error bars apart
            mean, std = profile["mean"].to_numpy(), profile["std"].fillna(0).to_numpy()
            factor = growth(table, series, statistic)
            ax.errorbar(
                depth,
                10**mean,
                yerr=[10**mean - 10 ** (mean - std), 10 ** (mean + std) - 10**mean],
                marker="o",
                ms=4,
                capsize=3,
                lw=1.5,
                color=series_color(series),
                label=f"{series_label(series)} ({_factor(factor)} first to last)",
            )
        ax.set_yscale("log")
        ax.set_xlabel("layer depth (weight layers from the input)")
        ax.set_title(label)
        ax.legend(fontsize=8, loc="upper left")
    axes[0][0].set_ylabel("magnitude (log scale)")
    layers = sorted(table["depth"].unique())
    for ax in axes[0]:
        ax.set_xticks(layers)
    networks = f"{n_networks} networks" + (f" from {n_seeds} seeds" if n_seeds > 1 else "")
    fig.suptitle(f"{TITLE}\nmean and std of log10 over {networks}", fontsize=10)
    return fig


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    table = tables["activation_stats"]
    present = set(table["series"])
    found = []
    if "none" in present:
        for statistic, what in (("avg_channel_abs_mean", "channel means"), ("avg_channel_std", "channel stds")):
            found.append(
                Claim(
                    f"Without BN the {what} grow by orders of magnitude with depth",
                    f"log10(last / first sampled layer) of {PANELS_TEXT[statistic]}, no BN",
                    growth(table, "none", statistic),
                    ">=",
                    2.0,
                )
            )
        found.append(
            Claim(
                "Without BN the growth is roughly exponential in depth (a straight line on a log axis)",
                "R^2 of a linear fit of log10(channel std) against depth, no BN",
                _log_linear_r2(table, "none", "avg_channel_std"),
                ">=",
                0.9,
            )
        )
    if "bn" in present:
        for statistic, what in (("avg_channel_abs_mean", "channel means"), ("avg_channel_std", "channel stds")):
            found.append(
                Claim(
                    f"With BN the {what} stay roughly flat (within one order of magnitude)",
                    f"|log10(last / first sampled layer)| of {PANELS_TEXT[statistic]}, BN",
                    abs(growth(table, "bn", statistic)),
                    "<=",
                    1.0,
                )
            )
    if "nf" in present:
        found.append(
            Claim(
                "(beyond the paper) The NF-ResNet keeps its channel stds flat too",
                f"|log10(last / first sampled layer)| of {PANELS_TEXT['avg_channel_std']}, NF",
                abs(growth(table, "nf", "avg_channel_std")),
                "<=",
                1.0,
            )
        )
    return found
