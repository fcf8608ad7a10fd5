"""Figure 4 of Bjorck et al. 2018: activations during one diverging update (no BN).

A network without BN is trained with SGD (momentum 0.9, weight decay 5e-4) at a learning
rate where it diverges. For update ``update`` (0: the first one, from initialisation) we
apply fractions 0, 2%, ..., 100% of the step
``optimizer.step()`` would take and record, at weight layers 8, 44 and 80, the mean and
variance of every output channel over the mini-batch and the spatial positions
(:func:`nfstudy.probes.channel_moments_along_update`), and the loss on that batch. The
NF-ResNet gets the same treatment at the same learning rate.

Which update (the paper states neither the update nor its learning rate): the first
SGD update from initialisation at lr 1e-3, the smallest step at which the paper shows the
no-BN network diverging by its own criterion: in its Fig. 3 every no-BN relative-loss
curve passes 10^3 (a loss above 10^3 x the loss before counts as divergence) at step
sizes above ~1e-3 (PAPERS.md section D). The rule comes from that text, not from the
Fig. 4 magnitudes; ``-p lr 0.1`` gives the first step at BN's learning rate, where Fig. 1
says the no-BN network diverges (with the inits here its activations then overflow
float32 early in the update, and the heatmaps are mostly overflow).

Initialisation: the paper's network (``PAPER_INIT``), and ``nf_skip_gain_init = 1``, as for Figure 3 (see
experiments/fig3.py): with SkipInit's 0 the NF-ResNet's residual-branch weights get no
gradient at the first update, so its layers 8, 44 and 80 would hardly move and the
comparison with the no-BN network would be empty.

The tables ``run`` returns and their columns: ``TABLES``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import LogNorm, SymLogNorm

from nfstudy.claims import Claim, near
from nfstudy.constants import DIVERGENCE
from nfstudy.data import load_dataset
from nfstudy.models import PAPER_INIT
from nfstudy.params import check_positive
from nfstudy.plots import series_color, series_label, style
from nfstudy.probes import channel_moments_along_update
from nfstudy.runtime import progress, resolve_device

from ._common import NetworkParams, check_network_params, empty_figure, lacking, make_resnet, placeholder_claims, say_missing, unevaluable

FIGURE = "fig4"
TITLE = "Channel means and variances during one update at a diverging learning rate (Bjorck et al. 2018, Fig. 4)"


@dataclass(frozen=True)
class Params(NetworkParams):
    layers: tuple[int, ...] = (8, 44, 80)  # weight layers numbered from the input
    batch_size: int = 128  # SGD mini-batch (paper: 128)
    init: str = PAPER_INIT  # the paper's network, identified by measurement: results/init_survey/
    series: tuple[str, ...] = ("none", "nf")  # networks: bn | none | ws | nf (paper: none)
    lr: float = 1e-3  # the paper's smallest diverging no-BN step (Fig. 3; module docstring)
    momentum: float = 0.9  # SGD momentum (paper: 0.9)
    weight_decay: float = 5e-4  # SGD weight decay (paper: 5e-4)
    update: int = 0  # which update: 0 = the first, from initialisation
    n_fractions: int = 51  # fractions 0 ... 1 of the update, evenly spaced (51: steps of 2%)
    augment: bool = True  # crop + flip, as training does
    nf_skip_gain_init: float = 1.0  # see the module docstring
    chunk_size: int | None = None  # fractions per forward pass (None: 1 on CPU, 16 on GPU)

    def __post_init__(self):
        check_network_params(self)
        for layer in self.layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= self.depth:
                raise ValueError(
                    f"layer {layer!r} does not exist in a ResNet-{self.depth}: choose weight layers 1..{self.depth} "
                    f"(for 8, 44, 80 of ResNet-110 scaled to this depth: {', '.join(map(str, proportional_layers(self.depth)))})"
                )
        check_positive("lr", self.lr)
        check_positive("momentum", self.momentum, allow_zero=True)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("update", self.update, integer=True, allow_zero=True)
        if isinstance(self.n_fractions, bool) or not isinstance(self.n_fractions, int) or self.n_fractions < 2:
            raise ValueError(f"n_fractions must be an int >= 2 (0% and 100% of the update at least), got {self.n_fractions!r}")
        if self.chunk_size is not None:
            check_positive("chunk_size", self.chunk_size, integer=True)

    @property
    def fractions(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.n_fractions)


def proportional_layers(depth: int, paper_layers=(8, 44, 80), paper_depth: int = 110) -> tuple[int, ...]:
    """The paper's layers moved to the same relative depth in a ResNet-``depth``."""
    return tuple(max(1, round(k * depth / paper_depth)) for k in paper_layers)


