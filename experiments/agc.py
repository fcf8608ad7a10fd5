"""The AGC ablation of Brock, De, Smith, Simonyan 2021 (NFNets, Fig. 2), at CIFAR scale.

Brock et al. train NF-ResNet-50 on ImageNet at batch sizes 256 ... 4096 with the learning
rate scaled linearly, ``0.1 * B / 256``, and show (a) that batch-normalised ResNets and
NF-ResNets *with* adaptive gradient clipping (AGC) keep their accuracy as the batch grows
while NF-ResNets without it become unstable, and (b) the accuracy across clipping
thresholds lambda in {0.01, 0.02, 0.04, 0.08, 0.16} per batch size: smaller lambda is
needed at larger batches. Here a CIFAR ResNet does the same: every series in ``series``
trains at every batch size with ``lr = reference_lr * B / reference_batch_size`` for the
same number of epochs (so a larger batch takes fewer steps); a series ending in ``+agc``
trains once per lambda in ``agc_lambdas`` with ``GradientClipper("adaptive", lambda)``
(the final classifier's weight unclipped, as in the paper).

Training is :func:`nfstudy.train.train` (SGD, momentum 0.9, weight decay 5e-4, the rate
divided by 10 at 50% and 75% of the budget, after ``warmup_epochs`` of linear warmup); with
``fuse`` (on CUDA by default) a norm's runs at one batch size, ``nf`` and every ``nf+agc``
threshold, train side by side as one stacked network (:func:`nfstudy.train.train_fused`:
the same runs, equal up to float rounding). A run whose loss exceeds 1000x its
first loss or stops being finite is recorded as diverged (final accuracies NaN) and the
sweep goes on. Every run of a seed starts from the same weights for its norm and sees the
same order of batches at a given batch size; with a ``checkpoint_dir`` every run checkpoints
into its own folder and an interrupted sweep resumes.

Profiles:

* ``paper``: CIFAR-10, ResNet-56 (56 weight layers, the CIFAR depth closest to the paper's
  ResNet-50), the paper's batch sizes 256 ... 4096 and learning rates 0.1 ... 1.6, 90 epochs.
  A batch of 4096 32x32 images through ResNet-56 keeps ~1.5M activations per image for the
  backward pass, 10-30 GB in bf16 (our estimate, not measured: no GPU in this session), so
  one 80 GB GPU holds the paper's largest batch. The rate warms up linearly over the first
  5 epochs (``warmup_epochs``), as large-batch recipes with the linear scaling rule do.
* ``quick``: the bundled digits at 8x8 (1498 training images), ResNet-8, batch sizes 32,
  128, 512 with the paper's learning rates 0.1, 0.4, 1.6: the reference batch is 32 instead
  of 256 (``reference_batch_size``), so the 16-fold range of batch sizes keeps the paper's
  range of learning rates, which is what makes an unclipped NF-ResNet unstable. 40 epochs
  (120 steps at batch 512, enough for BN to stay trained there), the first 4 warming up,
  and three of the paper's thresholds (0.01, 0.04, 0.16).

A diverged run's network predicts nothing: wherever runs are compared (the panels, the
claims) its accuracy counts as chance, ``chance_accuracy``, and it is marked as diverged.

The tables ``run`` returns and their columns: ``TABLES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D

from nfstudy.claims import Claim
from nfstudy.clip import GradientClipper
from nfstudy.constants import DIVERGENCE
from nfstudy.data import load_dataset
from nfstudy.models import NORMS
from nfstudy.params import check_choice, check_positive
from nfstudy.plots import figure, series_color, series_label, series_linestyle
from nfstudy.runtime import resolve_device
from nfstudy.series import split_agc
from nfstudy.train import FUSE_CHOICES, HISTORY_DESCRIPTIONS, TrainConfig, TrainJob, train_runs

from ._common import (
    NetworkParams,
    check_network_params,
    empty_figure,
    history_table,
    lacking,
    make_resnet,
    placeholder_claims,
    unevaluable,
)

FIGURE = "agc"
TITLE = "Adaptive gradient clipping across batch sizes (Brock et al. 2021, NFNets Fig. 2)"
# Brock et al. 2021, Fig. 2(b): the clipping thresholds of the ablation.
PAPER_LAMBDAS = (0.01, 0.02, 0.04, 0.08, 0.16)
# Fig. 2(a): batch sizes 256 ... 4096 at lr 0.1 * B / 256.
PAPER_BATCH_SIZES = (256, 512, 1024, 2048, 4096)
HISTORY_KEYS = ["series", "norm", "agc_lambda", "batch_size", "base_lr"]


def parse_series(spec: str) -> tuple[str, bool]:
    """``"nf+agc"`` -> ``("nf", True)``, ``"bn"`` -> ``("bn", False)``; a clear error otherwise."""
    norm, agc = split_agc(spec)
    if not norm or "+" in norm or "@" in norm:
        raise ValueError(f"series must be a norm, optionally with +agc, e.g. 'bn', 'nf', 'nf+agc'; got {spec!r}")
    check_choice("norm in series", norm, NORMS)
    return norm, agc


def scaled_lr(batch_size: int, reference_lr: float, reference_batch_size: int) -> float:
    """The linear scaling rule of the paper (Goyal et al. 2017): ``reference_lr * B / reference_B``."""
    return reference_lr * batch_size / reference_batch_size


@dataclass(frozen=True)
class Params(NetworkParams):
    image_size: int = 32  # digits and synthetic only (digits are natively 8x8)
    depth: int = 56  # ResNet-56, the CIFAR depth closest to the paper's ResNet-50
    init: str = "kaiming_fan_out"  # torchvision's default; NF's WS convs are insensitive to it
    epochs: int = 90  # the same budget at every batch size: fewer steps at larger batches
    batch_sizes: tuple[int, ...] = PAPER_BATCH_SIZES  # every series trains at each (paper: 256 ... 4096)
    reference_lr: float = 0.1  # lr = reference_lr * batch_size / reference_batch_size
    reference_batch_size: int = 256  # the batch size at which lr = reference_lr (paper: 256)
    series: tuple[str, ...] = ("bn", "nf", "nf+agc")  # norm, +agc: swept over agc_lambdas
    agc_lambdas: tuple[float, ...] = PAPER_LAMBDAS  # AGC clipping thresholds of a +agc series (paper: 0.01 ... 0.16)
    nf_skip_gain_init: float = 0.0  # the NF-ResNet as published (SkipInit)
    augment: bool = True  # pad-and-crop + horizontal flip
    warmup_epochs: float = 0.0  # linear lr warmup (per step) over these epochs, as large-batch recipes do
    divergence_factor: float = DIVERGENCE  # a loss this many times the first one is divergence
    torch_compile: bool = False  # torch.compile the model (CUDA)
    fuse: str = "auto"  # auto (fused on CUDA only) | on | off: train a norm's runs at one batch size as one stacked network
    checkpoint_every: int = 5  # epochs

    def __post_init__(self):
        check_network_params(self, norm_series=False)
        if not self.batch_sizes:
            raise ValueError("batch_sizes is empty: give at least two, e.g. [256, 1024, 4096]")
        for b in self.batch_sizes:
            check_positive("batch size", b, integer=True)
        if len(set(self.batch_sizes)) < len(self.batch_sizes):
            raise ValueError(f"batch_sizes repeats a value: {list(self.batch_sizes)}")
        check_positive("reference_lr", self.reference_lr)
        check_positive("reference_batch_size", self.reference_batch_size, integer=True)
        if not self.series:
            raise ValueError("series is empty: give norms with or without +agc, e.g. bn, nf, nf+agc")
        parsed = [parse_series(s) for s in self.series]
        if len(set(parsed)) < len(parsed):
            raise ValueError(f"series repeats an entry: {', '.join(self.series)}")
        if any(agc for _, agc in parsed) and not self.agc_lambdas:
            raise ValueError("agc_lambdas is empty but a series clips: give thresholds, e.g. [0.01, 0.02, 0.04, 0.08, 0.16]")
        for lam in self.agc_lambdas:
            check_positive("AGC clipping threshold in agc_lambdas", lam)
        if len(set(self.agc_lambdas)) < len(self.agc_lambdas):
            raise ValueError(f"agc_lambdas repeats a value: {list(self.agc_lambdas)}")
        check_choice("fuse", self.fuse, FUSE_CHOICES)
        for b in self.batch_sizes:
            self.train_config(b)  # the engine's own checks (epochs, lr, ...)

    def lr(self, batch_size: int) -> float:
        return scaled_lr(batch_size, self.reference_lr, self.reference_batch_size)

    def train_config(self, batch_size: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=batch_size,
            lr=self.lr(batch_size),
            augment=self.augment,
            warmup_epochs=self.warmup_epochs,
            divergence_factor=self.divergence_factor,
            compile=self.torch_compile,
            checkpoint_every=self.checkpoint_every,
        )

    def runs(self) -> list[tuple[str, str, float, int]]:
        """``(series, norm, agc_lambda or nan, batch_size)`` for every run, in training order."""
        out = []
        for spec in self.series:
            norm, agc = parse_series(spec)
            for batch_size in self.batch_sizes:
                for lam in self.agc_lambdas if agc else (math.nan,):
                    out.append((spec, norm, lam, batch_size))
        return out


PROFILES = {
    # Large-batch ImageNet recipes with the linear scaling rule warm the rate up over the
    # first 5 epochs (Goyal et al. 2017); at batch 4096 the rate starts at 1.6.
    "paper": Params(warmup_epochs=5.0),
    # A genuine large-batch regime on 2 CPU cores: the bundled digits at their native 8x8,
    # ResNet-8, no augmentation (flipped digits are other symbols), batches 32 ... 512 at the
    # paper's learning rates 0.1 ... 1.6 (the reference batch is 32), 40 epochs with the
    # 4 warmup epochs (10% of the budget). Steps bound the cost: runs x epochs x images = runs x
    # steps x batch at the largest batch, so the largest batch is 512 (a third of the 1498
    # training images, 120 steps), where BN stays trained; at batch 1024 (40 steps, ResNet-20,
    # the previous quick profile) BN fell to 17-20%. ResNet-8 instead of 20 buys those steps;
    # its unclipped NF network still diverges at lr 1.6. Three of the paper's thresholds, its
    # ends and middle, keep the cost of the previous profile.
    "quick": Params(
        dataset="digits",
        image_size=8,
        depth=8,
        epochs=40,
        batch_sizes=(32, 128, 512),
        reference_batch_size=32,
        agc_lambdas=(0.01, 0.04, 0.16),
        augment=False,
        warmup_epochs=4.0,
    ),
}


def run_folder(series: str, agc_lambda: float, batch_size: int) -> str:
    """A run's checkpoint folder: the threshold is in the name because the clipper is not
    part of the engine's checkpoint fingerprint."""
    clip = f"_lambda{agc_lambda:g}" if not math.isnan(agc_lambda) else ""
    return f"{series}_batch{batch_size}{clip}"


