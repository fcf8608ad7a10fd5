"""Figure 7 of Bjorck et al. 2018: singular values of products of random Gaussian matrices.

No network: for each number of factors (1, 3, 5 in the paper) we draw ``samples``
independent products of ``size x size`` matrices with i.i.d. N(0, 1/size) entries (see
:mod:`nfstudy.randmat`) and keep every singular value. The paper does not state the
matrix size; 1000 is our choice for the paper profile (a parameter). The matrices are
drawn on the CPU (the same numbers on every device), multiplied and decomposed in float64
on the run's device.

Seed ``s`` draws the products of ``k`` factors from ``torch.Generator().manual_seed(1000 s + k)``.

The tables ``run`` returns and their columns: ``TABLES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nfstudy.claims import Claim, near
from nfstudy.params import check_positive
from nfstudy.plots import figure
from nfstudy.randmat import fuss_catalan_edge, product_singular_values
from nfstudy.runtime import derived_seed, progress, resolve_device

from ._common import empty_figure, lacking, placeholder_claims, say_missing, unevaluable

FIGURE = "fig7"
TITLE = "Singular values of products of random Gaussian matrices (Bjorck et al. 2018, Fig. 7)"


@dataclass(frozen=True)
class Params:
    size: int = 1000  # rows = columns of every factor
    factors: tuple[int, ...] = (1, 3, 5)  # numbers of factors compared
    samples: int = 10  # independent products per number of factors
    small: float = 0.1  # "near 0": below this singular value (their mean square is 1)

    def __post_init__(self):
        check_positive("size", self.size, integer=True)
        check_positive("samples", self.samples, integer=True)
        check_positive("small", self.small)
        if not self.factors:
            raise ValueError("factors must list at least one number of factors, e.g. 1,3,5")
        for k in self.factors:
            check_positive("factors", k, integer=True)
        if list(self.factors) != sorted(set(self.factors)):
            raise ValueError(f"factors must be distinct and increasing, got {self.factors!r}")


PROFILES = {
    "paper": Params(),
    "quick": Params(size=300, samples=10),  # 3000 singular values per histogram, seconds on a CPU
}


TABLES = {
    "singular_values": {  # every singular value of every product
        "factors": "the number of factors in the product",
        "sample": "the product drawn (0 .. samples-1)",
        "index": "the singular value's rank, descending within a sample",
        "singular_value": "the singular value",
    },
    "singular_value_summary": {  # one row per number of factors
        "factors": "as in singular_values",
        "size": "the matrices are size x size",
        "samples": "products drawn",
        "mean_square": "mean of the squared singular values (1 in expectation)",
        "largest": "the largest singular value, mean over samples",
        "edge": "its Fuss-Catalan limit",
        "median": "the median singular value",
        "small": "the threshold below which a singular value counts as small",
        "frac_small": "the fraction of singular values below small",
    },
}


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    if device.type == "mps":
        device = torch.device("cpu")  # MPS has no float64
    values, summary = [], []
    for k in progress(params.factors, desc="fig7: random matrix products", unit="k"):
        sv = product_singular_values(params.size, k, params.samples, seed=derived_seed(seed, k), device=device).numpy()
        samples, size = sv.shape
        values.append(
            pd.DataFrame(
                {
                    "factors": k,
                    "sample": np.repeat(np.arange(samples), size),
                    "index": np.tile(np.arange(size), samples),
                    "singular_value": sv.reshape(-1),
                }
            )
        )
        summary.append(
            {
                "factors": k,
                "size": params.size,
                "samples": samples,
                "mean_square": float((sv**2).mean()),  # 1 by construction, in expectation
                "largest": float(sv[:, 0].mean()),  # mean over samples of the largest
                "edge": fuss_catalan_edge(k),  # its n -> inf limit
                "median": float(np.median(sv)),
                "small": params.small,
                "frac_small": float((sv < params.small).mean()),
            }
        )
    return {"singular_values": pd.concat(values, ignore_index=True), "singular_value_summary": pd.DataFrame(summary)}


# -------------------- the figure and its claims, drawn from the tables alone


# The paper's magnitudes (docs/papers.md#bjorck-fig-7, read off its Fig. 7): the support
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
    missing = lacking(tables, "singular_values", "singular_value_summary")
    if "singular_values" in missing:  # the histograms are the figure
        return empty_figure(TITLE, missing, "the histograms")
    values = tables["singular_values"]
    summary = tables["singular_value_summary"] if not missing else _summary_columns(values)
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
    if missing:
        say_missing(fig, missing, "the fraction below the threshold and the largest value (shown as nan)")
    return fig


def _summary_columns(values: pd.DataFrame) -> pd.DataFrame:
    """A summary with what ``values`` says and no measured numbers: a stand-in for an absent
    ``singular_value_summary`` (the threshold ``small`` is the default's; the plot shows nan,
    the claims are made not evaluable)."""
    rows = values.groupby("factors")["sample"].nunique().rename("samples").reset_index()
    one = [c for c in ("seed", "factors", "sample") if c in values]  # the singular values of one product
    size = int(values.groupby(one).size().max()) if len(values) else 0
    return rows.assign(
        size=size,
        mean_square=np.nan,
        largest=np.nan,
        edge=[fuss_catalan_edge(int(k)) for k in rows["factors"]],
        median=np.nan,
        small=Params().small,
        frac_small=np.nan,
    )


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    """Every claim is a theorem about random matrices (kind ``sanity``): it checks the
    set-up, and counts toward no reproduction score."""
    if lacking(tables, "singular_value_summary"):  # the factor counts of the values, their claims not evaluable
        if lacking(tables, "singular_values"):
            return placeholder_claims(FIGURE, ["singular_value_summary"])
        return unevaluable(claims({"singular_value_summary": _summary_columns(tables["singular_values"])}), ["singular_value_summary"])
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
