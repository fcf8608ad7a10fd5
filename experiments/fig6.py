"""Figure 6 of Bjorck et al. 2018: gradients of the output logits at initialisation.

A freshly initialised ResNet sees one training mini-batch in train mode (BatchNorm
uses the batch's statistics); we keep the gradient of every image's loss with respect
to its logits (images x classes; ``softmax - onehot`` for cross-entropy, see
:mod:`nfstudy.probes.logits`). Series: with BN, without BN (the same conv weights,
BatchNorm removed) and the NF-ResNet.

The paper shows one network and one mini-batch; the public reproduction found that a
rerun sometimes shows two or three bright columns and averaged over an epoch. We do
both, and more: ``networks`` independent initialisations each see the same mini-batch
(the claims use all of them, the heatmap shows the median network by its dominant-class
share, :func:`representative_network`), and that median network
of each series also sees every image of one epoch of ``epoch_split`` (un-augmented, the last batch possibly
smaller; BatchNorm normalises each batch on its own). The epoch average is taken per true
class (rows: the images' label, columns: the logit), because an average by position in
the batch mixes a different random image into each row every batch and converges to
the same row everywhere.

Network ``i`` of seed ``s`` is initialised from ``torch.manual_seed(1000 s + i)``.
The NF series uses ``nf_skip_gain_init = 1``: with SkipInit's zero gain the residual
branches are switched off at initialisation, and the NF-ResNet's logits would come
from a five-layer network.

The tables ``run`` returns and their columns: ``TABLES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from nfstudy.claims import Claim, near
from nfstudy.data import load_dataset
from nfstudy.models import PAPER_INIT
from nfstudy.params import check_choice
from nfstudy.plots import series_color, series_label, style
from nfstudy.probes import LogitGradients, dominant_class, epoch_logit_gradients, logit_gradients
from nfstudy.runtime import derived_seed, progress, resolve_device

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

FIGURE = "fig6"
TITLE = "Gradients of the output logits at initialisation (Bjorck et al. 2018, Fig. 6)"


@dataclass(frozen=True)
class Params(NetworkParams):
    networks: int = 10  # independent initialisations per series (the heatmap shows the median one)
    batch_size: int = 128  # the heatmap's rows
    epoch: bool = True  # also average the median network's logit gradients over one epoch
    epoch_split: str = "train"  # the split that epoch runs over
    init: str = PAPER_INIT  # the paper's network, identified by measurement: results/init_survey/
    series: tuple[str, ...] = ("bn", "none", "nf")  # networks: bn | none | ws | nf (paper: bn, none)
    augment: bool = True  # the mini-batches as training would see them (crop + flip)
    nf_skip_gain_init: float = 1.0  # see the module docstring
    model: str = "cifar_resnet"  # cifar_resnet (the paper's) | torchvision_resnet (docs/papers.md#bjorck-reproduction, depth 101)

    def __post_init__(self):
        check_network_params(self)
        check_choice("epoch_split", self.epoch_split, ("train", "test"))


PROFILES = {
    "paper": Params(),
    # The same ten ResNet-110s on the bundled digits, 64 images a batch; the epoch runs
    # over the 299 test images (at initialisation no split is special, and the 1498
    # training images would triple the run time on a CPU).
    "quick": Params(dataset="digits", batch_size=64, epoch_split="test"),
}


def _summary(g: LogitGradients, **columns) -> dict:
    d = dominant_class(g.gradients, g.labels)
    logits = g.logits.double()
    return {
        **columns,
        "dominant_class": d.cls,
        "dominant_share": d.share,  # of the images labelled otherwise, fraction giving it > 1/2
        "dominant_probability": d.mean_probability,  # its mean probability over those images
        "top1_share": d.top1_share,
        "n_predicted": d.n_predicted,
        "n_images": d.n_images,
        "loss": g.loss,
        "logit_std": float(logits.std()),  # the logits' scale: O(1) with BN, huge without
    }


def _gradient_rows(g: LogitGradients, **columns) -> pd.DataFrame:
    grads = g.gradients.cpu().numpy().astype(np.float64)
    n, c = grads.shape
    return pd.DataFrame(
        {
            **columns,
            "image": np.repeat(np.arange(n), c),
            "label": np.repeat(g.labels.cpu().numpy(), c),
            "class": np.tile(np.arange(c), n),
            "gradient": grads.reshape(-1),
        }
    )


def _class_means(g: LogitGradients, num_classes: int, **columns) -> pd.DataFrame:
    """Mean gradient per (true class, logit class) over the images of each true class."""
    means, counts = g.mean_by_label(num_classes)
    means, counts = means.cpu().numpy(), counts.cpu().numpy()
    k = means.shape[1]
    return pd.DataFrame(
        {
            **columns,
            "label": np.repeat(np.arange(num_classes), k),
            "class": np.tile(np.arange(k), num_classes),
            "gradient": means.reshape(-1),
            "n_images": np.repeat(counts, k),
        }
    )


TABLES = {
    "logit_gradients": {  # one row per (series, network, image, class)
        "series": "bn | none | nf",
        "network": "the independently initialised network",
        "image": "the image's position in the mini-batch",
        "label": "its true class",
        "class": "the logit",
        "gradient": "d loss_i / d logit_ic of image i's own cross-entropy (softmax - onehot, in [-1, 1])",
    },
    "logit_gradients_epoch": {  # one row per (series, true class, logit)
        "series": "as in logit_gradients",
        "network": "the representative network of the series",
        "label": "the images' true class",
        "class": "the logit",
        "gradient": "the gradient averaged over the epoch's images of that class",
        "n_images": "how many images of that class",
    },
    "dominant_class": {  # one row per (series, network, scope); see nfstudy.probes.DominantClass
        "series": "as in logit_gradients",
        "network": "as in logit_gradients",
        "scope": "batch | epoch",
        "dominant_class": "the class most images are predicted as",
        "dominant_share": "the share of images predicted as it",
        "dominant_probability": "the mean softmax probability of that class",
        "top1_share": "the share of images whose argmax is their label",
        "n_predicted": "the number of distinct classes predicted",
        "n_images": "images seen",
        "loss": "mean cross-entropy",
        "logit_std": "standard deviation of the logits",
    },
}


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    data = load_dataset(params.dataset)
    loader = data.loader("train", params.batch_size, augment=params.augment, seed=seed, device=device, drop_last=True)
    images, labels = loader.first_batch()
    # Every image of the epoch's split once: no augmentation, no image dropped.
    epoch_loader = data.loader(params.epoch_split, params.batch_size, augment=False, seed=seed, device=device)
    batch_rows, epoch_rows, summary = [], [], []
    series_run = built_series(params, "fig6")
    steps = params.networks * len(series_run) + (len(series_run) if params.epoch else 0)
    bar = progress(total=steps, desc="fig6: logit gradients at init", unit="net")
    for network in range(params.networks):
        for series in series_run:
            torch.manual_seed(derived_seed(seed, network))  # every series of a network from the same weights
            model = make_resnet(params, series, data.num_classes).to(device)
            g = logit_gradients(model, images, labels)
            batch_rows.append(_gradient_rows(g, series=series, network=network))
            summary.append(_summary(g, series=series, network=network, scope="batch"))
            bar.update()
    if params.epoch:
        batch_summary = pd.DataFrame(summary)
        for series in series_run:
            _, network = representative_network(batch_summary, series)
            torch.manual_seed(derived_seed(seed, network))  # the same weights as in its batch
            model = make_resnet(params, series, data.num_classes).to(device)
            e = epoch_logit_gradients(model, epoch_loader.epoch_batches(0))
            epoch_rows.append(_class_means(e, data.num_classes, series=series, network=network))
            summary.append(_summary(e, series=series, network=network, scope="epoch"))
            bar.update()
    bar.close()
    tables = {
        "logit_gradients": pd.concat(batch_rows, ignore_index=True),
        "dominant_class": pd.DataFrame(summary),
    }
    if epoch_rows:
        tables["logit_gradients_epoch"] = pd.concat(epoch_rows, ignore_index=True)
    return tables


# -------------------- the figure and its claims, drawn from the tables alone


CMAP = "RdBu_r"  # red: positive (the class is pushed down), blue: negative (the true class)
# A network "predicts one class irrespective of the input" (collapsed) when its dominant
# class gets p > 1/2 from at least this share of the images labelled otherwise.
NEARLY_EVERY = 0.9
# The paper's colour scale (docs/papers.md#bjorck-fig-6): ~+-0.004 for the gradient of
# the batch-mean loss, batch ~128. d(mean loss)/d logit = (softmax - onehot) / B, so its
# entries lie within +-1/B, and +-1/(2B) = +-0.0039 at B = 128 is the paper's scale: a
# column whose class gets p > 1/2 is saturated, as the no-BN column in the paper is. The
# heatmaps use +-1/(2B).
PAPER_COLOUR_SCALE = 0.004
SCALE_FACTOR = 10.0  # two-sided band, a factor 10 either way (issue 11)
# Per network, not on the mean over networks: the paper shows a no-BN network that
# collapses and a BN network that does not. Without BN nearly every network collapses (at
# most one in ten may not); with BN (and the NF-ResNet) at most one in ten may.
NO_BN_COLLAPSED_AT_LEAST = 0.9
BN_COLLAPSED_AT_MOST = 0.1


def _series_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["series"]))


def collapsed_fraction(summary: pd.DataFrame, series: str, scope: str = "batch") -> float:
    """The fraction of the networks of ``series`` that predict one class for nearly every
    image (dominant share >= :data:`NEARLY_EVERY`); NaN without any."""
    rows = summary[(summary["series"] == series) & (summary["scope"] == scope)]
    return float((rows["dominant_share"] >= NEARLY_EVERY).mean()) if len(rows) else float("nan")


def representative_network(summary: pd.DataFrame, series: str) -> tuple[int | None, int]:
    """(seed, network) of the median network of ``series`` by its one-batch dominant share
    (the lower median; ties by seed, then network): the network the headline heatmap shows.
    The seed is None when ``summary`` has no seed column (one run)."""
    rows = summary[(summary["series"] == series) & (summary["scope"] == "batch")]
    if not len(rows):
        raise ValueError(f"no one-batch rows of series {series!r} to choose a network from")
    keys = ["dominant_share", *(["seed"] if "seed" in rows else []), "network"]
    row = rows.sort_values(keys, kind="stable").iloc[(len(rows) - 1) // 2]
    return (int(row["seed"]) if "seed" in rows else None), int(row["network"])


def _of_network(df: pd.DataFrame, series: str, seed: int | None, network: int | None = None) -> pd.DataFrame:
    """The rows of ``series`` (of ``seed`` unless None, of ``network`` unless None)."""
    keep = df["series"] == series
    if seed is not None:
        keep &= df["seed"] == seed
    if network is not None:
        keep &= df["network"] == network
    return df[keep]


def _colour_limit(batch_size: int) -> float:
    return 0.5 / batch_size  # see PAPER_COLOUR_SCALE


def _batch_heatmap(ax, rows: pd.DataFrame):
    """Images (sorted by label, as the diagonal staircase of true classes) x classes:
    the gradient of the batch-mean loss, (softmax - onehot) / B."""
    order = rows.drop_duplicates("image").sort_values(["label", "image"], kind="stable")["image"]
    matrix = rows.pivot(index="image", columns="class", values="gradient").loc[order.to_numpy()] / len(order)
    limit = _colour_limit(len(order))
    return ax.imshow(matrix.to_numpy(), aspect="auto", cmap=CMAP, vmin=-limit, vmax=limit, interpolation="nearest")


def _epoch_heatmap(ax, rows: pd.DataFrame, batch_size: int):
    """Per true class, the mean of the per-image gradients, on the batch heatmap's scale
    (divided by the batch size)."""
    matrix = rows.groupby(["label", "class"])["gradient"].mean().unstack("class") / batch_size
    limit = _colour_limit(batch_size)
    return ax.imshow(matrix.to_numpy(), aspect="auto", cmap=CMAP, vmin=-limit, vmax=limit, interpolation="nearest")


def plot(tables: dict[str, pd.DataFrame]):
    """Top: per series, the single-batch heatmap of its representative network (the median
    network by dominant share over every network of every seed, :func:`representative_network`).
    Middle: the epoch average per true class of the network that seed's epoch was run on.
    Bottom: every network of every seed, the share of images to which its dominant class
    gets more than half the probability. A row whose table is absent is left out, and the
    figure says so (without ``dominant_class`` the heatmaps show network 0 of the first seed)."""
    missing = lacking(tables, "logit_gradients", "dominant_class")
    grads, summary = tables.get("logit_gradients"), tables.get("dominant_class")
    epoch = tables.get("logit_gradients_epoch")
    if epoch is not None and not len(epoch):
        epoch = None
    if grads is None and summary is None and epoch is None:
        return empty_figure(TITLE, missing)
    order = _series_order(grads if grads is not None else summary if summary is not None else epoch)
    style()
    rows = [[f"batch:{s}" for s in order]] if grads is not None else []
    if epoch is not None:
        rows.append([f"epoch:{s}" for s in order])
    if summary is not None:
        rows.append(["shares"] * len(order))
    fig = plt.figure(figsize=(3.6 * len(order) + 0.8, 3.4 * len(rows)), layout="constrained")
    axes = fig.subplot_mosaic(rows, height_ratios=[1.35] + [1.0] * (len(rows) - 1))
    image = None
    batch_size = 1
    for series in order:
        if summary is not None:
            seed, network = representative_network(summary, series)
        else:  # no shares to choose by: the first network of the first seed
            first = (grads if grads is not None else epoch).query("series == @series")
            seed = int(first["seed"].min()) if "seed" in first else None
            network = int(first["network"].min())
        if grads is not None:
            b = _of_network(grads, series, seed, network)
            batch_size = int(b["image"].nunique())
            ax = axes[f"batch:{series}"]
            image = _batch_heatmap(ax, b)
            title = f"{series_label(series)}, one mini-batch ({'median network' if summary is not None else 'network ' + str(network)})"
            if summary is not None:
                s = _of_network(summary[summary["scope"] == "batch"], series, seed, network).iloc[0]
                title += f"\n{s['dominant_share']:.0%} of images: class {int(s['dominant_class'])} with p > 1/2"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("class (logit)")
            ax.set_xticks(range(b["class"].nunique()))
            ax.grid(False)
            ax.set_ylabel(f"image (sorted by label)\nseed {seed}, network {network}", fontsize=8)
        elif summary is not None:
            batch = summary[(summary["scope"] == "batch") & (summary["series"] == series)]
            batch_size = int(batch["n_images"].iloc[0]) if len(batch) else batch_size
        if epoch is not None:
            e = _of_network(epoch, series, seed)
            ax = axes[f"epoch:{series}"]
            if not len(e):
                ax.set_axis_off()
                continue
            image = _epoch_heatmap(ax, e, batch_size)
            n = int(e[e["class"] == 0]["n_images"].sum())
            ax.set_title(f"{series_label(series)}, epoch average\nby true class ({n} images)", fontsize=9)
            ax.set_xlabel("class (logit)")
            ax.set_xticks(range(e["class"].nunique()))
            ax.set_yticks(range(e["label"].nunique()))
            ax.grid(False)
            ax.set_ylabel(f"true class\nseed {seed}, network {int(e['network'].iloc[0])}", fontsize=8)
    limit = _colour_limit(batch_size)
    if image is not None:
        fig.colorbar(
            image, ax=[axes[k] for k in axes if k != "shares"], shrink=0.6, label=f"d (mean loss) / d logit, +-1/(2B) = +-{limit:.2g}"
        )
    if summary is not None:
        _shares_panel(axes["shares"], summary[summary["scope"] == "batch"], order)
    fig.suptitle(TITLE, fontsize=10)
    if missing:
        what = {"logit_gradients": "the one-batch heatmaps", "dominant_class": "the shares of images (the median network)"}
        say_missing(fig, missing, " and ".join(what[m] for m in missing))
    return fig


def _shares_panel(ax, batch: pd.DataFrame, order: list[str]) -> None:
    rng = np.random.default_rng(0)  # horizontal jitter only, so equal values stay visible
    for x, series in enumerate(order):
        v = batch[batch["series"] == series]["dominant_share"].to_numpy()
        ax.scatter(x + rng.uniform(-0.18, 0.18, len(v)), v, s=22, color=series_color(series), alpha=0.8, zorder=3)
        median = float(np.median(v))
        ax.hlines(median, x - 0.3, x + 0.3, color="k", lw=2, zorder=4)
        ax.text(
            x + 0.33, median, f"median {median:.2f}\n{(v >= NEARLY_EVERY).sum()}/{len(v)} nets >= {NEARLY_EVERY}", va="center", fontsize=8
        )
    ax.axhline(NEARLY_EVERY, color="0.4", ls="--", lw=1)
    ax.set_xticks(range(len(order)), [series_label(s) for s in order])
    ax.set_xlim(-0.6, len(order) - 0.1)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("share of images to which\none class gets p > 1/2")
    ax.set_title(f"every network, one mini-batch each (bar: median; dashed: collapsed, >= {NEARLY_EVERY})", fontsize=9)


def _max_gradient_of_the_mean_loss(grads: pd.DataFrame) -> float:
    """max |d (batch-mean loss) / d logit| over every network's batch: max |g| / B."""
    per_batch = grads.groupby(["series", "network"])
    scale = per_batch["gradient"].apply(lambda g: g.abs().max()) / per_batch["image"].nunique()
    return float(scale.max()) if len(scale) else float("nan")


