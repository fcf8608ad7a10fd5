"""Figure 1 of Bjorck et al. 2018: accuracy during training, with and without BN, per lr.

Tables: ``history`` (seed, series, norm, base_lr, epoch, step, progress_pct, lr,
train_loss, train_accuracy, test_loss, test_accuracy; accuracies in [0, 1]) and
``outcomes`` (one row per seed and series: status, budget, divergence step and %,
final metrics).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

from ..claims import Claim
from ..plots import figure, series_color, series_label

__all__ = ["claims", "plot"]

TITLE = "Accuracy during training at several learning rates (Bjorck et al. 2018, Fig. 1)"


def _colors(outcomes: pd.DataFrame) -> dict[str, tuple]:
    """The norm's colour (BN blue, no BN red, NF green), lighter for smaller lrs."""
    colors = {}
    for norm, group in outcomes.drop_duplicates("series").groupby("norm", sort=False):
        for rank, (series, _) in enumerate(group.sort_values("base_lr", ascending=False)[["series", "base_lr"]].values):
            t = min(0.6, 0.3 * rank)
            colors[series] = tuple(c + (1 - c) * t for c in to_rgb(series_color(series)))
    return colors


def _mean_std(history: pd.DataFrame, column: str) -> pd.DataFrame:
    stats = history.groupby("progress_pct")[column].agg(["mean", "std", "size"]).reset_index()
    return stats.assign(std=stats["std"].fillna(0.0))


def plot(tables: dict[str, pd.DataFrame]):
    """Two panels, train and test accuracy (%) against % of training, like the paper.

    One line per series (the mean over seeds, a band of +- one std when there are
    several); lr drops as dotted verticals. A series that diverged is an x at the point of
    divergence, labelled with its step, at chance level.
    """
    history, outcomes = tables["history"], tables["outcomes"]
    order = list(dict.fromkeys(outcomes["series"]))
    colors = _colors(outcomes)
    n_seeds = outcomes["seed"].nunique()
    chance = 100.0 / 10
    fig, axes = figure(1, 2, width=5.2, height=3.9)
    # An lr drop applies from the start of the first epoch at the lower rate.
    starts = history["progress_pct"] * (history["epoch"] - 1) / history["epoch"]
    dropped = history.groupby(["seed", "series"])["lr"].diff() < 0
    drops = sorted(set(starts[dropped].round(6)))
    handles = []
    for ax, split in zip(axes[0], ("train", "test")):
        for p in drops:
            ax.axvline(p, color="0.6", ls=":", lw=1, zorder=0)
        for series in order:
            color = colors[series]
            h = history[history["series"] == series]
            o = outcomes[outcomes["series"] == series]
            diverged = o[o["status"] == "diverged"]
            label = series_label(series)
            if len(h):
                stats = _mean_std(h, f"{split}_accuracy")
                x, m, s = stats["progress_pct"], 100 * stats["mean"], 100 * stats["std"]
                ax.plot(x, m, color=color, lw=1.6)
                if n_seeds > 1:
                    ax.fill_between(x, (m - s).clip(0, 100), (m + s).clip(0, 100), color=color, alpha=0.25, lw=0)
            if len(diverged):
                ax.scatter(diverged["diverged_pct"], [chance] * len(diverged), marker="x", s=60, color=color, zorder=5, lw=2)
                steps = sorted({int(v) for v in diverged["diverged_step"]})
                at = f"at step {steps[0]}" if len(steps) == 1 else f"at steps {', '.join(map(str, steps))}"
                seeds = "" if len(o) == 1 else f" ({len(diverged)} seeds)" if len(diverged) == len(o) else f" ({len(diverged)} of {len(o)} seeds)"
                label += f": diverged {at}{seeds}"
            if split == "train":
                style = dict(marker="x", ls="none", markersize=7, mew=2) if len(diverged) == len(o) else dict(lw=1.6)
                handles.append(Line2D([], [], color=color, label=label, **style))
        ax.set_xlim(-2, 101)  # room for a divergence at 0%
        ax.set_ylim(0, 100)
        ax.set_xlabel("% of training")
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.set_title(f"{split.capitalize()} accuracy")
    if drops:
        handles.append(Line2D([], [], color="0.6", ls=":", lw=1, label="lr ÷ 10"))
    seeds = f"mean ± std of {n_seeds} seeds" if n_seeds > 1 else f"seed {outcomes['seed'].iloc[0]}"
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"{TITLE}\n{seeds}", fontsize=10)
    return fig


def _final(outcomes: pd.DataFrame, norm: str, lr: float) -> pd.Series | None:
    match = outcomes[(outcomes["norm"] == norm) & np.isclose(outcomes["base_lr"], lr)]
    return match.iloc[0] if len(match) else None


def _completed_pct(row: pd.Series) -> float:
    """% of training done before divergence; 100 when the run never diverged."""
    return float(row["diverged_pct"]) if row["status"] == "diverged" else 100.0


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    """The paper's claims for one seed, at the learning rates present.

    ``small`` is the smallest lr run both with and without BN (the paper: 1e-4, "picked
    such that the network without BN converges"); ``large`` the largest BN lr (0.1).
    Thresholds, from the paper's numbers (BN at 0.1 ~93% test accuracy, both 1e-4 runs
    ~81-82%): "far above" is at least 5 points, half the paper's ~11-point gap;
    "comparable" is within 3 points (the paper's two runs: ~1 point apart).
    """
    o = tables["outcomes"]
    bn_lrs = sorted(o.loc[o["norm"] == "bn", "base_lr"])
    none_lrs = sorted(o.loc[o["norm"] == "none", "base_lr"])
    matched = sorted(set(bn_lrs) & set(none_lrs))
    found = []
    if matched:
        small = matched[0]
        bn_small, none_small = _final(o, "bn", small), _final(o, "none", small)
        large = bn_lrs[-1]
        if large > small:
            bn_large = _final(o, "bn", large)
            found.append(
                Claim(
                    f"BN at a large lr ({large:g}) ends far above no BN at the small lr ({small:g}) (paper: ~93% vs ~81-82%)",
                    f"final test accuracy, BN lr={large:g} minus no BN lr={small:g} (percentage points)",
                    100 * (bn_large["final_test_accuracy"] - none_small["final_test_accuracy"]),
                    ">=",
                    5.0,
                )
            )
        found.append(
            Claim(
                f"At the same small lr ({small:g}) BN and no BN end with comparable test accuracy (paper: ~81-82% both)",
                f"|final test accuracy, BN minus no BN, both lr={small:g}| (percentage points)",
                abs(100 * (bn_small["final_test_accuracy"] - none_small["final_test_accuracy"])),
                "<=",
                3.0,
            )
        )
        if none_lrs[-1] > small:
            found.append(
                Claim(
                    f"Without BN, training at a large lr ({none_lrs[-1]:g}) diverges",
                    f"% of training done when no BN at lr={none_lrs[-1]:g} diverged (100: never)",
                    _completed_pct(_final(o, "none", none_lrs[-1])),
                    "<",
                    100.0,
                )
            )
    nf_lrs = sorted(o.loc[o["norm"] == "nf", "base_lr"])
    if nf_lrs:
        found.append(
            Claim(
                f"(beyond the paper) The NF-ResNet trains at lr {nf_lrs[-1]:g} without BN and without diverging",
                f"% of training done before NF at lr={nf_lrs[-1]:g} diverged (100: never)",
                _completed_pct(_final(o, "nf", nf_lrs[-1])),
                ">=",
                100.0,
            )
        )
    return found
