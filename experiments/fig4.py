"""Figure 4 of Bjorck et al. 2018: activations during one diverging update (no BN).

A network without BN takes one SGD update (momentum 0.9, weight decay 5e-4) that makes its
loss diverge. For update ``update`` (0: the first one, from initialisation) we apply
fractions 0, 2%, ..., 100% of the step ``optimizer.step()`` would take and record, at weight
layers 8, 44 and 80, the mean and variance of every output channel over the mini-batch and
the spatial positions (:func:`nfstudy.probes.channel_moments_along_update`), and the loss on
that batch. The NF-ResNet gets the same treatment at the same learning rate.

Which update: the paper states neither the update nor its learning rate, and the size of
the step decides everything: at a fixed learning rate the update's length differs between
seeds (its direction's norm varied 5x over our seeds) and the deep layers' variances grow
exponentially with it, so at lr 1e-3 the layer-80 variance ranged from 4e9 to 8e53 over
seeds 0-4. So the update is defined by how far it overshoots, not by its learning rate.
**The protocol**: the learning rate is the *onset of divergence* of the no-BN network on
that update, the smallest lr at which the relative loss after the full update (the loss on
the same batch after / before) first passes ``divergence_threshold`` = 1e3, the paper's own
definition of divergence (its Fig. 3: a loss above 10^3 x the loss before diverged). The
paper's abstract says deep activations "explode" during "an early on-set of divergence"; the
earliest update that diverges by the paper's own criterion is that onset. Found by
:func:`nfstudy.probes.divergence_onset`: a scan of lrs from 10^-5.5 to 10^0.5 (the step
sizes Figure 3 probes) every half decade, upward, to the first that diverges, then bisection
on log10(lr) between it and the one below until the two are within ``lr_tolerance_decades``
= 0.005 decades (1.2% in lr: ~7 more forward passes); the update takes the smallest
diverging lr found. Every seed's update therefore overshoots by the same criterion (relative
loss just above 1e3). Outcomes other than a bracketed onset (the network does not diverge up
to 10^0.5; it diverges already at 10^-5.5, so the overshoot is not known; the loss before is
not finite) are recorded in ``lr_protocol`` and make the claims about "the diverging update"
not evaluable. ``-p lr X`` fixes the learning rate instead (say ``-p lr 0.1``, BN's, where
Fig. 1 says no BN diverges; with the inits here its activations then overflow float32 early
in the update, and the heatmaps are mostly overflow).

The NF-ResNet takes the no-BN network's onset lr (``onset_series``), not its own: the
extension claim is that the same step that makes the no-BN network diverge does not make
the NF-ResNet diverge. Updates before the probed one (``update`` > 0) are taken at
``train_lr`` = 1e-4, the paper's "normal" learning rate without BN.

Initialisation: the paper's network (``PAPER_INIT``), and ``nf_skip_gain_init = 1``, as for Figure 3 (see
experiments/fig3.py): with SkipInit's 0 the NF-ResNet's residual-branch weights get no
gradient at the first update, so its layers 8, 44 and 80 would hardly move and the
comparison with the no-BN network would be empty.

The tables ``run`` returns and their columns: ``TABLES``.
"""

from __future__ import annotations

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
from nfstudy.probes import UpdateDirection, channel_moments_along_update, divergence_onset
from nfstudy.runtime import progress, resolve_device

from ._common import NetworkParams, check_network_params, empty_figure, lacking, make_resnet, placeholder_claims, say_missing

FIGURE = "fig4"
TITLE = "Channel means and variances during one update at a diverging learning rate (Bjorck et al. 2018, Fig. 4)"