TABLES = {
    "summary": {  # one row per run (series, threshold, batch size)
        "series": 'a norm, or norm+agc: trained with AGC ("nf+agc")',
        "norm": "bn | none | ws | nf",
        "agc_lambda": "the AGC clipping threshold; NaN: not clipped",
        "batch_size": "the run's batch size",
        "base_lr": "reference_lr * batch_size / reference_batch_size",
        "status": "completed | diverged",
        "diverged": "whether the run diverged",
        "diverged_step": "the update at which it diverged (NaN: never)",
        "diverged_loss": "the loss that counted as divergence",
        "steps": "SGD updates taken",
        "epochs": "epochs run",
        "initial_loss": "training loss of the first batch",
        "final_train_loss": "at the end (NaN for a diverged run)",
        "final_train_accuracy": "at the end, in [0, 1]",
        "final_test_loss": "at the end",
        "final_test_accuracy": "at the end, in [0, 1]",
        "chance_accuracy": "the accuracy of guessing, which a diverged run counts as",
    },
    "history": {  # one row per run and epoch
        "series": "as in summary",
        "norm": "as in summary",
        "agc_lambda": "as in summary",
        "batch_size": "as in summary",
        "base_lr": "as in summary",
        **HISTORY_DESCRIPTIONS,
    },
}


