"""The AGC ablation of Brock et al. 2021 (NFNets, Fig. 2): accuracy across batch sizes and
clipping thresholds.

Tables: ``summary`` (one row per seed and run: series, norm, agc_lambda (NaN: not
clipped), batch_size, base_lr, status, diverged, diverged_step, diverged_loss, steps,
epochs, initial_loss, final train/test loss and accuracy (NaN for a diverged run),
chance_accuracy) and ``history`` (one row per run and epoch).

A diverged run's network predicts nothing: wherever runs are compared (the panels, the
claims) its accuracy counts as chance, ``chance_accuracy``, and it is marked as diverged.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..claims import Claim
from ..params import AGC_SUFFIX
from ..plots import figure, series_color, series_label, series_linestyle

__all__ = ["best_lambda", "claims", "lambda_spread", "loosest_good_lambda", "panel_a", "plot", "test_accuracy"]

TITLE = "Adaptive gradient clipping across batch sizes (Brock et al. 2021, NFNets Fig. 2)"


def test_accuracy(summary: pd.DataFrame) -> pd.Series:
    """Final test accuracy in [0, 1]; a diverged run counts as chance."""
    return summary["final_test_accuracy"].where(~summary["diverged"].astype(bool), summary["chance_accuracy"])


def _clipped(summary: pd.DataFrame) -> pd.Series:
    return summary["agc_lambda"].notna()


def _with_accuracy(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary (any index: seeds' tables may be concatenated as they are) with an
    ``accuracy`` column, :func:`test_accuracy`."""
    summary = summary.reset_index(drop=True)
    return summary.assign(accuracy=test_accuracy(summary))


