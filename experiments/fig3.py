"""Figure 3 of Bjorck et al. 2018: the loss along the update direction early in training.

Each network trains with SGD (momentum 0.9, weight decay 5e-4) from initialisation on the
same mini-batches; at mini-batches 1, 4 and 7 (batch ``k`` after ``k`` updates) we take
tentative steps of size ``eta`` along the optimizer's update direction and record the
relative loss ``L(theta - eta * d) / L(theta)`` on that batch, for log-spaced ``eta``
(:func:`nfstudy.probes.relative_loss_during_training`). Series: BN trained at lr 0.1,
no-BN at lr 1e-4 (the paper's), and the NF-ResNet at BN's lr 0.1.

Initialisation: the paper's network as identified by measurement (``PAPER_INIT``,
results/init_survey/): under He init a 110-layer network without BN cannot train at lr
1e-4, which the paper's no-BN network does (Fig. 1). ``init`` is a parameter.

The bridge to the NFNets paper (Brock et al. 2021): a series ``"none+agc"`` or ``"nf+agc"``
trains that network with adaptive gradient clipping (``GradientClipper("adaptive",
agc_lambda)``, the classifier's weight unclipped) and probes along the update a clipped
training step takes: the clipped gradient, then weight decay and momentum (what
``optimizer.step()`` applies after ``clip(model)``). AGC does not depend on the learning
rate, so the probed step of size ``eta`` is what training at lr ``eta`` would do. Both
train at BN's lr 0.1 (the question: does clipping give the network without BN the range of
usable step sizes that BN gives it?); ``agc_lambda`` = 0.08 as in Figure 1, the paper's
advice for batches below 1024.

NF skip gain: ``nf_skip_gain_init = 1``. With SkipInit's 0 every residual branch of the
NF-ResNet is switched off at initialisation and only opens slowly over the first
updates, so at mini-batches 1-7 the NF row would probe a nearly shallow network, not a
network as deep as the BN and no-BN ones. ``-p nf_skip_gain_init 0`` gives the published
NF-ResNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nfstudy.clip import GradientClipper
from nfstudy.data import load_dataset
from nfstudy.models import NORMS, PAPER_INIT
from nfstudy.params import check_choice, check_positive
from nfstudy.probes import relative_loss_during_training
from nfstudy.runtime import resolve_device

from ._common import AGC_SUFFIX, check_network_params, make_resnet, split_agc

FIGURE = "fig3"


def parse_series(spec: str) -> tuple[str, bool]:
    """``"none+agc"`` -> ``("none", True)``, ``"bn"`` -> ``("bn", False)``."""
    check_choice("series", str(spec), NORMS + tuple(n + AGC_SUFFIX for n in NORMS))
    return split_agc(spec)


@dataclass(frozen=True)
class Params:
    dataset: str = "cifar10"
    image_size: int = 32  # digits and synthetic only (digits are natively 8x8)
    depth: int = 110  # ResNet depth, 6n+2
    batch_size: int = 128
    init: str = PAPER_INIT  # the paper's network (results/init_survey/)
    series: tuple[str, ...] = ("bn", "none", "nf", "none+agc", "nf+agc")  # a norm, +agc: trained with AGC
    learning_rates: tuple[float, ...] = (0.1, 1e-4, 0.1, 0.1, 0.1)  # training lr of each series, in order
    agc_lambda: float = 0.08  # AGC clipping threshold of the +agc series
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batches: tuple[int, ...] = (1, 4, 7)  # probed mini-batches; batch k comes after k updates
    log10_step_min: float = -5.5  # step sizes: n_step_sizes values, log-spaced
    log10_step_max: float = 0.5
    n_step_sizes: int = 80
    augment: bool = True  # crop + flip, as training does
    nf_skip_gain_init: float = 1.0  # see the module docstring
    chunk_size: int | None = None  # step sizes per forward pass (None: 1 on CPU, 16 on GPU)
    model: str = "cifar_resnet"  # cifar_resnet (the paper's) | torchvision_resnet (seed 004's, depth 101)

    def __post_init__(self):
        check_network_params(self, norm_series=False)
        for s in self.series:
            parse_series(s)
        if len(set(self.series)) < len(self.series):
            raise ValueError(f"series repeats an entry: {', '.join(self.series)}")
        check_positive("agc_lambda (the AGC clipping threshold)", self.agc_lambda)
        if len(self.learning_rates) != len(self.series):
            raise ValueError(
                f"learning_rates needs one value per series: {len(self.series)} series "
                f"({', '.join(self.series)}) but {len(self.learning_rates)} learning rates; "
                "give both, e.g. -p series '[\"bn\", \"none\"]' -p learning_rates '[0.1, 0.0001]'"
            )
        for lr in self.learning_rates:
            check_positive("learning rate", lr)
        check_positive("momentum", self.momentum, allow_zero=True)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("n_step_sizes", self.n_step_sizes, integer=True)
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in self.batches):
            raise ValueError(f"batches must be mini-batch indices >= 0 (0 = at initialisation), got {self.batches!r}")
        if not self.log10_step_min < self.log10_step_max:
            raise ValueError(
                f"log10_step_min ({self.log10_step_min}) must be below log10_step_max ({self.log10_step_max}); "
                "step sizes are 10**log10_step_min ... 10**log10_step_max (always > 0)"
            )
        if self.chunk_size is not None:
            check_positive("chunk_size", self.chunk_size, integer=True)

    @property
    def step_sizes(self) -> np.ndarray:
        return np.logspace(self.log10_step_min, self.log10_step_max, self.n_step_sizes)


PROFILES = {
    # Bjorck et al.: ResNet-110 on CIFAR-10, batch 128; the step-size grid is the public reproduction's.
    "paper": Params(),
    # The same ResNet-110 at the paper's batch of 128 on the bundled digits (upsampled to the
    # paper's 32x32: at 16x16 the no-BN network starts at a far smaller loss and its curves
    # no longer dip as the paper's do), 19 step sizes (3 per decade). Depth matters: at
    # ResNet-56 the no-BN network's band of loss-lowering steps is only a few times narrower
    # than BN's. Of the AGC series only no BN + AGC, the one the bridge question is about
    # (NF + AGC looks like NF); `-p series` adds it back.
    "quick": Params(
        dataset="digits",
        n_step_sizes=19,
        series=("bn", "none", "nf", "none+agc"),
        learning_rates=(0.1, 1e-4, 0.1, 0.1),
    ),
}


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    data = load_dataset(params.dataset, **({"image_size": params.image_size} if params.dataset != "cifar10" else {}))
    frames = []
    for series, lr in zip(params.series, params.learning_rates):
        norm, agc = parse_series(series)
        # Every series starts from the same weights (where shapes agree) and sees the same batches.
        torch.manual_seed(seed)
        model = make_resnet(params, norm, data.num_classes).to(device)
        clip = GradientClipper("adaptive", params.agc_lambda) if agc else None
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=params.momentum, weight_decay=params.weight_decay)
        loader = data.loader("train", params.batch_size, augment=params.augment, seed=seed, device=device, drop_last=True)
        table = relative_loss_during_training(
            model,
            optimizer,
            loader,
            params.batches,
            params.step_sizes,
            chunk_size=params.chunk_size,
            desc=f"fig3: {series} @ lr {lr:g}",
            clip=clip,
        )
        frames.append(table.assign(series=series, lr=lr, agc_lambda=params.agc_lambda if agc else float("nan")))
    out = pd.concat(frames, ignore_index=True)
    columns = ["series", "lr", "agc_lambda", "batch", "step_size", "relative_loss", "diverged", "loss_before", "loss_after",
               "update_norm"]  # fmt: skip
    return {"relative_loss": out[columns]}