PROFILES = {
    # Bjorck et al.: ResNet-110 on CIFAR-10, batch 128, layers 8, 44, 80.
    "paper": Params(),
    # The same ResNet-110 and layers on the bundled digits, batch 64, fractions in steps of 4%.
    "quick": Params(dataset="digits", batch_size=64, n_fractions=26),
}


TABLES = {
    "channel_moments": {  # one row per (series, layer, fraction of the update, channel)
        "series": "none | nf",
        "lr": "the learning rate of the update",
        "update": "which update (0: the first, from initialisation)",
        "layer": "the weight layer's number",
        "layer_name": "its module name",
        "fraction": "the fraction of the step applied (0 = before the update, 1 = the full step)",
        "channel": "the output channel",
        "mean": "the channel's mean over the mini-batch and the spatial positions",
        "variance": "the channel's variance over the same",
    },
    "update_loss": {  # one row per (series, fraction)
        "series": "as in channel_moments",
        "lr": "as in channel_moments",
        "update": "as in channel_moments",
        "fraction": "as in channel_moments",
        "step_size": "fraction * lr",
        "loss": "the batch's loss after that fraction of the step",
        "relative_loss": "loss / the loss at fraction 0",
        "diverged": "relative loss > DIVERGENCE (1e3) or not finite",
    },
}


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    data = load_dataset(params.dataset)
    moments, losses = [], []
    for series in progress(params.series, desc="fig4: along one update", unit="net"):
        torch.manual_seed(seed)  # every series starts from the same weights (where shapes agree)
        model = make_resnet(params, series, data.num_classes).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
        loader = data.loader("train", params.batch_size, augment=params.augment, seed=seed, device=device, drop_last=True)
        if params.update >= len(loader):
            raise IndexError(
                f"update {params.update} is beyond the first epoch: {params.dataset} has {len(loader)} mini-batches "
                f"of {params.batch_size} (updates 0..{len(loader) - 1}); choose a smaller update or batch_size"
            )
        for index, (images, labels) in enumerate(loader):
            if index == params.update:
                break
            model.train()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        channel_table, loss_table = channel_moments_along_update(
            model, optimizer, images, labels, params.layers, params.fractions, chunk_size=params.chunk_size
        )
        moments.append(channel_table.assign(series=series, lr=params.lr, update=params.update))
        losses.append(loss_table.assign(series=series, lr=params.lr, update=params.update))
    moments = pd.concat(moments, ignore_index=True)
    losses = pd.concat(losses, ignore_index=True)
    return {
        "channel_moments": moments[["series", "lr", "update", "layer", "layer_name", "fraction", "channel", "mean", "variance"]],
        "update_loss": losses[["series", "lr", "update", "fraction", "step_size", "loss", "relative_loss", "diverged"]],
    }


# -------------------- the figure and its claims, drawn from the tables alone


LAYER_COLORS = ("#4c72b0", "#dd8452", "#c44e52", "#8172b3", "#937860")


def _order(values) -> list:
    return list(dict.fromkeys(values))


def layer_variance(moments: pd.DataFrame) -> pd.DataFrame:
    """Average channel variance per (seed, series, layer, fraction): ``mean_C var_NHW(x)``."""
    return moments.groupby(["seed", "series", "layer", "fraction"], sort=False)["variance"].mean().rename("variance").reset_index()


def _heatmap(ax, fig, values: np.ndarray, fractions: np.ndarray, kind: str):
    masked = np.ma.masked_invalid(values)
    finite = values[np.isfinite(values)]
    # Overflowed cells (inf / NaN) in green, a colour absent from both colour maps.
    cmap = plt.get_cmap("magma" if kind == "variance" else "RdBu_r").with_extremes(bad="#3fbf3f")
    if kind == "variance":
        positive = finite[finite > 0]
        low, high = (positive.min(), positive.max()) if len(positive) else (1e-3, 1.0)
        norm = LogNorm(vmin=low, vmax=max(high, low * 10))
    else:
        top = np.abs(finite).max() if len(finite) else 1.0
        small = np.quantile(np.abs(finite), 0.1) if len(finite) else 1e-3
        norm = SymLogNorm(linthresh=max(small, top * 1e-12, 1e-30), vmin=-top, vmax=top, base=10)
    channels = np.arange(values.shape[1] + 1) - 0.5
    step = (fractions[1] - fractions[0]) if len(fractions) > 1 else 1.0
    edges = np.concatenate([fractions - step / 2, [fractions[-1] + step / 2]]) * 100
    mesh = ax.pcolormesh(channels, edges, masked, cmap=cmap, norm=norm, shading="flat", rasterized=True)
    bar = fig.colorbar(mesh, ax=ax, pad=0.02, fraction=0.06)
    if kind == "mean":  # a symlog bar labels every decade; five ticks say enough
        middle = float(np.sqrt(norm.linthresh * top))
        bar.set_ticks([-top, -middle, 0.0, middle, top], labels=[f"{v:.1g}" for v in (-top, -middle, 0.0, middle, top)])
        bar.minorticks_off()
    bar.ax.tick_params(labelsize=6.5)


