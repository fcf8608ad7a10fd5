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

from ..constants import DIVERGENCE
from ..claims import Claim, near
from ..plots import figure, series_color, series_label, series_linestyle

__all__ = ["claims", "plot", "step_size_summary"]

TITLE = "Relative loss along the update direction, early in training (Bjorck et al. 2018, Fig. 3)"
Y_CEILING = 1e6  # the paper's axis reaches 10^6; larger or non-finite values are drawn at the edge

# The paper's magnitudes (PAPERS.md section D, read off Fig. 3 to a factor ~2); each claim's
# band says how far from them it accepts.
PAPER_STEPS = (1e-5, 1e-1)  # the step sizes the paper plots
BN_LOWEST = 0.7  # BN: the minimum relative loss, near steps 0.03-0.1
BN_HIGHEST = 3.0  # BN: the relative loss stays within ~0.65-3 over the plotted steps
NO_BN_LOWEST = 0.1  # no BN, mini-batch 1: the minimum relative loss, near step 2e-4
NO_BN_DIVERGES_AT = 1e-3  # no BN: every curve passes 1e3 above ~1e-3
NO_BN_EXPLODES_AT = 4e-3  # no BN: every curve passes 1e6 by ~3-6e-3
RANGE_RATIO = 100.0  # BN lowers the loss up to ~1e-1, no BN up to ~1e-3
# "Lowers the loss": a relative loss below 0.9 somewhere, a tenth of the loss gone. The
# paper's minima are ~0.7 (BN) and ~0.1 (no BN): both clear it, BN's with room for reading
# it 30% too low; a flat curve (0.99999, a network that does not move) does not.
LOWERS = 0.9
# A ratio of two float32 losses is exact to a few 1e-7: closer to 1 is "no change".
LOSS_RESOLUTION = 1e-6


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

    * ``lowering_up_to``: the largest step size such that it lowers the loss (relative loss
      < 1) and no smaller probed step raises it (relative loss >= 1 + :data:`LOSS_RESOLUTION`,
      the float32 noise of a ratio of two losses), provided the curve gets below
      :data:`LOWERS` in that band; NaN otherwise (a flat curve lowers the loss by nothing
      worth a range; and the update direction includes the momentum buffer, which need not
      be a descent direction for this batch).
      Contiguity matters: far past divergence a ReLU network can die (every unit off),
      its output collapse to the classifier's bias and the loss fall back to log(10),
      which is no sign of a forgiving landscape.
    * ``lowest``: the smallest relative loss in that band within the paper's plotted steps
      (:data:`PAPER_STEPS`); the relative loss at the smallest step if the band is empty;
    * ``highest``: the largest relative loss within the paper's plotted steps (inf if one
      is not finite);
    * ``diverging_from``, ``exploding_from``: the smallest step size whose relative loss is
      > 1e3 (> 1e6) or not finite; inf if none did;
    * ``smallest_step``, ``largest_step``: the ends of the probed grid;
    * ``trained``: the loss before the step is finite. When it is not, training had
      already diverged before this batch and there is no landscape to measure: the claims
      leave such probes out (and one claim counts them).
    """
    rows = []
    for (seed, s, b), g in df.groupby(["seed", "series", "batch"], sort=False):
        g = g.sort_values("step_size")
        steps = g["step_size"].to_numpy(dtype=float)
        relative = _as_relative(g)
        band = np.cumprod(relative < 1.0 + LOSS_RESOLUTION).astype(bool)  # up to the first step that raises the loss
        shown = (steps >= PAPER_STEPS[0]) & (steps <= PAPER_STEPS[1])
        lowering = band & (relative < 1.0)
        useful = lowering.any() and relative[band].min() < LOWERS
        diverged = g["diverged"].to_numpy(dtype=bool)
        exploded = relative > Y_CEILING
        rows.append(
            {
                "seed": seed,
                "series": s,
                "batch": b,
                "lowering_up_to": steps[lowering].max() if useful else np.nan,
                "lowest": relative[band & shown].min() if (band & shown).any() else relative[0],
                "highest": relative[shown].max() if shown.any() else np.nan,
                "smallest_step": steps[0],
                "diverging_from": steps[diverged].min() if diverged.any() else np.inf,
                "exploding_from": steps[exploded].min() if exploded.any() else np.inf,
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


def _lowering_ratios(wide: pd.DataFrame, narrow: pd.DataFrame) -> pd.Series:
    """Per batch probed in both, ``lowering_up_to`` of ``wide`` / ``narrow``; a wide-range
    network without a range of lowering steps counts as 0, a narrow one as its smallest
    step (the ratio is then a lower bound)."""
    top = wide["lowering_up_to"].fillna(0.0)
    bottom = narrow["lowering_up_to"].fillna(narrow["smallest_step"])
    return (top / bottom).dropna()


def _measured(
    claim: str, metric: str, values: pd.Series, reduce: str, missing: str, kind: str = "paper", **comparison
) -> Claim:
    """A claim on ``values`` (one per probed mini-batch) reduced by ``reduce`` (max, min,
    median); not evaluable, with ``missing`` as the reason, when there is no value."""
    values = values.astype(float)
    if values.empty:
        return Claim(claim, metric, np.nan, kind=kind, evaluable=False, note=missing, **comparison)
    value = float(values.median()) if reduce == "median" else float(getattr(values, reduce)())
    return Claim(claim, metric, value, kind=kind, **comparison)


def _gone(label: str) -> str:
    return f"{label}: training diverged before every probed mini-batch (loss before the step not finite)"


def _lowers_claim(summary: pd.DataFrame, name: str, label: str, kind: str, said: str) -> Claim:
    # LOWERS: see its definition.
    return _measured(
        f"{said} a step along the update lowers the loss (relative loss below {LOWERS:g}) at every probed mini-batch",
        f"lowest relative loss at steps {PAPER_STEPS[0]:g}..{PAPER_STEPS[1]:g} before the curve first rises, {label}; "
        "largest over the probed mini-batches",
        _series(summary, name)["lowest"],
        "max",
        _gone(label),
        kind=kind,
        comparison="<",
        threshold=LOWERS,
    )


def _range_claim(summary: pd.DataFrame, name: str, label: str, kind: str, said: str) -> Claim:
    ratios = _lowering_ratios(_series(summary, name), _series(summary, "none"))
    # The paper's BN lowers the loss up to ~1e-1, no BN up to ~1e-3 (PAPERS.md D): a ratio ~100,
    # read to a factor ~2 off log axes; a factor 10 either way is a different landscape.
    return _measured(
        f"{said} the loss decreases over a far larger range of step sizes than without BN "
        f"(paper: BN up to ~1e-1, no BN up to ~1e-3: a ratio ~{RANGE_RATIO:g})",
        f"largest step up to which every probed step lowers the loss (and the curve gets below {LOWERS:g}), "
        f"{label} / no BN; median over the probed mini-batches ({label} with no such range: 0; no BN with "
        "none: its smallest step, a lower bound)",
        ratios,
        "median",
        f"{label} or no BN: no probed mini-batch at which both were still training",
        kind=kind,
        **near(RANGE_RATIO, 10),
    )


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    """The paper's claims on the probes of networks still training (finite loss before the
    step), with the magnitudes it shows (PAPERS.md section D); a first, sanity claim counts
    those probes for the no-BN network, whose learning rate is the largest at which the
    paper trains it (Fig. 1). The NF and AGC rows are extensions (kind ``extension``)."""
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
                kind="sanity",
            )
        )
    if "bn" in present:
        bn = _series(summary, "bn")
        found.append(_lowers_claim(summary, "bn", "BN", "paper", "With BN"))
        found.append(
            _measured(
                f"With BN the relative loss reaches a minimum of ~{BN_LOWEST:g} (paper, near steps 0.03-0.1)",
                f"lowest relative loss at steps {PAPER_STEPS[0]:g}..{PAPER_STEPS[1]:g} before the curve first rises, "
                "BN; median over the probed mini-batches",
                bn["lowest"],
                "median",
                _gone("BN"),
                # The paper's ~0.7 read to a factor 2 below; above, the margin of "lowers the loss".
                comparison="between",
                threshold=BN_LOWEST / 2,
                threshold_high=LOWERS,
            )
        )
        found.append(
            _measured(
                f"With BN the relative loss stays within ~0.65-{BN_HIGHEST:g} over steps "
                f"{PAPER_STEPS[0]:g}..{PAPER_STEPS[1]:g} (paper): no divergence",
                f"largest relative loss at steps {PAPER_STEPS[0]:g}..{PAPER_STEPS[1]:g}, BN; largest over the "
                "probed mini-batches",
                bn["highest"],
                "max",
                _gone("BN"),
                # The paper's upper end ~3, read to a factor 2.
                comparison="<=",
                threshold=2 * BN_HIGHEST,
            )
        )
    if "none" in present:
        none = _series(summary, "none")
        first = none[none.index == 1]
        found.append(
            _measured(
                f"Without BN a small step lowers the loss a lot at mini-batch 1 (paper: to ~{NO_BN_LOWEST:g} "
                "near step 2e-4)",
                f"lowest relative loss at steps {PAPER_STEPS[0]:g}..{PAPER_STEPS[1]:g} before the curve first rises, "
                "no BN, mini-batch 1",
                first["lowest"],
                "max",
                "no BN: mini-batch 1 was not probed, or training had diverged before it",
                # Read off the paper's log axis to a factor ~2; a factor 3 either way.
                **near(NO_BN_LOWEST, 3),
            )
        )
        found.append(
            _measured(
                f"Without BN every curve explodes past a small step: relative loss > {DIVERGENCE:g} "
                f"from a step of ~{NO_BN_DIVERGES_AT:g} (paper)",
                f"smallest step with relative loss > {DIVERGENCE:g} or not finite, no BN; largest over the probed "
                "mini-batches (inf: never)",
                none["diverging_from"],
                "max",
                _gone("no BN"),
                # "~1e-3" read to a factor 2, on a grid of 3 steps per decade: a factor 5 either way.
                **near(NO_BN_DIVERGES_AT, 5),
            )
        )
        found.append(
            _measured(
                f"Without BN the relative loss reaches {Y_CEILING:g} by a step of ~3-6e-3 (paper)",
                f"smallest step with relative loss > {Y_CEILING:g} or not finite, no BN; largest over the probed "
                "mini-batches (inf: never)",
                none["exploding_from"],
                "max",
                _gone("no BN"),
                # The middle of the paper's 3-6e-3, a factor 5 either way as above.
                **near(NO_BN_EXPLODES_AT, 5),
            )
        )
    if {"bn", "none"} <= present:
        found.append(_range_claim(summary, "bn", "BN", "paper", "With BN"))
    if "nf" in present:
        found.append(_lowers_claim(summary, "nf", "NF", "extension", "(beyond the paper) For the NF-ResNet, trained at BN's lr,"))
        if "none" in present:
            found.append(_range_claim(summary, "nf", "NF", "extension", "(beyond the paper) For the NF-ResNet, as with BN,"))
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
                kind="extension",
            )
        )
        said = f"(beyond the papers) For the no-BN network trained with AGC (λ={lam:g}),"
        found.append(_lowers_claim(summary, "none+agc", "no BN + AGC", "extension", said))
        if "none" in present:
            found.append(_range_claim(summary, "none+agc", "no BN + AGC", "extension", f"{said} as with BN,"))
    return found