def best_lambda(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, series, batch_size) of the clipped series: the threshold with the highest
    final test accuracy (diverged = chance). Ties go to the larger threshold, the loosest
    clipping that reaches the best accuracy (at a batch where clipping changes nothing,
    every threshold ties and the answer is "clip as little as the sweep allows").

    Columns: seed, series, norm, batch_size, base_lr, agc_lambda, accuracy, diverged.
    """
    summary = _with_accuracy(summary)
    agc = summary[_clipped(summary)]
    if agc.empty:
        return agc.assign(accuracy=[])[["seed", "series", "norm", "batch_size", "base_lr", "agc_lambda", "accuracy", "diverged"]]
    ranked = agc.sort_values(["accuracy", "agc_lambda"], ascending=[False, False], kind="mergesort")
    best = ranked.groupby(["seed", "series", "batch_size"], sort=False).head(1)
    best = best.sort_values(["seed", "series", "batch_size"], kind="mergesort")
    return best[["seed", "series", "norm", "batch_size", "base_lr", "agc_lambda", "accuracy", "diverged"]].reset_index(drop=True)


def panel_a(summary: pd.DataFrame) -> pd.DataFrame:
    """What panel (a) draws, per seed, series and batch size: the unclipped series' accuracy
    and, for a clipped series, the accuracy at its best threshold (:func:`best_lambda`)."""
    summary = _with_accuracy(summary)
    plain = summary[~_clipped(summary)]
    columns = ["seed", "series", "norm", "batch_size", "base_lr", "agc_lambda", "accuracy", "diverged"]
    return pd.concat([plain[columns], best_lambda(summary)[columns]], ignore_index=True)


def _mean_std(df: pd.DataFrame, by: str) -> pd.DataFrame:
    stats = df.groupby(by)["accuracy"].agg(["mean", "std", "size"]).reset_index()
    return stats.assign(std=stats["std"].fillna(0.0))


def _batch_colors(batch_sizes) -> dict[int, tuple]:
    """Orange (the smallest batch) to dark purple (the largest): ordered, and every step visible."""
    import seaborn as sns

    palette = sns.color_palette("flare", n_colors=max(len(batch_sizes), 2))
    return {b: palette[i] for i, b in enumerate(sorted(batch_sizes))}


def _diverged_at(runs: pd.DataFrame, n_seeds: int) -> str:
    """``"B=1024"`` or, over seeds, ``"B=1024 (2 of 3 seeds)"``."""
    gone = runs[runs["diverged"].astype(bool)].groupby("batch_size")["seed"].nunique()
    if n_seeds == 1:
        return ", ".join(f"B={b}" for b in gone.index)
    return ", ".join(f"B={b} ({k} of {n_seeds} seeds)" for b, k in gone.items())


def _log2_batch_axis(ax, batch_sizes) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(batch_sizes) / 1.5, max(batch_sizes) * 1.5)  # room for the labels at the ends
    ax.set_xticks(sorted(batch_sizes))
    ax.set_xticklabels([str(b) for b in sorted(batch_sizes)])
    ax.minorticks_off()


def plot(tables: dict[str, pd.DataFrame]):
    """(a) final test accuracy (%) against batch size, one line per series (a clipped series
    at its best threshold per batch size, the threshold written beside each point), mean
    +- std over seeds; (b) one panel per clipped series: final test accuracy against the
    threshold, one line per batch size (light: small, dark: large), the unclipped network
    of the same norm as a dotted level in the batch's colour. Diverged runs are crosses at
    chance level."""
    summary = _with_accuracy(tables["summary"])
    seeds = sorted(summary["seed"].unique())
    n_seeds = len(seeds)
    order = list(dict.fromkeys(summary["series"]))
    clipped = [s for s in order if s.endswith(AGC_SUFFIX)]
    batch_sizes = sorted(summary["batch_size"].unique())
    chance = 100 * float(summary["chance_accuracy"].iloc[0])
    fig, axes = figure(1, 1 + len(clipped), width=5.0, height=4.0)
    axes = axes[0]
    handles = []

    ax = axes[0]
    a = panel_a(summary)
    for series in order:
        color = series_color(series)
        runs = a[a["series"] == series]
        stats = _mean_std(runs, "batch_size")
        x, m, s = stats["batch_size"], 100 * stats["mean"], 100 * stats["std"]
        ax.plot(x, m, color=color, lw=1.8, marker="o", ms=4, zorder=3, ls=series_linestyle(series))
        if n_seeds > 1:
            ax.fill_between(x, (m - s).clip(0, 100), (m + s).clip(0, 100), color=color, alpha=0.2, lw=0)
        gone = runs[runs["diverged"].astype(bool)]
        if len(gone):
            ax.scatter(gone["batch_size"], [chance] * len(gone), marker="x", s=70, lw=2, color=color, zorder=4)
        label = series_label(series) + (" (best λ per batch)" if series in clipped else "")
        if len(gone):
            label += f": diverged at {_diverged_at(runs, n_seeds)}"
        handles.append(Line2D([], [], color=color, lw=1.8, marker="o", ms=4, ls=series_linestyle(series), label=label))
        if series in clipped:
            for b, g in runs.groupby("batch_size"):
                lams = g["agc_lambda"].value_counts()
                text = "λ=" + "/".join(f"{v:g}" for v in sorted(lams.index[lams == lams.max()]))
                y = 100 * g["accuracy"].mean()
                ax.annotate(text, (b, y), xytext=(0, -13), textcoords="offset points", ha="center", fontsize=7, color=color,
                            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))  # fmt: skip
    _log2_batch_axis(ax, batch_sizes)
    ax.axhline(chance, color="0.6", lw=0.8, ls=":", zorder=0)
    ax.set_ylim(0, 102)
    ax.set_xlabel("batch size (lr ∝ batch size)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("(a) accuracy across batch sizes")
    lrs = summary.drop_duplicates("batch_size").sort_values("batch_size")
    secondary = ax.secondary_xaxis("top")
    secondary.set_xscale("log", base=2)
    secondary.set_xticks(lrs["batch_size"].tolist())
    secondary.set_xticklabels([f"{v:g}" for v in lrs["base_lr"]], fontsize=7)
    secondary.minorticks_off()
    secondary.set_xlabel("learning rate", fontsize=8)

    colors = _batch_colors(batch_sizes)
    for ax, series in zip(axes[1:], clipped):
        runs = summary[summary["series"] == series]
        norm = runs["norm"].iloc[0]
        unclipped = summary[(summary["norm"] == norm) & ~_clipped(summary)]
        for b in batch_sizes:
            color = colors[b]
            g = runs[runs["batch_size"] == b]
            stats = _mean_std(g, "agc_lambda")
            x, m, s = stats["agc_lambda"], 100 * stats["mean"], 100 * stats["std"]
            lr = float(g["base_lr"].iloc[0])
            ax.plot(x, m, color=color, lw=1.8, marker="o", ms=4, label=f"B={b} (lr {lr:g})", zorder=3)
            top = int(np.argmax(m.to_numpy()[::-1]))  # ties to the larger threshold, as in the claims
            top = len(m) - 1 - top
            ax.plot(x.iloc[top], m.iloc[top], marker="o", ms=11, mfc="none", mec=color, mew=1.6, ls="none", zorder=4)
            if n_seeds > 1:
                ax.fill_between(x, (m - s).clip(0, 100), (m + s).clip(0, 100), color=color, alpha=0.2, lw=0)
            gone = g[g["diverged"].astype(bool)]
            if len(gone):
                ax.scatter(gone["agc_lambda"], [chance] * len(gone), marker="x", s=60, lw=2, color=color, zorder=4)
            level = unclipped[unclipped["batch_size"] == b]
            if len(level):
                ax.axhline(100 * level["accuracy"].mean(), color=color, lw=1.0, ls=":", zorder=1)
        lams = sorted(runs["agc_lambda"].unique())
        ax.set_xscale("log")
        ax.set_xticks(lams)
        ax.set_xticklabels([f"{v:g}" for v in lams])
        ax.minorticks_off()
        ax.axhline(chance, color="0.6", lw=0.8, ls=":", zorder=0)
        ax.set_ylim(0, 102)
        ax.set_xlabel("clipping threshold λ")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"(b) {series_label(series)}: accuracy across λ")
        extra = [
            Line2D([], [], color="0.4", ls="none", marker="o", ms=9, mfc="none", mew=1.4, label="best λ (mean)"),
            Line2D([], [], color="0.4", lw=1.0, ls=":", label=f"{series_label(norm)} without AGC"),
        ]
        ax.legend(handles=ax.get_legend_handles_labels()[0] + extra, fontsize=7, loc="lower left", frameon=True)
    handles.append(Line2D([], [], color="0.5", ls="none", marker="x", ms=7, mew=2, label="diverged (drawn at chance)"))
    subtitle = f"mean ± std of {n_seeds} seeds" if n_seeds > 1 else f"seed {seeds[0]}"
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False,
               handlelength=3.2)  # long enough to show a dashed line  # fmt: skip
    fig.suptitle(f"{TITLE}\n{subtitle}", fontsize=10)
    return fig


# The claims' numbers, in percentage points of final test accuracy. From the paper (NFNets
# Fig. 2a, PAPERS.md section D): at every batch size 256 ... 4096 NF + AGC ends at 76.7-76.95%
# and BN at 76.4-76.9%, so their gap is at most ~0.5 points, and BN's spread across batch sizes
# is ~0.5 points ("flat").
PAPER_GAP = 0.5
# Run-to-run noise of one final test accuracy, fixed before measuring: two standard errors of
# an accuracy near 95% on the quick profile's 299 test images, 2 * sqrt(0.95 * 0.05 / 299) =
# 2.5 points (CIFAR-10's 10,000 test images give 0.4: the band is loose, never tight, there).
NOISE = 2.5
# "Keeps BN's accuracy" / "flat": the paper's gap plus our noise, +-3 points.
PARITY_BAND = PAPER_GAP + NOISE
# The unclipped NF-ResNet "collapses" at the largest batch (after 76.6-76.9% up to 2048): a drop
# from its smallest-batch accuracy of at least 10 points, more than three parity bands, so no
# noise passes it.
COLLAPSE = 10.0
# "Trained" is well above chance: at least half-way from chance to 100% (the paper's BN
# ResNet-50 is at 76% with 1000 classes, 0.76 of the way).
TRAINED_FRACTION = 0.5


def _accuracy_at(a: pd.DataFrame, series: str) -> pd.Series:
    """Panel (a)'s accuracy of ``series`` in points, indexed by batch size."""
    return 100.0 * a[a["series"] == series].set_index("batch_size")["accuracy"].sort_index()


