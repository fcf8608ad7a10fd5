"""Figure 6 of Bjorck et al. 2018: gradients of the output logits at initialisation.

Tables:

* ``logit_gradients``: seed, series, network, image, label, class, gradient: d loss_i /
  d logit_ic of image i's own cross-entropy (``softmax - onehot``, in [-1, 1]).
* ``logit_gradients_epoch``: seed, series, network, label, class, gradient, n_images:
  network 0's gradient averaged over the images of each true class over one epoch.
* ``dominant_class``: seed, series, network, scope (batch | epoch), dominant_class,
  dominant_share, dominant_probability, top1_share, n_predicted, n_images, loss,
  logit_std (see :class:`nfstudy.probes.DominantClass`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..claims import Claim
from ..plots import series_color, series_label, style

__all__ = ["claims", "plot"]

TITLE = "Gradients of the output logits at initialisation (Bjorck et al. 2018, Fig. 6)"
NEARLY_EVERY = 0.9  # "consistently predicts one specific class, irrespective of the input"
CMAP = "RdBu_r"  # red: positive (the class is pushed down), blue: negative (the true class)


def _series_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["series"]))


def _batch_heatmap(ax, rows: pd.DataFrame):
    """Images (sorted by label, as the diagonal staircase of true classes) x classes."""
    order = rows.drop_duplicates("image").sort_values(["label", "image"], kind="stable")["image"]
    matrix = rows.pivot(index="image", columns="class", values="gradient").loc[order.to_numpy()]
    return ax.imshow(matrix.to_numpy(), aspect="auto", cmap=CMAP, vmin=-1, vmax=1, interpolation="nearest")


def _epoch_heatmap(ax, rows: pd.DataFrame):
    matrix = rows.groupby(["label", "class"])["gradient"].mean().unstack("class")
    return ax.imshow(matrix.to_numpy(), aspect="auto", cmap=CMAP, vmin=-1, vmax=1, interpolation="nearest")


def plot(tables: dict[str, pd.DataFrame]):
    """Top: the single-batch heatmap of network 0 (first seed) per series. Middle: that
    network's epoch average per true class. Bottom: every network of every seed, the
    share of images to which its dominant class gets more than half the probability."""
    grads = tables["logit_gradients"]
    summary = tables["dominant_class"]
    epoch = tables.get("logit_gradients_epoch")
    order = _series_order(grads)
    seed0 = sorted(grads["seed"].unique())[0]
    style()
    rows = [[f"batch:{s}" for s in order]]
    if epoch is not None and len(epoch):
        rows.append([f"epoch:{s}" for s in order])
    rows.append(["shares"] * len(order))
    fig = plt.figure(figsize=(3.6 * len(order) + 0.8, 3.4 * len(rows)), layout="constrained")
    axes = fig.subplot_mosaic(rows, height_ratios=[1.35] + [1.0] * (len(rows) - 1))
    image = None
    for series in order:
        b = grads[(grads["series"] == series) & (grads["seed"] == seed0) & (grads["network"] == 0)]
        s = summary[(summary["series"] == series) & (summary["seed"] == seed0) & (summary["network"] == 0)]
        s = s[s["scope"] == "batch"].iloc[0]
        ax = axes[f"batch:{series}"]
        image = _batch_heatmap(ax, b)
        ax.set_title(
            f"{series_label(series)}, one mini-batch\n{s['dominant_share']:.0%} of images: "
            f"class {int(s['dominant_class'])} with p > 1/2",
            fontsize=9,
        )
        ax.set_xlabel("class (logit)")
        ax.set_xticks(range(b["class"].nunique()))
        ax.grid(False)
        if series == order[0]:
            ax.set_ylabel(f"image (sorted by label)\nseed {seed0}, network 0")
        if epoch is not None and len(epoch):
            # Network 0 of the first seed only: each seed's network favours its own class,
            # and an average over networks would paint several half-bright columns.
            e = epoch[(epoch["series"] == series) & (epoch["seed"] == seed0)]
            ax = axes[f"epoch:{series}"]
            _epoch_heatmap(ax, e)
            n = int(e[e["class"] == 0]["n_images"].sum())
            ax.set_title(f"{series_label(series)}, epoch average\nby true class ({n} images)", fontsize=9)
            ax.set_xlabel("class (logit)")
            ax.set_xticks(range(e["class"].nunique()))
            ax.set_yticks(range(e["label"].nunique()))
            ax.grid(False)
            if series == order[0]:
                ax.set_ylabel(f"true class\nseed {seed0}, network 0")
    fig.colorbar(image, ax=[axes[k] for k in axes if k != "shares"], shrink=0.6, label="d loss / d logit")
    _shares_panel(axes["shares"], summary[summary["scope"] == "batch"], order)
    fig.suptitle(TITLE, fontsize=10)
    return fig


def _shares_panel(ax, batch: pd.DataFrame, order: list[str]) -> None:
    rng = np.random.default_rng(0)  # horizontal jitter only, so equal values stay visible
    for x, series in enumerate(order):
        v = batch[batch["series"] == series]["dominant_share"].to_numpy()
        ax.scatter(x + rng.uniform(-0.18, 0.18, len(v)), v, s=22, color=series_color(series), alpha=0.8, zorder=3)
        ax.hlines(v.mean(), x - 0.3, x + 0.3, color="k", lw=2, zorder=4)
        ax.text(x + 0.33, v.mean(), f"mean {v.mean():.2f}\n{(v >= NEARLY_EVERY).sum()}/{len(v)} nets >= {NEARLY_EVERY}", va="center", fontsize=8)
    ax.axhline(NEARLY_EVERY, color="0.4", ls="--", lw=1)
    ax.set_xticks(range(len(order)), [series_label(s) for s in order])
    ax.set_xlim(-0.6, len(order) - 0.1)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("share of images to which\none class gets p > 1/2")
    ax.set_title("every network, one mini-batch each (dashed: 'nearly every image', 0.9)", fontsize=9)


def _mean_share(summary: pd.DataFrame, series: str, scope: str) -> float:
    rows = summary[(summary["series"] == series) & (summary["scope"] == scope)]
    return float(rows["dominant_share"].mean()) if len(rows) else float("nan")


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    summary = tables["dominant_class"]
    present = set(summary["series"])
    metric = "fraction of images (labelled otherwise) giving the dominant class p > 1/2"
    found = []
    if "none" in present:
        found.append(
            Claim(
                "Without BN the network predicts one class for nearly every image, irrespective of the input",
                f"{metric}, no BN, one mini-batch, mean over networks",
                _mean_share(summary, "none", "batch"),
                ">=",
                NEARLY_EVERY,
            )
        )
        if (summary["scope"] == "epoch").any():
            found.append(
                Claim(
                    "... and over a whole epoch, not only in one mini-batch",
                    f"{metric}, no BN, one epoch",
                    _mean_share(summary, "none", "epoch"),
                    ">=",
                    NEARLY_EVERY,
                )
            )
    if "bn" in present:
        found.append(
            Claim(
                "With BN the network does not predict one class for nearly every image",
                f"{metric}, BN, one mini-batch, mean over networks",
                _mean_share(summary, "bn", "batch"),
                "<",
                NEARLY_EVERY,
            )
        )
    if "nf" in present:
        found.append(
            Claim(
                "(beyond the paper) Neither does the NF-ResNet",
                f"{metric}, NF, one mini-batch, mean over networks",
                _mean_share(summary, "nf", "batch"),
                "<",
                NEARLY_EVERY,
            )
        )
    return found