def plot(tables: dict[str, pd.DataFrame]):
    """Per series two rows (channel means, channel variances), one column per layer
    (heatmaps: channel x percent of the update applied, each with its own colour scale,
    as in the paper), and a last column with the loss along the update and the average
    channel variance per layer (median over seeds with a min-max band when there are
    several; the heatmaps then show the first seed: channels of different seeds are
    different units)."""
    missing = lacking(tables, "channel_moments", "update_loss")
    if len(missing) == 2:
        return empty_figure(TITLE, missing)
    if "channel_moments" in missing:
        return _loss_figure(tables["update_loss"])
    moments = tables["channel_moments"]
    losses = tables.get("update_loss", pd.DataFrame(columns=["seed", "series", "fraction", "relative_loss"]))
    series, layers = _order(moments["series"]), sorted(moments["layer"].unique())
    seeds = sorted(moments["seed"].unique())
    first = moments[moments["seed"] == seeds[0]]
    style()
    nrows, ncols = 2 * len(series), len(layers) + 1
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(3.4 * ncols, 2.3 * nrows),
        layout="constrained",
        squeeze=False,
        gridspec_kw={"width_ratios": [1.0] * len(layers) + [0.9]},
    )
    fractions_all = np.sort(moments["fraction"].unique())
    for i, s in enumerate(series):
        m = first[first["series"] == s]
        lr = float(m["lr"].iloc[0])
        for j, layer in enumerate(layers):
            ml = m[m["layer"] == layer]
            for r, kind in enumerate(("mean", "variance")):
                ax = axes[2 * i + r][j]
                wide = ml.pivot_table(index="fraction", columns="channel", values=kind, aggfunc="first", dropna=False)
                _heatmap(ax, fig, wide.to_numpy(dtype=float), wide.index.to_numpy(dtype=float), kind)
                ax.set_title(f"{series_label(s)}: layer {layer}, channel {kind}s", fontsize=8.5)
                if j == 0:
                    ax.set_ylabel("% of the update applied")
                if 2 * i + r == nrows - 1:
                    ax.set_xlabel("channel")
        # The loss along the update.
        ax = axes[2 * i][-1]
        lo = losses[losses["series"] == s]
        if len(lo):
            wide = lo.pivot_table(index="fraction", columns="seed", values="relative_loss", aggfunc="first", dropna=False)
            values = np.where(np.isfinite(wide.to_numpy(dtype=float)), wide.to_numpy(dtype=float), np.inf)
            _line(ax, wide.index.to_numpy() * 100, values, series_color(s), len(seeds))
        else:
            ax.text(0.5, 0.5, "no update_loss rows", transform=ax.transAxes, ha="center", va="center", fontsize=8, color="#b22222")
        ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        ax.axhline(DIVERGENCE, color="0.45", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"loss / loss before, lr={lr:g}", fontsize=8.5)
        # Average channel variance per layer.
        ax = axes[2 * i + 1][-1]
        lv = layer_variance(moments[moments["series"] == s])
        for k, layer in enumerate(layers):
            wide = lv[lv["layer"] == layer].pivot_table(index="fraction", columns="seed", values="variance", aggfunc="first", dropna=False)
            values = np.where(np.isfinite(wide.to_numpy(dtype=float)), wide.to_numpy(dtype=float), np.inf)
            _line(ax, wide.index.to_numpy() * 100, values, LAYER_COLORS[k % len(LAYER_COLORS)], len(seeds), label=f"layer {layer}")
        ax.set_yscale("log")
        ax.set_title("average channel variance", fontsize=8.5)
        ax.legend(fontsize=7, loc="upper left")
        if i == len(series) - 1:
            ax.set_xlabel("% of the update applied")
        for ax in (axes[2 * i][-1], axes[2 * i + 1][-1]):
            ax.set_xlim(0, 100 * fractions_all[-1])
    note = "green cells: overflowed (inf / NaN)"
    if len(seeds) > 1:
        note += f"; heatmaps: seed {seeds[0]}; lines: median of {len(seeds)} seeds, band min-max"
    fig.suptitle(f"{TITLE}\n{note}", fontsize=10)
    if missing:
        say_missing(fig, missing, "the loss along the update")
    return fig


