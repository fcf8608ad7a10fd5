"""Figure 2 of Bjorck et al. 2018: the gradients of one conv kernel at initialisation.

A freshly initialised ResNet sees one training mini-batch (train mode: BatchNorm uses
the batch's statistics), and we keep every value of the gradient of the loss with
respect to the weight of weight layer ``layer`` (layer 55 of ResNet-110 in the paper:
``layer2.8.branch.conv2``, the middle of the network). Series: with BN, without BN
(the same network, BatchNorm removed, the same initial conv weights) and the
NF-ResNet.

The NF series uses ``nf_skip_gain_init = 1``: with SkipInit's zero gain every
residual-branch weight gets exactly zero gradient at initialisation (the gain is the
only path to it), so its histogram would be a spike at 0.

The tables ``run`` returns and their columns: ``TABLES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nfstudy.claims import Claim, near
from nfstudy.data import load_dataset
from nfstudy.models import PAPER_INIT, get_layer
from nfstudy.plots import figure, series_color, series_label
from nfstudy.probes import weight_gradients
from nfstudy.runtime import progress, resolve_device

from ._common import (
    NetworkParams,
    built_series,
    check_network_params,
    empty_figure,
    lacking,
    make_resnet,
    placeholder_claims,
    say_missing,
    unevaluable,
)
from ._common import dropped_claims as dropped_claims  # the notebook adds them to the claims

FIGURE = "fig2"
TITLE = "Gradients of a conv kernel at initialisation (Bjorck et al. 2018, Fig. 2)"


@dataclass(frozen=True)
class Params(NetworkParams):
    layer: int = 55  # weight layer, numbered from the input (1..depth)
    batch_size: int = 128  # images in the one mini-batch (paper: 128)
    init: str = PAPER_INIT  # the paper's network, identified by measurement: results/init_survey/
    series: tuple[str, ...] = ("bn", "none", "nf")  # networks: bn | none | ws | nf (paper: bn, none)
    augment: bool = True  # the mini-batch as training would see it (crop + flip)
    nf_skip_gain_init: float = 1.0  # see the module docstring
    model: str = "cifar_resnet"  # cifar_resnet (the paper's) | torchvision_resnet (docs/papers.md#bjorck-reproduction, depth 101)

    def __post_init__(self):
        check_network_params(self)
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or not 1 <= self.layer <= self.depth:
            raise ValueError(f"layer must be a weight layer 1..{self.depth} of a ResNet-{self.depth}, got {self.layer!r}")


PROFILES = {
    "paper": Params(),
    # Same network and code path; the bundled digits instead of CIFAR-10 (at
    # initialisation a ResNet-110 costs a few seconds on a CPU).
    "quick": Params(dataset="digits"),
}


def _excess_kurtosis(x: torch.Tensor) -> float:
    x = x.double()
    z = (x - x.mean()) / x.std(unbiased=False)
    return float((z**4).mean() - 3.0)


TABLES = {
    "gradient_values": {  # every value of the layer's weight gradient
        "series": "bn | none | nf",
        "layer": "the weight layer's number (1 = the stem conv)",
        "layer_name": "its module name, e.g. layer2.8.branch.conv2",
        "index": "the value's position in the flattened gradient",
        "value": "d loss / d weight",
    },
    "gradient_summary": {  # one row per series
        "series": "as in gradient_values",
        "layer": "as in gradient_values",
        "layer_name": "as in gradient_values",
        "n": "number of gradient values",
        "loss": "the mini-batch's loss",
        "mean": "mean of the values",
        "std": "their standard deviation",
        "max_abs": "largest |value|",
        "kurtosis": "excess kurtosis (0 for a Gaussian)",
    },
}


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    data = load_dataset(params.dataset)
    loader = data.loader("train", params.batch_size, augment=params.augment, seed=seed, device=device, drop_last=True)
    images, labels = loader.first_batch()
    values, summary = [], []
    for series in progress(built_series(params, "fig2"), desc="fig2: gradients at init", unit="net"):
        torch.manual_seed(seed)  # every series starts from the same conv weights
        model = make_resnet(params, series, data.num_classes).to(device)
        grads, loss = weight_gradients(model, images, labels, [params.layer])
        g = grads[params.layer].flatten().cpu()
        name = get_layer(model, params.layer).name
        values.append(
            pd.DataFrame(
                {
                    "series": series,
                    "layer": params.layer,
                    "layer_name": name,
                    "index": np.arange(g.numel()),
                    "value": g.numpy().astype(np.float64),
                }
            )
        )
        summary.append(
            {
                "series": series,
                "layer": params.layer,
                "layer_name": name,
                "n": g.numel(),
                "loss": loss,
                "mean": float(g.double().mean()),
                "std": float(g.double().std(unbiased=False)),
                "max_abs": float(g.abs().max()),
                "kurtosis": _excess_kurtosis(g),
            }
        )
    return {"gradient_values": pd.concat(values, ignore_index=True), "gradient_summary": pd.DataFrame(summary)}


# -------------------- the figure and its claims, drawn from the tables alone


# The paper's magnitudes (docs/papers.md#bjorck-fig-2, read off its Fig. 2 to a factor
# ~2): the histograms' x-ranges, i.e. max |gradient|, and their ratio.
PAPER_RANGE = {"bn": (0.04, "With BN"), "none": (4.0, "Without BN")}
PAPER_RATIO = 100.0  # +-4 vs +-0.04
# Two-sided bands a factor 10 either way: the reading is good to ~2, and the data, batch
# and loss scaling are the paper's only in the paper profile (issue 11: "within a factor
# of 10" of them; docs/papers.md#how-to-read-this-page). 1e9 is not ~100.
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
    missing = lacking(tables, "gradient_values", "gradient_summary")
    if "gradient_values" in missing:  # the histograms are the figure
        return empty_figure(TITLE, missing, "the histograms")
    values = tables["gradient_values"]
    summary = tables["gradient_summary"] if not missing else _summary_columns(values)
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
    if missing:
        say_missing(fig, missing, "the unscaled std, max |g| and kurtosis (shown as nan)")
    return fig


def _summary_columns(values: pd.DataFrame) -> pd.DataFrame:
    """A summary with the runs of ``values`` and no numbers: a stand-in for an absent
    ``gradient_summary`` (the plot shows nan, the claims are made not evaluable)."""
    runs = values.drop_duplicates(["seed", "series"] if "seed" in values else ["series"])
    return runs[[c for c in ("seed", "series", "layer", "layer_name") if c in runs]].assign(std=np.nan, max_abs=np.nan, kurtosis=np.nan)


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
    if lacking(tables, "gradient_summary"):  # the runs named by the values, their claims not evaluable
        if lacking(tables, "gradient_values"):
            return placeholder_claims(FIGURE, ["gradient_summary"])
        return unevaluable(claims({"gradient_summary": _summary_columns(tables["gradient_values"])}), ["gradient_summary"])
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