def run(params: Params, *, seed: int = 0, device: str = "auto", checkpoint_dir: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Tables ``history`` (one row per run and epoch) and ``summary`` (one row per run)."""
    device = resolve_device(device)
    kwargs = {"image_size": params.image_size} if params.dataset != "cifar10" else {}
    data = load_dataset(params.dataset, **kwargs)

    def clip_of(lam: float) -> GradientClipper | None:
        return None if math.isnan(lam) else GradientClipper("adaptive", lam)

    def out_dir(series: str, lam: float, batch_size: int) -> Path | None:
        return Path(checkpoint_dir) / run_folder(series, lam, batch_size) if checkpoint_dir is not None else None

    runs = params.runs()
    jobs = []
    for series, norm, lam, batch_size in runs:
        torch.manual_seed(seed)  # the same initial weights for every run of a norm
        model = make_resnet(params, norm, data.num_classes)
        clip = clip_of(lam)
        desc = f"agc {series} B={batch_size}" + ("" if clip is None else f" lambda={lam:g}")
        # Started longest first: the same epochs at every batch size, so the smallest batch takes the most steps.
        # Fused, a norm's runs at one batch size (nf and its nf+agc thresholds, the same batches) train as one network.
        config = params.train_config(batch_size)
        cost, group = 1.0 / batch_size, f"{norm} B={batch_size}"
        jobs.append(TrainJob(model, config, clip=clip, out_dir=out_dir(series, lam, batch_size), desc=desc, cost=cost, group=group))
    results = train_runs(jobs, data, seed=seed, device=device, fuse=params.fuse, desc="agc")
    histories, summaries = [], []
    for i, (series, norm, lam, batch_size) in enumerate(runs):
        result = results[i]
        keys = {"series": series, "norm": norm, "agc_lambda": lam, "batch_size": batch_size, "base_lr": params.lr(batch_size)}
        histories.append((keys, result.history))
        summary = result.summary()
        summaries.append(
            {
                **keys,
                "status": summary["status"],
                "diverged": result.diverged,
                "diverged_step": summary["diverged_step"],
                "diverged_loss": summary["diverged_loss"],
                "steps": summary["steps"],
                "epochs": summary["epochs"],
                "initial_loss": summary["initial_loss"],
                **{k: v for k, v in summary.items() if k.startswith("final_")},
                "chance_accuracy": 1.0 / data.num_classes,
            }
        )
    history = history_table(histories)
    return {"history": history, "summary": pd.DataFrame(summaries)}


# -------------------- the figure and its claims, drawn from the tables alone


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
    if lacking(tables, "summary"):  # every panel is drawn from the runs' final accuracies
        return empty_figure(TITLE, ["summary"])
    summary = _with_accuracy(tables["summary"])
    seeds = sorted(summary["seed"].unique())
    n_seeds = len(seeds)
    order = list(dict.fromkeys(summary["series"]))
    clipped = [s for s in order if split_agc(s)[1]]
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
                ax.annotate(
                    text,
                    (b, y),
                    xytext=(0, -13),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                    color=color,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8),
                )
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
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False, handlelength=3.2
    )  # long enough to show a dashed line
    fig.suptitle(f"{TITLE}\n{subtitle}", fontsize=10)
    return fig


# The claims' numbers, in percentage points of final test accuracy. From the paper (NFNets
# Fig. 2a, docs/papers.md#nfnets-fig-2a): at every batch size 256 ... 4096 NF + AGC ends at 76.7-76.95%
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


def _stand_in_summary(history: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``history`` with no result (completed, at 0% accuracy, chance for
    ten classes): what the claims of a seed whose summary is absent are worked out on, to be
    made not evaluable. A run that diverged in its first epoch has no history: it is not there."""
    keys = [k for k in ("seed", "series", "norm", "agc_lambda", "batch_size", "base_lr") if k in history.columns]
    runs = history.drop_duplicates(["series", "agc_lambda", "batch_size"])[keys].reset_index(drop=True)
    return runs.assign(status="completed", diverged=False, final_test_accuracy=0.0, chance_accuracy=0.1)


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
    if lacking(tables, "summary"):  # the runs named by their history, their claims not evaluable
        history = tables.get("history")
        if history is None or not len(history):
            return placeholder_claims(FIGURE, ["summary"])
        return unevaluable(claims({"summary": _stand_in_summary(history)}), ["summary"])
    summary = tables["summary"].reset_index(drop=True)
    batch_sizes = sorted(summary["batch_size"].unique())
    if len(batch_sizes) < 2:
        return []
    small, large = batch_sizes[0], batch_sizes[-1]
    chance = 100.0 * float(summary["chance_accuracy"].iloc[0])
    a = panel_a(summary)
    series = list(dict.fromkeys(summary["series"]))
    clipped = [s for s in series if split_agc(s)[1]]
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
                f"Larger batches need a smaller clipping threshold ({name}; paper: λ up to 0.16 at small batches, 0.01 at 4096)",
                f"loosest good λ at the largest batch / at the smallest (good: within {NOISE:g} points of the best λ's accuracy)",
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
