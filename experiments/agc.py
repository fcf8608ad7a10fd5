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
divided by 10 at 50% and 75% of the budget, after ``warmup_epochs`` of linear warmup). A run whose loss exceeds 1000x its
first loss or stops being finite is recorded as diverged (final accuracies NaN) and the
sweep goes on. Every run of a seed starts from the same weights for its norm and sees the
same order of batches at a given batch size; with a ``checkpoint_dir`` every run checkpoints
into its own folder and an interrupted sweep resumes.

Profiles (see README, "AGC ablation"):

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from nfstudy.clip import GradientClipper
from nfstudy.constants import DIVERGENCE
from nfstudy.data import load_dataset
from nfstudy.models import NORMS
from nfstudy.params import check_choice, check_positive
from nfstudy.runtime import resolve_device
from nfstudy.train import TrainConfig, train

from ._common import check_network_params, history_table, make_resnet, split_agc

FIGURE = "agc"
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
class Params:
    dataset: str = "cifar10"
    image_size: int = 32  # digits and synthetic only (digits are natively 8x8)
    depth: int = 56  # ResNet depth, 6n+2
    init: str = "kaiming_fan_out"  # torchvision's default; NF's WS convs are insensitive to it
    epochs: int = 90  # the same budget at every batch size: fewer steps at larger batches
    batch_sizes: tuple[int, ...] = PAPER_BATCH_SIZES
    reference_lr: float = 0.1  # lr = reference_lr * batch_size / reference_batch_size
    reference_batch_size: int = 256
    series: tuple[str, ...] = ("bn", "nf", "nf+agc")  # norm, +agc: swept over agc_lambdas
    agc_lambdas: tuple[float, ...] = PAPER_LAMBDAS
    nf_skip_gain_init: float = 0.0  # the NF-ResNet as published (SkipInit)
    augment: bool = True  # pad-and-crop + horizontal flip
    warmup_epochs: float = 0.0  # linear lr warmup (per step) over these epochs, as large-batch recipes do
    divergence_factor: float = DIVERGENCE  # a loss this many times the first one is divergence
    torch_compile: bool = False  # torch.compile the model (CUDA)
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


def run(
    params: Params, *, seed: int = 0, device: str = "auto", checkpoint_dir: str | Path | None = None
) -> dict[str, pd.DataFrame]:
    """Tables ``history`` (one row per run and epoch) and ``summary`` (one row per run)."""
    device = resolve_device(device)
    kwargs = {"image_size": params.image_size} if params.dataset != "cifar10" else {}
    data = load_dataset(params.dataset, **kwargs)
    histories, summaries = [], []
    for series, norm, lam, batch_size in params.runs():
        torch.manual_seed(seed)  # the same initial weights for every run of a norm
        model = make_resnet(params, norm, data.num_classes)
        clip = None if math.isnan(lam) else GradientClipper("adaptive", lam)
        config = params.train_config(batch_size)
        out_dir = Path(checkpoint_dir) / run_folder(series, lam, batch_size) if checkpoint_dir is not None else None
        desc = f"agc {series} B={batch_size}" + ("" if clip is None else f" lambda={lam:g}")
        result = train(model, data, config, seed=seed, device=device, clip=clip, out_dir=out_dir, desc=desc)
        keys = {"series": series, "norm": norm, "agc_lambda": lam, "batch_size": batch_size, "base_lr": config.lr}
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
