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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nfstudy.data import load_dataset
from nfstudy.models import PAPER_INIT
from nfstudy.params import check_positive
from nfstudy.probes import channel_moments_along_update
from nfstudy.runtime import progress, resolve_device

from ._common import check_network_params, make_resnet

FIGURE = "fig4"


@dataclass(frozen=True)
class Params:
    dataset: str = "cifar10"
    depth: int = 110  # ResNet depth, 6n+2
    layers: tuple[int, ...] = (8, 44, 80)  # weight layers numbered from the input
    batch_size: int = 128
    init: str = PAPER_INIT  # the paper's network, identified by measurement: results/init_survey/
    series: tuple[str, ...] = ("none", "nf")
    lr: float = 1e-3  # the paper's smallest diverging no-BN step (Fig. 3; module docstring)
    momentum: float = 0.9
    weight_decay: float = 5e-4
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


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    data = load_dataset(params.dataset)
    moments, losses = [], []
    for series in progress(params.series, desc="fig4: along one update", unit="net"):
        torch.manual_seed(seed)  # every series starts from the same weights (where shapes agree)
        model = make_resnet(params, series, data.num_classes).to(device)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
        )
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