def _signed_worst(deviation: pd.Series) -> tuple[float, int]:
    """The deviation of largest magnitude, with its batch size."""
    batch = int(deviation.abs().idxmax())
    return float(deviation[batch]), batch


def _per_batch(values: pd.Series) -> str:
    return ", ".join(f"B={b}: {v:+.1f}" for b, v in values.items())


def lambda_spread(summary: pd.DataFrame, series: str) -> pd.Series:
    """Per batch size, max - min final test accuracy (points, diverged = chance) of ``series``
    across its thresholds: how much λ matters there."""
    s = _with_accuracy(summary)
    acc = 100.0 * s[s["series"] == series].groupby("batch_size")["accuracy"].agg(lambda a: a.max() - a.min())
    return acc.sort_index()


def loosest_good_lambda(summary: pd.DataFrame, series: str, tolerance: float = NOISE) -> pd.Series:
    """Per batch size, the largest threshold whose accuracy is within ``tolerance`` points of
    the best threshold's: the loosest clipping that loses nothing measurable. (The arg-max
    alone would pick among thresholds that tie within noise at random.)"""
    s = _with_accuracy(summary)
    runs = s[s["series"] == series].assign(points=lambda d: 100.0 * d["accuracy"])
    best = runs.groupby("batch_size")["points"].transform("max")
    good = runs[runs["points"] >= best - tolerance]
    return good.groupby("batch_size")["agc_lambda"].max().sort_index()


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    """The paper's claims of Fig. 2 for one seed (points of final test accuracy; a diverged
    run counts as chance; a clipped series at its best threshold per batch, panel (a)):

    * BN trained at every batch size: its lowest accuracy is at least half-way from chance
      to 100% (:data:`TRAINED_FRACTION`);
    * BN flat: its accuracy at every batch within :data:`PARITY_BAND` of its smallest-batch
      accuracy (the deviation of largest magnitude is the value);
    * parity: each clipped series (``nf+agc``) within :data:`PARITY_BAND` of BN at every
      batch size (the gap of largest magnitude is the value);
    * collapse: the unclipped network of each clipped series' norm (``nf``) ends at least
      :data:`COLLAPSE` points below its smallest-batch accuracy at the largest batch;
    * smaller λ at larger batch: the loosest good threshold (:func:`loosest_good_lambda`) at
      the largest batch / at the smallest < 1; not evaluable when λ does not matter at the
      largest batch (spread across thresholds within :data:`NOISE`).

    A claim whose series is missing (no BN run, say) is left out; one batch size: no claims.
    """
    summary = tables["summary"].reset_index(drop=True)
    batch_sizes = sorted(summary["batch_size"].unique())
    if len(batch_sizes) < 2:
        return []
    small, large = batch_sizes[0], batch_sizes[-1]
    chance = 100.0 * float(summary["chance_accuracy"].iloc[0])
    a = panel_a(summary)
    series = list(dict.fromkeys(summary["series"]))
    clipped = [s for s in series if s.endswith(AGC_SUFFIX)]
    found = []
    band = {"comparison": "between", "threshold": -PARITY_BAND, "threshold_high": PARITY_BAND}
    if "bn" in series:
        bn = _accuracy_at(a, "bn")
        trained = chance + TRAINED_FRACTION * (100.0 - chance)
        found.append(
            Claim(
                "BN stays trained at every batch size (paper: BN-ResNet-50 at 76.4-76.9% from batch 256 to 4096)",
                "lowest final test accuracy of BN across batch sizes (%); trained = half-way from chance to 100%",
                float(bn.min()),
                ">=",
                trained,
                note=f"lowest at B={int(bn.idxmin())}; chance {chance:.1f}%",
            )
        )
        deviation, batch = _signed_worst(bn - bn[small])
        found.append(
            Claim(
                f"BN's accuracy is flat across batch sizes (paper: spread ~{PAPER_GAP:g} points over batch 256-4096)",
                f"BN's accuracy minus its accuracy at the smallest batch, the batch where it deviates most (points; "
                f"band: the paper's {PAPER_GAP:g} + noise {NOISE:g})",
                deviation,
                **band,
                note=f"largest at B={batch}: {_per_batch(bn - bn[small])}",
            )
        )
    for clip in clipped:
        norm = summary.loc[summary["series"] == clip, "norm"].iloc[0]
        name = series_label(clip)
        if "bn" in series:
            gap = _accuracy_at(a, clip) - _accuracy_at(a, "bn")
            worst, batch = _signed_worst(gap)
            found.append(
                Claim(
                    f"{name} keeps BN's accuracy at every batch size (paper: NF + AGC 76.7-76.95%, BN 76.4-76.9%)",
                    f"{name} (best λ) minus BN, at the batch size where the gap is largest (points; band: the paper's "
                    f"{PAPER_GAP:g} + noise {NOISE:g})",
                    worst,
                    **band,
                    note=f"largest at B={batch}: {_per_batch(gap)}",
                )
            )
        if ((summary["norm"] == norm) & ~_clipped(summary)).any():
            plain = a[(a["norm"] == norm) & a["agc_lambda"].isna()]
            unclipped = plain["series"].iloc[0]
            acc = _accuracy_at(a, unclipped)
            found.append(
                Claim(
                    f"Without AGC the {series_label(unclipped)} collapses at the largest batch (paper: 76.6-76.9% up to "
                    "batch 2048, then it collapses at 4096)",
                    f"accuracy of {series_label(unclipped)} at the smallest batch minus at the largest (points)",
                    float(acc[small] - acc[large]),
                    ">=",
                    COLLAPSE,
                    note=f"B={small}: {acc[small]:.1f}%, B={large}: {acc[large]:.1f}%",
                )
            )
        spread = lambda_spread(summary, clip)
        loosest = loosest_good_lambda(summary, clip)
        matters = bool(spread[large] > NOISE)
        found.append(
            Claim(
                f"Larger batches need a smaller clipping threshold ({name}; paper: λ up to 0.16 at small batches, 0.01 "
                "at 4096)",
                f"loosest good λ at the largest batch / at the smallest (good: within {NOISE:g} points of the best λ's "
                "accuracy)",
                float(loosest[large] / loosest[small]),
                "<",
                1.0,
                evaluable=matters,
                note=(
                    f"loosest good λ: {', '.join(f'B={b}: {v:g}' for b, v in loosest.items())}; accuracy spread across λ "
                    f"(points): {', '.join(f'B={b}: {v:.1f}' for b, v in spread.items())}"
                    + ("" if matters else f"; at B={large} within the noise ({NOISE:g} points): λ does not matter there")
                ),
            )
        )
    return found