def _loss_figure(losses: pd.DataFrame):
    """The loss along the update alone, one panel per series: all there is to draw of a
    run whose channel moments are absent."""
    series, seeds = _order(losses["series"]), sorted(losses["seed"].unique())
    style()
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 2.8), layout="constrained", squeeze=False)
    for ax, s in zip(axes[0], series):
        lo = losses[losses["series"] == s]
        wide = lo.pivot_table(index="fraction", columns="seed", values="relative_loss", aggfunc="first", dropna=False)
        values = np.where(np.isfinite(wide.to_numpy(dtype=float)), wide.to_numpy(dtype=float), np.inf)
        _line(ax, wide.index.to_numpy() * 100, values, series_color(s), len(seeds))
        ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        ax.axhline(DIVERGENCE, color="0.45", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"{series_label(s)}: loss / loss before, lr={float(lo['lr'].iloc[0]):g}", fontsize=8.5)
        ax.set_xlabel("% of the update applied")
    fig.suptitle(TITLE, fontsize=10)
    say_missing(fig, ["channel_moments"], "the channel heatmaps and variances")
    return fig


def _line(ax, x, values: np.ndarray, color, n_seeds: int, label: str | None = None) -> None:
    finite_max = np.nanmax(np.where(np.isfinite(values), values, np.nan)) if np.isfinite(values).any() else 1.0
    ceiling = finite_max * 10
    with np.errstate(divide="ignore"):
        median = np.exp(np.median(np.log(values), axis=1))  # the geometric middle: log-scale data
    if n_seeds > 1:
        ax.fill_between(x, np.minimum(values.min(axis=1), ceiling), np.minimum(values.max(axis=1), ceiling), color=color, alpha=0.25, lw=0)
    ax.plot(x, np.minimum(median, ceiling), color=color, lw=1.5, marker="o", ms=2, label=label)
    off = ~np.isfinite(median)
    if off.any():
        ax.plot(x[off], np.full(off.sum(), ceiling), "^", color=color, ms=5, mec="black", mew=0.5)


def _at(frame: pd.DataFrame, column: str, fraction: float) -> float:
    """The value at ``fraction``; an overflowed (non-finite) one counts as inf; NaN without rows."""
    if not len(frame):
        return float("nan")
    row = frame.iloc[(frame["fraction"] - fraction).abs().argsort()[:1]]
    value = float(row[column].iloc[0])
    return value if np.isfinite(value) else np.inf


def _relative_loss_after(losses: pd.DataFrame, series: str, last: float) -> float:
    """The relative loss after the full update; NaN when the loss before it was not finite
    (training had diverged before this update: nothing left to measure)."""
    frame = losses[losses["series"] == series]
    if not (frame["fraction"] == 0).any() or not np.isfinite(float(frame.loc[frame["fraction"] == 0, "loss"].iloc[0])):
        return float("nan")
    return _at(frame, "relative_loss", last)


def max_channel_variance(moments: pd.DataFrame, series: str, layer: int) -> float:
    """The largest channel variance of ``layer`` over the whole update (the top of the
    paper's colour bar); inf when any cell overflowed."""
    values = moments.loc[(moments["series"] == series) & (moments["layer"] == layer), "variance"].to_numpy(dtype=float)
    if not len(values):
        return float("nan")
    return float(values.max()) if np.isfinite(values).all() else np.inf


# Bjorck et al.'s Fig. 4 colour bars (PAPERS.md section D, read to a factor ~2): the largest
# channel variance of the no-BN network during its diverging update, per layer.
PAPER_MAX_VARIANCE = {8: 1.0, 44: 5e6, 80: 5e16}
# The paper states neither the update nor its learning rate, and the deep layers' variances
# scale steeply with the step: two orders of magnitude either way for the deep layers. Layer
# 8 hardly moves during the update (its colour bar is that of a network at initialisation):
# one order of magnitude.
DEEP_BAND_FACTOR = 100.0
SHALLOW_BAND_FACTOR = 10.0
BLOW_UP = 100.0  # "explodes during the update": two orders of magnitude at least


