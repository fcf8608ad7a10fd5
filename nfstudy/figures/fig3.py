"""Figure 3 of Bjorck et al. 2018: the relative loss along the update early in training.

Table ``relative_loss``: one row per (seed, series, probed mini-batch, step size):
seed, series, lr (the series' training learning rate), agc_lambda (the AGC threshold of a
series trained with adaptive gradient clipping, ``"none+agc"``; NaN otherwise, and absent
from tables written before those series existed), batch, step_size,
relative_loss (loss after the tentative step / loss before, same batch), diverged
(relative loss > 1e3 or not finite), loss_before, loss_after, update_norm (||d||).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..claims import Claim
from ..plots import figure, series_color, series_label, series_linestyle

__all__ = ["claims", "plot", "step_size_summary"]

TITLE = "Relative loss along the update direction, early in training (Bjorck et al. 2018, Fig. 3)"
Y_CEILING = 1e6  # the paper's axis reaches 10^6; larger or non-finite values are drawn at the edge
DIVERGENCE = 1e3  # Bjorck et al.: a relative loss above 10^3 counts as divergence


def _order(values) -> list:
    return list(dict.fromkeys(values))


def _as_relative(df: pd.DataFrame) -> np.ndarray:
    """Relative losses with diverged non-finite values as +inf (NaN comes from inf - inf)."""
    r = df["relative_loss"].to_numpy(dtype=float)
    return np.where(np.isnan(r), np.inf, r)


def plot(tables: dict[str, pd.DataFrame]):
    """Rows: series (BN, no BN, NF); columns: probed mini-batches. Both axes log.

    One seed: the relative loss per step size. Several: the median over seeds (taken on
    the log scale) and a band from the smallest to the largest seed. Values above 10^6 and
    non-finite ones (the loss overflowed) are drawn as triangles on the top edge; past the
    first diverging step the line is faded (the network is wrecked there: a net whose ReLUs
    are all off outputs its classifier's bias, and its loss can fall back below the loss
    before). A seed whose training had already diverged before the probed batch (its loss
    before the step is not finite) is left out of that panel, and the panel says so.
    """
    df = tables["relative_loss"]
    series, batches = _order(df["series"]), sorted(df["batch"].unique())
    seeds = sorted(df["seed"].unique())
    fig, axes = figure(len(series), len(batches), width=3.3, height=2.6, sharex=True, sharey=True)
    finite = df["relative_loss"].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    bottom = min(0.5, float(finite.min()) * 0.7) if len(finite) else 0.5
    for row, s in enumerate(series):
        color = series_color(s)
        lr = float(df.loc[df["series"] == s, "lr"].iloc[0])
        for column, b in enumerate(batches):
            ax = axes[row][column]
            g = df[(df["series"] == s) & (df["batch"] == b)]
            trained = np.isfinite(g["loss_before"].to_numpy(dtype=float))
            gone = sorted(g.loc[~trained, "seed"].unique())
            if gone:
                ax.text(0.03, 0.04, f"left out, training diverged\nbefore this batch: seed {', '.join(map(str, gone))}",
                        transform=ax.transAxes, va="bottom", fontsize=7, color=color,
                        bbox=dict(boxstyle="round", fc="white", ec=color, alpha=0.9))
            g = g[trained]
            _style_panel(ax, lr, bottom, row, column, b, len(series))
            if g.empty:
                continue
            wide = g.assign(relative=_as_relative(g)).pivot_table(
                index="step_size", columns="seed", values="relative", aggfunc="first"
            )
            steps = wide.index.to_numpy()
            values = wide.to_numpy()
            with np.errstate(divide="ignore"):
                median = np.exp(np.median(np.log(values), axis=1))  # the geometric middle: log-scale data
            shown = np.minimum(median, Y_CEILING)
            if wide.shape[1] > 1:
                low = np.minimum(values.min(axis=1), Y_CEILING)
                high = np.minimum(values.max(axis=1), Y_CEILING)
                ax.fill_between(steps, low, high, color=color, alpha=0.25, lw=0)
            diverged = ~np.isfinite(median) | (median > DIVERGENCE)
            cut = int(np.argmax(diverged)) + 1 if diverged.any() else len(steps)  # up to the first diverged point
            ax.plot(steps[:cut], shown[:cut], color=color, lw=1.6, marker="o", ms=2.5, ls=series_linestyle(s))
            ax.plot(steps[cut - 1 :], shown[cut - 1 :], color=color, lw=1.0, marker="o", ms=2, alpha=0.3)
            off = median >= Y_CEILING
            if off.any():
                ax.plot(steps[off], np.full(off.sum(), Y_CEILING), "^", color=color, ms=5, mec="black", mew=0.5)
        lam = df.loc[df["series"] == s, "agc_lambda"].iloc[0] if "agc_lambda" in df.columns else np.nan
        clipped = "" if np.isnan(lam) else f"AGC λ={lam:g}; "
        axes[row][0].set_ylabel(f"{series_label(s)}, lr={lr:g}\n{clipped}loss after / loss before")
    handles = [
        Line2D([], [], color="0.3", lw=0.8, ls="--", label="no change"),
        Line2D([], [], color="0.45", lw=0.8, ls=":", label="divergence (10$^3$)"),
        Line2D([], [], color="0.2", lw=0.8, ls="-.", label="training lr"),
        Line2D([], [], color="0.5", ls="", marker="^", mec="black", mew=0.5, label="> 10$^6$ or not finite"),
        Line2D([], [], color="0.5", lw=1.0, alpha=0.3, label="past divergence"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    subtitle = f"median of {len(seeds)} seeds, band min-max" if len(seeds) > 1 else f"seed {seeds[0]}"
    fig.suptitle(f"{TITLE}\n{subtitle}", fontsize=10)
    return fig


def _style_panel(ax, lr: float, bottom: float, row: int, column: int, batch: int, nrows: int) -> None:
    ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    ax.axhline(DIVERGENCE, color="0.45", lw=0.8, ls=":")
    ax.axvline(lr, color="0.2", lw=0.8, ls="-.")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom, Y_CEILING * 3)
    if row == 0:
        ax.set_title(f"mini-batch {batch}")
    if row == nrows - 1:
        ax.set_xlabel("step size along the update")


def step_size_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, series, batch), on the probed grid of step sizes:

    * ``lowering_up_to``: the largest step size such that it and every smaller probed
      step lower the loss (relative loss < 1); NaN if the smallest already does not
      (the update direction includes the momentum buffer, which need not be a descent
      direction for this batch).
      Contiguity matters: far past divergence a ReLU network can die (every unit off),
      its output collapse to the classifier's bias and the loss fall back to log(10),
      which is no sign of a forgiving landscape.
    * ``diverging_from``: the smallest step size whose relative loss is > 1e3 or not
      finite; inf if none did.
    * ``smallest_step``, ``largest_step``: the ends of the probed grid;
    * ``trained``: the loss before the step is finite. When it is not, training had
      already diverged before this batch and there is no landscape to measure: the claims
      leave such probes out (and one claim counts them).
    """
    rows = []
    for (seed, s, b), g in df.groupby(["seed", "series", "batch"], sort=False):
        g = g.sort_values("step_size")
        steps = g["step_size"].to_numpy(dtype=float)
        lowers = _as_relative(g) < 1.0
        band = np.cumprod(lowers).astype(bool)  # true up to the first step that does not lower the loss
        diverged = g["diverged"].to_numpy(dtype=bool)
        rows.append(
            {
                "seed": seed,
                "series": s,
                "batch": b,
                "lowering_up_to": steps[band].max() if band.any() else np.nan,
                "smallest_step": steps[0],
                "diverging_from": steps[diverged].min() if diverged.any() else np.inf,
                "largest_step": steps[-1],
                "trained": bool(np.isfinite(g["loss_before"].to_numpy(dtype=float)).all()),
            }
        )
    return pd.DataFrame(rows)


