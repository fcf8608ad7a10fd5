"""Signal propagation plots (Brock, De, Smith, ICLR 2021, arXiv 2101.08692, Fig. 1/2).

For a freshly initialised ResNet in train mode (BatchNorm uses the batch's statistics),
at the stem (the input of the first block, block 0) and at every residual block's
output: the *average channel squared mean* ``mean_C(mean_NHW(x)^2)``, the *average
channel variance* ``mean_C(var_NHW(x))`` and the *residual-branch variance*
``mean_C(var_NHW(f_i))``, the branch's output before it is scaled (NF: before alpha and
the skip gain) and added to the shortcut, with the branch's squared mean
``branch_avg_channel_sq_mean``. Series: BN, no BN (same conv weights), the NF-ResNet and
the NF paper's decisive control (its Fig. 2), the same NF-ResNet *without* Scaled WS
(``nf_no_ws``: plain convs with He init, see :mod:`nfstudy.models.resnet`), which
shows the mean shift Scaled WS removes; inputs: a unit-Gaussian batch and a batch of
real images.

Our BN and no-BN networks are He et al.'s CIFAR ResNets: *post*-activation blocks
``relu(x + f(x))``, so their block outputs are ReLU outputs (a positive mean by
construction), where the NF paper plots pre-activation ResNets.

The control is initialised with ``nf_no_ws_init`` (He init, ``kaiming_fan_in``, as the
NF paper states for its Fig. 2), whatever ``init`` the other series use.

For the NF series (both) we also record the analytic variance the NF-ResNet is built on:
``Var(h_{i+1}) = Var(h_i) + (alpha g)^2`` from the stem's 1, reset to ``1 + (alpha g)^2``
by each stage's transition block (``g`` the skip gain), as statistic ``expected_var``.
The NF series uses ``nf_skip_gain_init = 1``: with SkipInit's zero gain the branches
are switched off and every block passes its input through (the plot is then flat by
construction); the NF paper's plots show the variance growing as ``alpha^2`` per block.

The tables ``run`` returns and their columns: ``TABLES``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from nfstudy.claims import Claim
from nfstudy.data import load_dataset
from nfstudy.models import INITS, NF_NORMS, NFBlock
from nfstudy.params import check_choice
from nfstudy.plots import figure, series_color, series_label
from nfstudy.probes import activation_statistics
from nfstudy.runtime import progress, resolve_device

from ._common import NetworkParams, check_network_params, empty_figure, lacking, make_resnet, placeholder_claims

FIGURE = "spp"
TITLE = "Signal propagation at initialisation (Brock, De, Smith 2021)"
INPUTS = ("gaussian", "images")
STATISTICS = ("avg_channel_sq_mean", "avg_channel_var", "branch_avg_channel_sq_mean", "branch_avg_channel_var")


@dataclass(frozen=True)
class Params(NetworkParams):
    batch_size: int = 128  # images in the probed mini-batch
    init: str = "kaiming_fan_out"  # torchvision's ResNet default
    series: tuple[str, ...] = ("bn", "none", "nf", "nf_no_ws")  # networks; nf_no_ws: NF without Scaled WS (the paper's control)
    inputs: tuple[str, ...] = INPUTS  # unit-Gaussian noise and/or real images
    nf_skip_gain_init: float = 1.0  # see the module docstring
    nf_no_ws_init: str = "kaiming_fan_in"  # the control: Brock, De, Smith 2021a, Fig. 2: He init

    def __post_init__(self):
        check_network_params(self)
        check_choice("nf_no_ws_init", self.nf_no_ws_init, INITS)
        for i in self.inputs:
            check_choice("input", i, INPUTS)


PROFILES = {
    "paper": Params(),
    # The same ResNet-110s on the bundled digits: six forward passes in all.
    "quick": Params(dataset="digits"),
}


def _stage(name: str) -> int:
    """``layer2.5`` -> 2; the stem -> 0."""
    return int(name[len("layer")]) if name.startswith("layer") else 0


def expected_nf_variance(model) -> list[float]:
    """The NF-ResNet's analytic Var at the stem and after every block (see the docstring),
    for the skip gains the blocks hold now."""
    expected, var = [1.0], 1.0
    for _, block in model.blocks():
        if not isinstance(block, NFBlock):
            raise TypeError(f"expected an NF-ResNet, got a block of type {type(block).__name__}")
        # A transition block's shortcut sees the normalised input h / beta: variance 1.
        var = (1.0 if block.shortcut is not None else var) + (block.alpha * float(block.skip_gain.detach())) ** 2
        expected.append(var)
    return expected


TABLES = {
    "signal_propagation": {  # one row per (series, input, block, statistic)
        "series": "bn | none | nf | nf_no_ws (the NF-ResNet without Scaled WS, Brock et al.'s control)",
        "input": "gaussian | images",
        "block": "0 = the stem, then every residual block from the input",
        "block_name": "the block's module name",
        "stage": "the stage the block belongs to",
        "statistic": "avg_channel_sq_mean | avg_channel_var | branch_avg_channel_sq_mean | branch_avg_channel_var "
        "(the residual branch before its scaling; none at the stem) | expected_var (NF series: the analytic "
        "variance the NF-ResNet is designed around)",
        "value": "the statistic",
    },
}


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    batches = {}
    if "images" in params.inputs:
        data = load_dataset(params.dataset)
        loader = data.loader("train", params.batch_size, seed=seed, device=device, drop_last=True)
        batches["images"] = loader.first_batch()[0]
        num_classes = data.num_classes
    else:
        num_classes = 10
    if "gaussian" in params.inputs:
        g = torch.Generator().manual_seed(seed)
        batches["gaussian"] = torch.randn(params.batch_size, 3, 32, 32, generator=g).to(device)
    frames = []
    bar = progress(total=len(params.series) * len(batches), desc="spp: signal propagation", unit="pass")
    for series in params.series:
        torch.manual_seed(seed)  # every series from the same conv weights
        network = replace(params, init=params.nf_no_ws_init) if series == "nf_no_ws" else params
        model = make_resnet(network, series, num_classes).to(device)
        for input_kind in params.inputs:
            stats = activation_statistics(model, batches[input_kind], "blocks")
            stats = stats[stats["statistic"].isin(STATISTICS)]
            if series in NF_NORMS:
                expected = expected_nf_variance(model)
                points = stats.drop_duplicates("depth")[["depth", "name"]]
                stats = pd.concat(
                    [stats, points.assign(statistic="expected_var", value=[expected[d] for d in points["depth"]])],
                    ignore_index=True,
                )
            frames.append(stats.assign(series=series, input=input_kind))
            bar.update()
    bar.close()
    table = pd.concat(frames, ignore_index=True).rename(columns={"depth": "block", "name": "block_name"})
    table["stage"] = table["block_name"].map(_stage)
    columns = ["series", "input", "block", "block_name", "stage", "statistic", "value"]
    return {"signal_propagation": table[columns].reset_index(drop=True)}


# -------------------- the figure and its claims, drawn from the tables alone


PANELS = {
    "avg_channel_sq_mean": "average channel squared mean",
    "avg_channel_var": "average channel variance",
    "branch_avg_channel_var": "residual-branch variance",
}
INPUT_LABELS = {"gaussian": "unit-Gaussian input", "images": "real images"}
# The control series, until nfstudy.plots names it.
CONTROL_LABELS = {"nf_no_ws": "NF-ResNet without WS (He init)"}


def _label(series: str) -> str:
    return CONTROL_LABELS.get(series, series_label(series))


def _order(df: pd.DataFrame, column: str) -> list[str]:
    return list(dict.fromkeys(df[column]))


def _curve(table: pd.DataFrame, series: str, input_kind: str, statistic: str) -> pd.DataFrame:
    """Per block: mean and std over seeds of log10(value)."""
    rows = table[(table["series"] == series) & (table["input"] == input_kind) & (table["statistic"] == statistic)]
    logs = rows.assign(log10=np.log10(rows["value"].where(rows["value"] > 0)))
    return logs.groupby("block")["log10"].agg(mean="mean", std="std").reset_index()


def _panel(ax, table, input_kind, statistic, series_list, n_seeds, log: bool) -> None:
    for series in series_list:
        curve = _curve(table, series, input_kind, statistic)
        if curve.empty or curve["mean"].isna().all():
            continue
        x, mean, std = curve["block"], curve["mean"].to_numpy(), curve["std"].fillna(0).to_numpy()
        ax.plot(x, 10**mean, color=series_color(series), lw=1.6, label=_label(series))
        if n_seeds > 1:
            ax.fill_between(x, 10 ** (mean - std), 10 ** (mean + std), color=series_color(series), alpha=0.25, lw=0)
        if statistic == "avg_channel_var" and series == "nf":
            # The analytic Var assumes a unit-variance stem: scale it by the measured one.
            expected = _curve(table, "nf", input_kind, "expected_var")["mean"].to_numpy() + mean[0]
            ax.plot(x, 10**expected, color="k", ls="--", lw=1, label="NF analytic x stem variance")
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)


def plot(tables: dict[str, pd.DataFrame]):
    """Per input two rows: every series on a log scale, then BN and NF alone on a linear
    scale (the no-BN network's explosion would flatten them). Columns: the three
    statistics. Lines: the mean over seeds (band +- one std of log10); NF's analytic
    variance dashed; dotted lines at each stage's transition block."""
    if lacking(tables, "signal_propagation"):
        return empty_figure(TITLE, ["signal_propagation"])
    table = tables["signal_propagation"]
    inputs = _order(table, "input")
    all_series = _order(table, "series")
    tame = [s for s in all_series if s != "none"]
    views = [(i, True) for i in inputs] if not tame or tame == all_series else [(i, log) for i in inputs for log in (True, False)]
    n_seeds = table["seed"].nunique()
    fig, axes = figure(len(views), len(PANELS), width=4.2, height=2.6, sharex=True)
    transitions = table.drop_duplicates("block").sort_values("block")
    transitions = transitions[transitions["stage"].diff() > 0]["block"].tolist()[1:]  # stage 2 and 3 starts
    for row, (input_kind, log) in enumerate(views):
        for col, (statistic, label) in enumerate(PANELS.items()):
            ax = axes[row][col]
            _panel(ax, table, input_kind, statistic, all_series if log else tame, n_seeds, log)
            for t in transitions:
                ax.axvline(t, color="0.5", ls=":", lw=1)
            ax.set_title(label if row == 0 else "", fontsize=10)
            if row == len(views) - 1:
                ax.set_xlabel("residual block (0 = stem)")
            if col == 0:
                scale = "log scale" if log else "linear, without no BN"
                ax.set_ylabel(f"{INPUT_LABELS.get(input_kind, input_kind)}\n({scale})")
        axes[row][1].legend(fontsize=7, loc="upper left")
    seeds = f", mean of {n_seeds} seeds (band: +- one std of log10)" if n_seeds > 1 else ""
    fig.suptitle(f"{TITLE}\nblock outputs of freshly initialised ResNets{seeds}; dotted: stage transitions", fontsize=10)
    return fig


def _values(table: pd.DataFrame, series: str, input_kind: str, statistic: str) -> pd.Series:
    rows = table[(table["series"] == series) & (table["input"] == input_kind) & (table["statistic"] == statistic)]
    return rows.set_index("block")["value"].sort_index()


# Thresholds (Brock, De, Smith 2021a; docs/papers.md#spp-magnitudes), each defined once:
# The mean shift, as the squared channel mean over the channel variance. The paper's Fig. 1
# calls BN-ReLU-Conv's squared mean ~14-17 at a variance ~35 (a ratio ~0.4-0.5) a mean
# shift, and ReLU-BN-Conv's ~0 none; Scaled WS makes an NF-ResNet look like the latter.
MEAN_SHIFT = 0.4  # at least the ratio of the paper's mean-shifted BN-ReLU-Conv network
NO_MEAN_SHIFT = 0.2  # half of it (the figures are read to a factor ~2): "~0"
# He init keeps a ReLU-fed conv's second moment; of it a share 1/pi sits in the channel
# means (E[relu(z)]^2 / E[relu(z)^2] = (1/2pi) / (1/2)), leaving the variance 1 - 1/pi
# ~ 0.68, the residual-branch variance the paper shows below 1 (~0.68). Read to a factor 2:
BRANCH_MEAN_SHARE = 1 / (2 * np.pi)  # half of 1/pi
ANALYTIC_VAR_LOG2 = 1.0  # NF: variance within a factor 2 of the analytic recursion
EXPLOSION_DECADES = 2.0  # "explodes": two orders of magnitude at least


def _shift(table: pd.DataFrame, series: str, input_kind: str) -> pd.Series:
    """Per block: average channel squared mean / average channel variance."""
    return _values(table, series, input_kind, "avg_channel_sq_mean") / _values(table, series, input_kind, "avg_channel_var")


def _branch_mean_share(table: pd.DataFrame, series: str, input_kind: str) -> float:
    """Median over blocks of the residual branch's squared mean / (squared mean + variance):
    the share of the branch's second moment that sits in its channel means."""
    sq = _values(table, series, input_kind, "branch_avg_channel_sq_mean")
    var = _values(table, series, input_kind, "branch_avg_channel_var")
    return float((sq / (sq + var)).median())


def claims(tables: dict[str, pd.DataFrame]) -> list[Claim]:
    if lacking(tables, "signal_propagation"):
        return placeholder_claims(FIGURE, ["signal_propagation"])
    table = tables["signal_propagation"]
    present, inputs = set(table["series"]), _order(table, "input")
    on = f"worst of {' and '.join(inputs)} input"
    found = []
    if "nf" in present:
        # The analytic Var assumes a unit-variance stem; real images give the stem another
        # variance, so the prediction is scaled by the stem's measured variance.
        worst = max(
            float(np.abs(np.log2(var / (var.iloc[0] * _values(table, "nf", i, "expected_var")))).max())
            for i in inputs
            for var in [_values(table, "nf", i, "avg_channel_var")]
        )
        found.append(
            Claim(
                "NF-ResNets keep the average channel variance at its analytic value, O(1), at every depth "
                "(Var(h_i+1) = Var(h_i) + alpha^2, reset at each stage)",
                f"max over blocks of |log2(variance / (stem variance x analytic Var))|, NF, {on}",
                worst,
                "<=",
                ANALYTIC_VAR_LOG2,
            )
        )
        found.append(
            Claim(
                "NF-ResNets (scaled WS) show no mean shift: the squared channel mean stays ~0, as ReLU-BN-Conv's "
                f"(below {NO_MEAN_SHIFT:g} of the variance; the paper's mean-shifted BN-ReLU-Conv: ~0.4-0.5)",
                f"max over blocks of squared mean / variance, NF, {on}",
                max(float(_shift(table, "nf", i).max()) for i in inputs),
                "<",
                NO_MEAN_SHIFT,
            )
        )
    if "nf_no_ws" in present:
        # Brock, De, Smith's decisive control (their Fig. 2): the mean shift is WS's to remove.
        found.append(
            Claim(
                "NF-ResNets without scaled WS (He init) show the mean shift: the squared channel mean grows with "
                f"depth to at least {MEAN_SHIFT:g} of the variance (the paper's BN-ReLU-Conv level, ~0.4-0.5)",
                f"max over blocks of squared mean / variance, NF without WS, {on}",
                min(float(_shift(table, "nf_no_ws", i).max()) for i in inputs),
                ">=",
                MEAN_SHIFT,
            )
        )
        found.append(
            Claim(
                "NF-ResNets without scaled WS: the residual-branch variance is below 1 (paper ~0.68): part of the "
                f"branch's second moment sits in its channel means (He init on ReLU input: 1/pi; at least {BRANCH_MEAN_SHARE:.2f})",
                f"median over blocks of branch squared mean / (squared mean + variance), NF without WS, {on}",
                min(_branch_mean_share(table, "nf_no_ws", i) for i in inputs),
                ">=",
                BRANCH_MEAN_SHARE,
            )
        )
    if "none" in present:
        found.append(
            Claim(
                "Unnormalised ReLU ResNets: the average channel variance explodes with depth",
                f"log10(variance at the last block / at the stem), no BN, {on}",
                min(float(np.log10(v.iloc[-1] / v.iloc[0])) for i in inputs for v in [_values(table, "none", i, "avg_channel_var")]),
                ">=",
                EXPLOSION_DECADES,
            )
        )
        found.append(
            Claim(
                f"Unnormalised ReLU ResNets: the mean shift grows with depth (squared mean >= {MEAN_SHIFT:g} of the "
                "variance at the last block; our post-activation BN network has one too, its blocks ending in a ReLU)",
                f"squared mean / variance at the last block, no BN, {on}",
                min(float(_shift(table, "none", i).iloc[-1]) for i in inputs),
                ">=",
                MEAN_SHIFT,
            )
        )
    if "bn" in present:
        # A BN branch ends in BatchNorm (unit variance), so each block adds at most ~1.
        found.append(
            Claim(
                "BN ResNets: the variance grows at most linearly with depth (about one unit per block)",
                f"variance at the last block / (stem variance + number of blocks), BN, {on}",
                max(float(v.iloc[-1] / (v.iloc[0] + (len(v) - 1))) for i in inputs for v in [_values(table, "bn", i, "avg_channel_var")]),
                "<=",
                1.0,
            )
        )
    return found