def _stand_in_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The networks the gradient tables name, with no shares: a stand-in for an absent
    ``dominant_class`` (its claims keep their statements and are made not evaluable)."""
    keys = [k for k in ("seed", "series", "network") if k in tables["logit_gradients"]]
    rows = [tables["logit_gradients"].drop_duplicates(keys)[keys].assign(scope="batch")]
    if tables.get("logit_gradients_epoch") is not None:
        rows.append(tables["logit_gradients_epoch"].drop_duplicates(keys)[keys].assign(scope="epoch"))
    return pd.concat(rows, ignore_index=True).assign(dominant_share=np.nan)


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    missing = lacking(tables, "logit_gradients", "dominant_class")
    if len(missing) == 2:
        return placeholder_claims(FIGURE, missing)

    def of(table: str, found: list[Claim]) -> list[Claim]:  # the claims measured on ``table``
        return unevaluable(found, [table]) if table in missing else found

    summary = tables["dominant_class"] if "dominant_class" not in missing else _stand_in_summary(tables)
    grads = tables.get("logit_gradients")
    present = set(summary["series"])
    collapsed = (
        f"fraction of networks giving one class p > 1/2 for >= {NEARLY_EVERY:.0%} of the images (labelled otherwise), one mini-batch each"
    )
    scale = Claim(
        f"The heatmap's scale is the paper's colour bar (~+-{PAPER_COLOUR_SCALE:g}, batch ~128): the gradient of the batch-mean loss",
        "max |d (mean loss) / d logit| = max |softmax - onehot| / B, every network",
        _max_gradient_of_the_mean_loss(grads) if grads is not None else float("nan"),
        **near(PAPER_COLOUR_SCALE, SCALE_FACTOR),
        kind="sanity",
        note="fixed by cross-entropy and the batch size (at most 1/B): checks the set-up, not the networks",
    )
    found = of("logit_gradients", [scale])
    collapse = []
    if "none" in present:
        collapse.append(
            Claim(
                "Without BN the network predicts one class for every image, irrespective of the input (one saturated column)",
                f"{collapsed}, no BN",
                collapsed_fraction(summary, "none"),
                ">=",
                NO_BN_COLLAPSED_AT_LEAST,
            )
        )
        if (summary["scope"] == "epoch").any():
            collapse.append(
                Claim(
                    "... and over a whole epoch, not only in one mini-batch",
                    "fraction of the epoch's images (labelled otherwise) giving the dominant class p > 1/2, no BN, the median network",
                    _epoch_share(summary, "none"),
                    ">=",
                    NEARLY_EVERY,
                )
            )
    if "bn" in present:
        collapse.append(
            Claim(
                "With BN the pattern depends on the input: (nearly) no BN network predicts one class for every image",
                f"{collapsed}, BN",
                collapsed_fraction(summary, "bn"),
                "<=",
                BN_COLLAPSED_AT_MOST,
            )
        )
    if "nf" in present:
        collapse.append(
            Claim(
                "(beyond the paper) Neither does the NF-ResNet",
                f"{collapsed}, NF",
                collapsed_fraction(summary, "nf"),
                "<=",
                BN_COLLAPSED_AT_MOST,
                kind="extension",
            )
        )
    return found + of("dominant_class", collapse)


def _epoch_share(summary: pd.DataFrame, series: str) -> float:
    rows = summary[(summary["series"] == series) & (summary["scope"] == "epoch")]
    return float(rows["dominant_share"].mean()) if len(rows) else float("nan")