def _series(summary: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of one series, indexed by batch (empty if it has none left)."""
    if name in summary.index.get_level_values("series"):
        return summary.xs(name, level="series")
    return summary.iloc[0:0].droplevel("series")


def _lowering_ratio(wide: pd.DataFrame, narrow: pd.DataFrame) -> float:
    """Smallest ratio over batches of ``lowering_up_to``, conservatively: a wide-range network
    that lowers the loss at no probed step counts as 0, a narrow one as the smallest step."""
    top = wide["lowering_up_to"].fillna(0.0)
    bottom = narrow["lowering_up_to"].fillna(narrow["smallest_step"])
    return float((top / bottom).min())


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    """The paper's claims on the probes of networks still training (finite loss before the
    step); a first claim counts those probes for the no-BN network, whose learning rate is
    the largest at which the paper trains it (Fig. 1)."""
    df = tables["relative_loss"]
    everything = step_size_summary(df).set_index(["series", "batch"])
    summary = everything[everything["trained"]]
    present = set(everything.index.get_level_values("series"))
    found = []
    if "none" in present:
        lr = float(df.loc[df["series"] == "none", "lr"].iloc[0])
        found.append(
            Claim(
                f"Without BN the network trains at lr {lr:g} (the paper's no-BN learning rate, Fig. 1): "
                "it has not diverged by the probed mini-batches",
                "fraction of the probed mini-batches at which the no-BN loss before the step is finite",
                float(everything.loc["none", "trained"].mean()),
                ">=",
                1.0,
            )
        )
    if {"bn", "none"} <= present:
        bn, none = _series(summary, "bn"), _series(summary, "none")
        found.append(
            Claim(
                "With BN the loss decreases over a far larger range of step sizes than without "
                "(paper: BN up to ~1e-1, no BN only to ~1e-3)",
                "largest step size up to which every probed step lowers the loss, BN / no BN; "
                "smallest ratio over the probed mini-batches (no BN lowering at no probed step: its "
                "smallest step counts, a lower bound)",
                _lowering_ratio(bn, none),
                ">=",
                10.0,
            )
        )
    if "none" in present:
        found.append(
            Claim(
                "Without BN the loss explodes (relative loss > 1e3) once the step passes a small size "
                "(paper: past ~1e-3, up to 1e6 within its plotted range, which ends near 1e-1)",
                "smallest step size with relative loss > 1e3 or not finite, no BN; "
                "largest over the probed mini-batches (inf: never)",
                float(_series(summary, "none")["diverging_from"].max()),
                "<=",
                1e-1,
            )
        )
    if {"bn", "none"} <= present:
        bn, none = _series(summary, "bn"), _series(summary, "none")
        # A BN network that never diverged on the grid counts as diverging at its largest
        # probed step: the ratio is then a lower bound.
        bn_from = np.minimum(bn["diverging_from"], bn["largest_step"])
        found.append(
            Claim(
                "BN does not diverge at the step sizes that make the no-BN loss explode, nor at ones "
                "an order of magnitude larger",
                "smallest diverging step size, BN / no BN (BN's is its largest probed step if it never "
                "diverged: a lower bound); smallest ratio over the probed mini-batches",
                float((bn_from / none["diverging_from"]).min()),
                ">=",
                10.0,
            )
        )
    if {"nf", "none"} <= present:
        found.append(
            Claim(
                "(beyond the paper) The NF-ResNet, trained at BN's learning rate, is as forgiving as BN: "
                "its loss decreases over a far larger range of step sizes than the no-BN network's",
                "largest step size up to which every probed step lowers the loss, NF / no BN; "
                "smallest ratio over the probed mini-batches",
                _lowering_ratio(_series(summary, "nf"), _series(summary, "none")),
                ">=",
                10.0,
            )
        )
    if "none+agc" in present:
        lr = float(df.loc[df["series"] == "none+agc", "lr"].iloc[0])
        lam = float(df.loc[df["series"] == "none+agc", "agc_lambda"].iloc[0])
        found.append(
            Claim(
                f"(beyond the papers) With AGC (λ={lam:g}) the network without BN trains at lr {lr:g}, "
                "where without clipping it diverges (Fig. 1): it has not diverged by the probed mini-batches",
                "fraction of the probed mini-batches at which the no-BN + AGC loss before the step is finite",
                float(everything.loc["none+agc", "trained"].mean()),
                ">=",
                1.0,
            )
        )
        if "none" in present:
            found.append(
                Claim(
                    f"(beyond the papers) With AGC (λ={lam:g}) the no-BN network's loss decreases over a far larger "
                    "range of step sizes than without, as it does with BN (the threshold of the BN claim)",
                    "largest step size up to which every probed step lowers the loss, no BN + AGC / no BN; "
                    "smallest ratio over the probed mini-batches",
                    _lowering_ratio(_series(summary, "none+agc"), _series(summary, "none")),
                    ">=",
                    10.0,
                )
            )
    return found