def _magnitude_claims(moments: pd.DataFrame, layers: list[int]) -> list[Claim]:
    """The no-BN network's colour-bar maxima against the paper's, at the paper's layers present."""
    found = []
    for layer in [k for k in layers if k in PAPER_MAX_VARIANCE]:
        target = PAPER_MAX_VARIANCE[layer]
        shallow = layer == min(PAPER_MAX_VARIANCE)
        factor = SHALLOW_BAND_FACTOR if shallow else DEEP_BAND_FACTOR
        found.append(
            Claim(
                f"During the diverging update the no-BN network's layer-{layer} channel variances reach ~{target:.0e} "
                f"(paper's colour bar; band: a factor {factor:g} either way)",
                f"max channel variance of layer {layer} over the update, no BN (inf: overflowed)",
                max_channel_variance(moments, "none", layer),
                **near(target, factor),
            )
        )
    low, high = min(PAPER_MAX_VARIANCE), max(PAPER_MAX_VARIANCE)
    if low in layers and high in layers:
        target = PAPER_MAX_VARIANCE[high] / PAPER_MAX_VARIANCE[low]
        found.append(
            Claim(
                f"The activations blow up with depth: layer {high}'s largest channel variance is ~{target:.0e} x "
                f"layer {low}'s (paper's colour bars; band: a factor {DEEP_BAND_FACTOR:g} either way)",
                f"max channel variance over the update, layer {high} / layer {low}, no BN",
                _ratio(max_channel_variance(moments, "none", high), max_channel_variance(moments, "none", low)),
                **near(target, DEEP_BAND_FACTOR),
            )
        )
    return found


def _stand_ins(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(channel_moments, update_loss)``; an absent one replaced by a stand-in with the runs
    the other names and no measured numbers (the moments at the default's layers), so that
    the claims that need it keep their statements and are made not evaluable."""
    moments, losses = tables.get("channel_moments"), tables.get("update_loss")
    if moments is None:
        runs = losses.drop_duplicates("series")[["series"]]
        ends = pd.DataFrame({"fraction": [0.0, float(losses["fraction"].max())]})
        layers = pd.DataFrame({"layer": list(Params().layers)})
        moments = runs.merge(layers, how="cross").merge(ends, how="cross").assign(seed=0, channel=0, mean=np.nan, variance=np.nan)
    if losses is None:
        ends = moments.drop_duplicates(["series", "fraction"])[["series", "fraction"]]
        losses = ends.assign(loss=np.nan, relative_loss=np.nan)
    return moments, losses


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    missing = lacking(tables, "channel_moments", "update_loss")
    if len(missing) == 2:
        return placeholder_claims(FIGURE, missing)

    def of(table: str, found: list[Claim]) -> list[Claim]:  # the claims measured on ``table``
        return unevaluable(found, [table]) if table in missing else found

    def of_losses(series: str, found: list[Claim]) -> list[Claim]:  # measured on the update_loss rows of ``series``
        if "update_loss" not in missing and not (losses["series"] == series).any():
            return [dataclasses.replace(c, evaluable=False, note=f"update_loss has no rows of series {series}") for c in found]
        return of("update_loss", found)

    moments, losses = _stand_ins(tables)
    present = set(moments["series"])
    layers = sorted(moments["layer"].unique())
    deep = layers[-1]
    variance = layer_variance(moments)
    last = float(moments["fraction"].max())
    found = []
    if "none" in present:
        lv = variance[(variance["series"] == "none") & (variance["layer"] == deep)]
        found += of_losses(
            "none",
            [
                Claim(
                    f"Without BN this update diverges (a relative loss above {DIVERGENCE:.0e} counts as divergence)",
                    "loss after the full update / loss before, no BN (inf: the loss overflowed)",
                    _relative_loss_after(losses, "none", last),
                    ">",
                    DIVERGENCE,
                )
            ],
        )
        found += of("channel_moments", _magnitude_claims(moments, layers))
        found += of(
            "channel_moments",
            [
                Claim(
                    "The blow-up happens during the update: the deep layer's variance grows by orders of magnitude "
                    f"(at least {BLOW_UP:g}x) between 0% and 100% of it",
                    f"average channel variance of layer {deep}, after / before the update, no BN",
                    _ratio(_at(lv, "variance", last), _at(lv, "variance", 0.0)),
                    ">=",
                    BLOW_UP,
                )
            ],
        )
    if "nf" in present:
        found += of_losses(
            "nf",
            [
                Claim(
                    "(beyond the paper) The NF-ResNet's update at the same learning rate does not diverge",
                    "loss after the full update / loss before, NF",
                    _relative_loss_after(losses, "nf", last),
                    "<",
                    DIVERGENCE,
                    kind="extension",
                )
            ],
        )
    return found


def _ratio(a: float, b: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.divide(a, b))