@dataclass(frozen=True)
class Params(NetworkParams):
    layers: tuple[int, ...] = (8, 44, 80)  # weight layers numbered from the input
    batch_size: int = 128  # SGD mini-batch (paper: 128)
    init: str = PAPER_INIT  # the paper's network, identified by measurement: results/init_survey/
    series: tuple[str, ...] = ("none", "nf")  # networks: bn | none | ws | nf (paper: none)
    lr: float | None = None  # None: the onset of divergence of onset_series (the protocol); a number: that lr
    onset_series: str = "none"  # the network whose onset lr every series takes (the paper's: no BN)
    divergence_threshold: float = DIVERGENCE  # the relative loss the update first passes (paper, Fig. 3: 1e3)
    log10_lr_min: float = -5.5  # the onset search's range, log10 lr: the step sizes Figure 3 probes
    log10_lr_max: float = 0.5  # the largest lr tried; no divergence up to it: "no divergence in range"
    lr_scan_decades: float = 0.5  # the scan's spacing (decades); then bisection between the crossing's neighbours
    lr_tolerance_decades: float = 0.005  # bisection stops at this bracket (decades; 0.005: lr within 1.2%)
    train_lr: float = 1e-4  # lr of the updates before the probed one (update > 0): no BN's "normal" lr (paper, Fig. 3)
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
        if self.lr is not None:
            check_positive("lr", self.lr)
        elif self.onset_series not in self.series:
            raise ValueError(
                f"onset_series {self.onset_series!r} is not among the series ({', '.join(self.series)}): the protocol "
                f"takes the onset of divergence of one of them; add it to series, choose one of them, or fix -p lr"
            )
        check_positive("divergence_threshold", self.divergence_threshold)
        if not self.log10_lr_min < self.log10_lr_max:
            raise ValueError(
                f"log10_lr_min ({self.log10_lr_min}) must be below log10_lr_max ({self.log10_lr_max}): "
                "the onset is searched for between 10**log10_lr_min and 10**log10_lr_max"
            )
        check_positive("lr_scan_decades", self.lr_scan_decades)
        check_positive("lr_tolerance_decades", self.lr_tolerance_decades)
        check_positive("train_lr", self.train_lr)
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
        "lr": "the learning rate of the update (the protocol's: lr_protocol)",
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
    "lr_protocol": {  # one row: how the update's learning rate was chosen
        "protocol": "onset (the smallest lr whose full update passes the threshold, bisected) | fixed (the lr parameter)",
        "series": "the network whose onset it is (onset_series; empty when fixed)",
        "update": "as in channel_moments",
        "outcome": "bracketed | no divergence in range | diverged at the smallest step | loss before not finite | fixed",
        "lr": "the learning rate every series' update takes",
        "lr_below": "the largest lr found not to diverge, lr / lr_below <= 10**tolerance_decades (NaN: none)",
        "relative_loss": "loss after / before the full update at lr, as the search measured it (NaN: fixed)",
        "relative_loss_below": "the same at lr_below",
        "loss_before": "the batch's loss before the update (nats)",
        "update_norm": "||d|| over all parameters (the step is lr * d)",
        "threshold": "the relative loss the search looks for (divergence_threshold)",
        "log10_lr_min": "the search range, log10 lr",
        "log10_lr_max": "its top",
        "scan_decades": "the scan's spacing, decades",
        "tolerance_decades": "the bisection's final bracket, decades",
        "n_scan": "lrs tried by the scan",
        "n_bisect": "lrs tried by the bisection",
    },
    "lr_search": {  # one row per lr the protocol tried, in order (no rows when the lr is fixed)
        "series": "as in lr_protocol",
        "update": "as in channel_moments",
        "step": "the evaluation's number, 0, 1, ...",
        "phase": "scan | bisect",
        "lr": "the learning rate tried",
        "loss": "the batch's loss after the full update at it",
        "relative_loss": "loss / the loss before",
        "diverged": "relative loss > threshold or not finite",
    },
}


def _prepared(params: Params, series: str, data, seed: int, device):
    """The network of ``series`` with ``update`` updates taken (at ``train_lr``), its optimizer
    and the mini-batch of the probed update."""
    torch.manual_seed(seed)  # every series starts from the same weights (where shapes agree)
    model = make_resnet(params, series, data.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.train_lr, momentum=params.momentum, weight_decay=params.weight_decay)
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
    return model, optimizer, images, labels


