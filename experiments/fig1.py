"""Figure 1 of Bjorck et al. 2018: train and test accuracy during training, with and without BN.

A ResNet trained with SGD (momentum 0.9, weight decay 5e-4, batch 128, the learning
rate divided by 10 at 50% and 75% of the budget) at several learning rates, with
BatchNorm and without; we add the NF-ResNet. The paper's series: BN at lr 0.1, 0.003
and 0.0001, no BN at 0.0001 ("picked such that the network without BN converges"); no
BN at 0.1 "diverges (not shown)", which we show, with the step it diverged at. Every
series of a seed starts from the same weights for its norm and sees the same batches.

Series are ``"norm@lr"`` strings (norm: bn | none | ws | nf). Each trains through
:func:`nfstudy.train.train`; with a ``checkpoint_dir`` (the notebook gives
``<run folder>/checkpoints``) each series checkpoints into its own subfolder and an
interrupted run resumes where it stopped.

Initialisation: the paper does not say; the paper profile builds the paper's network as
identified by measurement (``PAPER_INIT``, results/init_survey/): under He init a
110-layer ResNet without BN cannot train at lr 1e-4, against the paper. At the quick
profile's depth 44 on 8x8 digits ``PAPER_INIT`` leaves a no-BN network tame (it trains at
lr 0.1, so the quick profile could not show the divergence); ``kaiming_fan_out`` gives it
the growth of activations with depth that the paper studies and makes lr 0.1 diverge: the
quick profile's choice, a stand-in for the deeper paper network.

The bridge to the NFNets paper (Brock et al. 2021): a series ``"norm+agc@lr"`` trains the
network ``norm`` with adaptive gradient clipping (``nfstudy.clip.GradientClipper("adaptive",
agc_lambda)``, the classifier's weight unclipped), so the figure shows whether clipping
gives a network without BN what BN gives it: training at the large learning rate. The
threshold is one figure parameter, ``agc_lambda``: 0.08, the paper's advice for small
batches (lambda = 0.01 is for batches of 1024-4096; at smaller ones performance "slightly
increases up to 0.08", as MosaicML Composer's AGC method card summarises Brock et al.), and
batch 128 is below the paper's smallest batch, 256. (On the quick profile, seed 0, no BN +
AGC ended at 67.9% / 93.0% / 89.3% test accuracy with lambda 0.01 / 0.08 / 0.16.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from nfstudy.clip import GradientClipper
from nfstudy.constants import DIVERGENCE
from nfstudy.data import load_dataset
from nfstudy.models import NORMS, PAPER_INIT
from nfstudy.params import check_choice, check_positive
from nfstudy.runtime import resolve_device
from nfstudy.train import PLATEAU_METRICS, TrainConfig, accuracy_has_plateaued, train

from ._common import AGC_SUFFIX, check_network_params, history_table, make_resnet, split_agc

FIGURE = "fig1"
PAPER_SERIES = ("bn@0.1", "bn@0.003", "bn@0.0001", "none@0.0001", "nf@0.1", "none@0.1")
# The bridge to the NFNets paper: the networks without BN, clipped, at BN's large rate.
AGC_SERIES = ("none+agc@0.1", "nf+agc@0.1")


def parse_series(spec: str) -> tuple[str, float, bool]:
    """``"bn@0.1"`` -> ``("bn", 0.1, False)``, ``"none+agc@0.1"`` -> ``("none", 0.1, True)``
    (trained with AGC); a clear error for anything else."""
    net, sep, lr = str(spec).partition("@")
    try:
        value = float(lr)
    except ValueError:
        value = None
    if not sep or value is None:
        raise ValueError(f"series must be norm@lr or norm+agc@lr, e.g. 'bn@0.1' or 'none+agc@0.1'; got {spec!r}")
    norm, agc = split_agc(net)
    check_choice("norm in series", norm, NORMS)
    check_positive(f"learning rate of series {spec!r}", value)
    return norm, value, agc


def series_name(norm: str, lr: float, agc: bool = False) -> str:
    """The ``series`` column: ``bn@lr=0.1``, ``none+agc@lr=0.1`` (``nfstudy.plots.series_label``
    shows "BN, lr=0.1", "no BN + AGC, lr=0.1")."""
    return f"{norm}{AGC_SUFFIX if agc else ''}@lr={lr:g}"


@dataclass(frozen=True)
class Params:
    dataset: str = "cifar10"
    image_size: int = 32  # digits and synthetic only (digits are natively 8x8)
    depth: int = 110  # ResNet depth, 6n+2
    init: str = PAPER_INIT  # the paper's network; the quick profile: see the module docstring
    epochs: int = 165  # the budget (before any plateau extension)
    batch_size: int = 128
    series: tuple[str, ...] = PAPER_SERIES + AGC_SERIES  # norm@lr or norm+agc@lr
    agc_lambda: float = 0.08  # AGC clipping threshold of the +agc series (see the module docstring)
    augment: bool = True  # pad-and-crop + horizontal flip
    extend_until_plateau: bool = True  # the paper: double the epochs while learning has not plateaued
    # The plateau rule (nfstudy.train), judged on the train accuracy since the paper trains every run
    # to ~100% train accuracy: progress is a gain of more than plateau_tol (0.01: one point) over the
    # last plateau_window epochs at the full rate; a run within plateau_tol of 100% has plateaued.
    plateau_metric: str = "train_accuracy"  # train_accuracy | train_loss (plateau_tol then relative)
    plateau_window: int = 20  # epochs
    plateau_tol: float = 0.01
    max_extensions: int = 2  # at most 4x the budget
    divergence_factor: float = DIVERGENCE  # a loss this many times the first one is divergence
    torch_compile: bool = False  # torch.compile the model (CUDA)
    checkpoint_every: int = 5  # epochs
    model: str = "cifar_resnet"  # cifar_resnet (the paper's) | torchvision_resnet (seed 004's, depth 101)

    def __post_init__(self):
        check_network_params(self, norm_series=False)
        if not self.series:
            raise ValueError(f"series is empty: give norm@lr strings, e.g. {', '.join(PAPER_SERIES + AGC_SERIES)}")
        names = [series_name(*parse_series(s)) for s in self.series]
        if len(set(names)) < len(names):
            raise ValueError(f"series repeats an entry: {', '.join(self.series)}")
        check_positive("agc_lambda (the AGC clipping threshold)", self.agc_lambda)
        check_choice("plateau_metric", self.plateau_metric, PLATEAU_METRICS)
        self.train_config(0.1)  # epochs, batch size, ...: the engine's own checks

    def train_config(self, lr: float) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=lr,
            augment=self.augment,
            extend_until_plateau=self.extend_until_plateau,
            plateau_metric=self.plateau_metric,
            plateau_window=self.plateau_window,
            plateau_tol=self.plateau_tol,
            max_extensions=self.max_extensions,
            divergence_factor=self.divergence_factor,
            compile=self.torch_compile,
            checkpoint_every=self.checkpoint_every,
        )


PROFILES = {
    "paper": Params(),
    # The same code path and learning rates on 2 CPU cores: the bundled digits at their
    # native 8x8 (16x cheaper than 32x32); ResNet-44, the shallowest CIFAR ResNet whose
    # no-BN variant explodes at lr 0.1 for every seed we tried (6 of 6, by step 3; at
    # depth 32 only 3 of 6, the others collapse to chance with a finite loss, and at 20
    # none); no augmentation (flipped digits are other symbols). The paper's plateau rule
    # with a 10-epoch window, so that it judges at epoch 20 of 40: the runs at lr 1e-4 are
    # still rising there and go on at the full rate (up to 160 epochs, 80 at the full rate);
    # the runs at 0.1 and 0.003 are at ~100% train accuracy by then and stop at 40.
    "quick": Params(
        dataset="digits",
        image_size=8,
        depth=44,
        init="kaiming_fan_out",
        epochs=40,
        augment=False,
        plateau_window=10,
    ),
}


def plateau_at_full_lr(history: pd.DataFrame, window: int, tol: float) -> dict[str, float]:
    """Where a run stood when its rate first dropped (or at its end, if it never did):
    ``full_lr_gain``, the gain in train accuracy of its last ``window`` epochs at the full
    rate over the best before them, and ``plateaued``, the plateau rule on the train accuracy
    there (:func:`nfstudy.train.accuracy_has_plateaued`; 1.0 or 0.0). Both NaN when the run
    has no more than ``window`` epochs at the full rate (it diverged early, say)."""
    lr = history["lr"].to_numpy()
    dropped = lr < lr[0] if len(lr) else lr.astype(bool)
    full = history["train_accuracy"].tolist()[: int(dropped.argmax()) if dropped.any() else len(lr)]
    if len(full) <= window:
        return {"full_lr_gain": float("nan"), "plateaued": float("nan")}
    return {"full_lr_gain": max(full[-window:]) - max(full[:-window]), "plateaued": float(accuracy_has_plateaued(full, window, tol))}


def run(
    params: Params, *, seed: int = 0, device: str = "auto", checkpoint_dir: str | Path | None = None
) -> dict[str, pd.DataFrame]:
    """Tables ``history`` (one row per series and epoch) and ``outcomes`` (one per series);
    ``agc_lambda`` is the clipping threshold of a ``+agc`` series, NaN for the others;
    ``full_lr_gain`` and ``plateaued`` say whether a run had levelled off before its rate
    dropped (:func:`plateau_at_full_lr`)."""
    device = resolve_device(device)
    kwargs = {"image_size": params.image_size} if params.dataset != "cifar10" else {}
    data = load_dataset(params.dataset, **kwargs)
    histories, outcomes = [], []
    for spec in params.series:
        norm, lr, agc = parse_series(spec)
        name = series_name(norm, lr, agc)
        torch.manual_seed(seed)  # the same initial weights for every lr of a norm, clipped or not
        model = make_resnet(params, norm, data.num_classes)
        clip = GradientClipper("adaptive", params.agc_lambda) if agc else None
        # The clipper is not part of the engine's checkpoint fingerprint: the threshold is in the folder's name.
        folder = f"{norm}+agc{params.agc_lambda:g}_lr{lr:g}" if agc else f"{norm}_lr{lr:g}"
        out_dir = Path(checkpoint_dir) / folder if checkpoint_dir is not None else None
        result = train(model, data, params.train_config(lr), seed=seed, device=device, clip=clip, out_dir=out_dir,
                       desc=f"fig1 {name}")  # fmt: skip
        keys = {"series": name, "norm": norm, "base_lr": lr, "agc_lambda": params.agc_lambda if agc else float("nan")}
        histories.append((keys, result.history))
        plateau = plateau_at_full_lr(result.history, params.plateau_window, params.plateau_tol)
        outcomes.append({**keys, **result.summary(), **plateau})
    history = history_table(histories)
    return {"history": history, "outcomes": pd.DataFrame(outcomes)}