def _onset(params: Params, model, optimizer, images, labels) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The protocol: the onset of divergence of this network's update (lr_protocol, lr_search)."""
    update = UpdateDirection.compute(model, optimizer, images, labels)
    found = divergence_onset(
        model,
        update,
        images,
        labels,
        low=10.0**params.log10_lr_min,
        high=10.0**params.log10_lr_max,
        scan_decades=params.lr_scan_decades,
        tolerance_decades=params.lr_tolerance_decades,
        threshold=params.divergence_threshold,
    )
    phases = found.search["phase"]
    protocol = {
        "protocol": "onset",
        "series": params.onset_series,
        "outcome": found.outcome,
        "lr": found.step_size,
        "lr_below": found.step_below,
        "relative_loss": found.relative_loss,
        "relative_loss_below": found.relative_loss_below,
        "loss_before": found.loss_before,
        "update_norm": found.update_norm,
        "n_scan": int((phases == "scan").sum()),
        "n_bisect": int((phases == "bisect").sum()),
    }
    search = found.search.rename(columns={"step_size": "lr"}).assign(series=params.onset_series)
    return pd.DataFrame([protocol]), search


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    data = load_dataset(params.dataset)
    prepared = {}
    if params.lr is None:
        prepared[params.onset_series] = _prepared(params, params.onset_series, data, seed, device)
        protocol, search = _onset(params, *prepared[params.onset_series])
    else:
        protocol = pd.DataFrame([{"protocol": "fixed", "series": "", "outcome": "fixed", "lr": params.lr, "n_scan": 0, "n_bisect": 0}])
        search = pd.DataFrame(columns=list(TABLES["lr_search"]))
    lr = float(protocol["lr"].iloc[0])
    moments, losses = [], []
    for series in progress(params.series, desc="fig4: along one update", unit="net"):
        model, optimizer, images, labels = prepared.pop(series, None) or _prepared(params, series, data, seed, device)
        for group in optimizer.param_groups:
            group["lr"] = lr
        channel_table, loss_table = channel_moments_along_update(
            model, optimizer, images, labels, params.layers, params.fractions, chunk_size=params.chunk_size
        )
        moments.append(channel_table.assign(series=series, lr=lr, update=params.update))
        losses.append(loss_table.assign(series=series, lr=lr, update=params.update))
        del model, optimizer
    moments = pd.concat(moments, ignore_index=True)
    losses = pd.concat(losses, ignore_index=True)
    protocol = protocol.assign(
        update=params.update,
        threshold=params.divergence_threshold,
        log10_lr_min=params.log10_lr_min,
        log10_lr_max=params.log10_lr_max,
        scan_decades=params.lr_scan_decades,
        tolerance_decades=params.lr_tolerance_decades,
    ).reindex(columns=list(TABLES["lr_protocol"]))
    search = search.assign(update=params.update)
    return {
        "channel_moments": moments[list(TABLES["channel_moments"])],
        "update_loss": losses[list(TABLES["update_loss"])],
        "lr_protocol": protocol,
        "lr_search": search[list(TABLES["lr_search"])],
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
    losses = tables.get("update_loss", pd.DataFrame(columns=["seed", "series", "fraction", "lr", "relative_loss"]))
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
        lrs = losses.loc[losses["series"] == s, "lr"].unique()
        ax.set_title(f"loss / loss before, lr={lr:.3g}" if len(lrs) == 1 else "loss / loss before, each seed's lr", fontsize=8.5)
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
    fig.suptitle(f"{TITLE}\n{_protocol_note(tables.get('lr_protocol'))}\n{note}", fontsize=10)
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


def _protocol_note(protocol: pd.DataFrame | None) -> str:
    """How the update's lr was chosen, over the seeds present, from ``lr_protocol``."""
    if protocol is None or protocol.empty:
        return "update: lr fixed"
    if (protocol["protocol"] == "fixed").all():
        return f"update: lr fixed at {', '.join(f'{v:g}' for v in protocol['lr'].unique())}"
    onset = protocol[protocol["protocol"] == "onset"]
    ok = onset[onset["outcome"] == "bracketed"]
    text = (
        f"update: lr = {series_label(onset['series'].iloc[0])}'s onset of divergence "
        f"(the smallest lr whose full update passes a relative loss of {onset['threshold'].iloc[0]:g}, bisected)"
    )
    if len(ok):
        text += f"; lr {_span(ok['lr'], '.3g')}, relative loss {_span(ok['relative_loss'], '.4g')}"
    if len(ok) < len(protocol):
        missed = protocol.loc[protocol["outcome"] != "bracketed", "outcome"].unique()
        text += f"; {len(protocol) - len(ok)} seed(s) without a bracketed onset: {', '.join(missed)}"
    return text


def _span(values: pd.Series, spec: str) -> str:
    low, high = format(values.min(), spec), format(values.max(), spec)
    return low if low == high else f"{low}-{high}"


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


# Bjorck et al.'s Fig. 4 colour bars (docs/papers.md#bjorck-fig-4, read to a factor ~2): the largest
# channel variance of the no-BN network during its diverging update, per layer.
PAPER_MAX_VARIANCE = {8: 1.0, 44: 5e6, 80: 5e16}
# The paper states neither the update nor its learning rate; the protocol (module docstring)
# fixes how far ours overshoots, not that the paper's overshot as far, and the deep layers'
# variances scale steeply with the step: two orders of magnitude either way for them. Layer
# 8 hardly moves during the update (its colour bar is that of a network at initialisation):
# one order of magnitude.
DEEP_BAND_FACTOR = 100.0
SHALLOW_BAND_FACTOR = 10.0
BLOW_UP = 100.0  # "explodes during the update": two orders of magnitude at least


def _magnitude_claims(moments: pd.DataFrame, layers: list[int], why_not: str) -> list[Claim]:
    """The no-BN network's colour-bar maxima against the paper's, at the paper's layers present
    (all of them when ``moments`` is None: not evaluable, ``why_not`` says why)."""
    found = []
    shown = [k for k in layers if k in PAPER_MAX_VARIANCE]
    evaluable = not why_not
    for layer in shown:
        target = PAPER_MAX_VARIANCE[layer]
        shallow = layer == min(PAPER_MAX_VARIANCE)
        factor = SHALLOW_BAND_FACTOR if shallow else DEEP_BAND_FACTOR
        found.append(
            Claim(
                f"During the diverging update the no-BN network's layer-{layer} channel variances reach ~{target:.0e} "
                f"(paper's colour bar; band: a factor {factor:g} either way)",
                f"max channel variance of layer {layer} over the update, no BN (inf: overflowed)",
                max_channel_variance(moments, "none", layer) if evaluable else np.nan,
                **near(target, factor),
                evaluable=evaluable,
                note=why_not,
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
                _ratio(max_channel_variance(moments, "none", high), max_channel_variance(moments, "none", low)) if evaluable else np.nan,
                **near(target, DEEP_BAND_FACTOR),
                evaluable=evaluable,
                note=why_not,
            )
        )
    return found


def protocol_row(tables: dict[str, pd.DataFrame]) -> dict | None:
    """The one row of ``lr_protocol`` (how the update's lr was chosen); None when the table is
    absent (a run from before the protocol: its lr was fixed)."""
    table = tables.get("lr_protocol")
    if table is None or table.empty:
        return None
    return table.iloc[0].to_dict()


def _not_a_diverging_update(protocol: dict | None, relative_none: float) -> str:
    """Why the no-BN update is not the paper's diverging update ("" when it is)."""
    if protocol is not None and protocol.get("protocol") == "onset" and protocol.get("outcome") != "bracketed":
        return (
            f"the onset of divergence was not found: {protocol.get('outcome')} "
            f"(lr 10^{protocol.get('log10_lr_min'):g}..10^{protocol.get('log10_lr_max'):g}): its overshoot is not the protocol's"
        )
    if not np.isnan(relative_none) and not relative_none > DIVERGENCE:
        return f"the no-BN update does not diverge (relative loss {relative_none:.3g} <= {DIVERGENCE:g}): no diverging update to measure"
    if np.isnan(relative_none):
        return "the no-BN loss before the update is not finite: nothing left to measure"
    return ""


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    losses = tables.get("update_loss")
    moments = tables.get("channel_moments")
    if losses is None:  # every claim is measured on the update's losses
        return placeholder_claims(FIGURE, lacking(tables, "update_loss", "channel_moments"))
    present = set(losses["series"])
    last = float(losses["fraction"].max())
    protocol = protocol_row(tables)
    found = []
    if "none" in present:
        relative_none = _relative_loss_after(losses, "none", last)
        found.append(
            Claim(
                f"Without BN this update diverges (a relative loss above {DIVERGENCE:.0e} counts as divergence)",
                "loss after the full update / loss before, no BN, at the update's lr (inf: the loss overflowed)",
                relative_none,
                ">",
                DIVERGENCE,
                evaluable=not np.isnan(relative_none),
                note="" if not np.isnan(relative_none) else "the no-BN loss before the update is not finite",
            )
        )
        why_not = _not_a_diverging_update(protocol, relative_none)
        if moments is None:
            why_not = why_not or "the table channel_moments is absent"
            layers = sorted(PAPER_MAX_VARIANCE)
        else:
            layers = sorted(moments["layer"].unique())
            if not (moments["series"] == "none").any():
                why_not = why_not or "channel_moments has no rows of series none"
                layers = layers or sorted(PAPER_MAX_VARIANCE)
        found += _magnitude_claims(moments, layers, why_not)
        deep = layers[-1]
        during = np.nan
        if not why_not:
            variance = layer_variance(moments)
            lv = variance[(variance["series"] == "none") & (variance["layer"] == deep)]
            during = _ratio(_at(lv, "variance", last), _at(lv, "variance", 0.0))
        found.append(
            Claim(
                "The blow-up happens during the update: the deep layer's variance grows by orders of magnitude "
                f"(at least {BLOW_UP:g}x) between 0% and 100% of it",
                f"average channel variance of layer {deep}, after / before the update, no BN",
                during,
                ">=",
                BLOW_UP,
                evaluable=not why_not,
                note=why_not,
            )
        )
    if "nf" in present:
        lrs = losses.groupby("series")["lr"].first()
        if "none" in present:
            same = bool(lrs["nf"] == lrs["none"])  # one number copied into both, not two computations
            why = "" if same else f"NF's lr ({lrs['nf']:g}) is not no BN's ({lrs['none']:g})"
        else:
            same = protocol is None or protocol.get("protocol") == "fixed"
            why = "" if same else "no no-BN series: NF's lr is its own onset of divergence, not no BN's"
        relative_nf = _relative_loss_after(losses, "nf", last)
        if same and np.isnan(relative_nf):
            why = "NF's loss before the update is not finite"
        found.append(
            Claim(
                "(beyond the paper) The NF-ResNet's update at the same learning rate does not diverge",
                "loss after the full update / loss before, NF",
                relative_nf,
                "<",
                DIVERGENCE,
                kind="extension",
                evaluable=not why,
                note=why,
            )
        )
    return found


def _ratio(a: float, b: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.divide(a, b))
