"""Figure 5 of Bjorck et al. 2018: channel means and stds vs depth at initialisation.

Several independently initialised ResNets (10 in the paper profile, as the public
reproduction used) each see one training mini-batch in train mode (BatchNorm uses the
batch's statistics); at every sampled weight layer (6, 18, ..., 102 of a ResNet-110)
the probe measures the output of that layer, i.e. the conv *before* its BatchNorm, and
reduces it per channel over batch and space. We keep the average over channels of the
channel means' magnitude ``mean_C |mean_c|`` and of the channel stds ``mean_C std_c``
(plus the variance and squared mean, for free). Series: with BN, without BN (the same
conv weights, BatchNorm removed) and the NF-ResNet.

Network ``i`` of seed ``s`` is initialised from ``torch.manual_seed(1000 s + i)`` (every
series of it from the same seed, so the conv weights agree) and sees batch ``i`` of
epoch 0 of the seed's loader: the error bars cover initialisation and data.

The NF series uses ``nf_skip_gain_init = 1``: with SkipInit's zero gain every residual
branch is switched off at initialisation and the NF-ResNet is, to its signal, a
five-layer network; flat statistics would then say nothing about its residual design.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from nfstudy.data import load_dataset
from nfstudy.models import PAPER_INIT
from nfstudy.probes import activation_statistics
from nfstudy.runtime import derived_seed, progress, resolve_device

from ._common import check_network_params, make_resnet

FIGURE = "fig5"
STATISTICS = ("avg_channel_abs_mean", "avg_channel_std", "avg_channel_var", "avg_channel_sq_mean")


@dataclass(frozen=True)
class Params:
    dataset: str = "cifar10"
    depth: int = 110  # ResNet depth, 6n+2
    layers: tuple[int, ...] = (6, 18, 30, 42, 54, 66, 78, 90, 102)  # the paper's x-axis
    networks: int = 10  # independent initialisations per series
    batch_size: int = 128
    init: str = PAPER_INIT  # the paper's network, identified by measurement: results/init_survey/
    series: tuple[str, ...] = ("bn", "none", "nf")
    augment: bool = True  # the mini-batch as training would see it (crop + flip)
    nf_skip_gain_init: float = 1.0  # see the module docstring
    model: str = "cifar_resnet"  # cifar_resnet (the paper's) | torchvision_resnet (seed 004's, depth 101)

    def __post_init__(self):
        check_network_params(self)
        if len(self.layers) < 2:
            raise ValueError(f"layers needs at least two depths to compare, got {self.layers!r}")
        bad = [d for d in self.layers if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= self.depth]
        if bad:
            raise ValueError(f"layers must be weight layers 1..{self.depth} of a ResNet-{self.depth}, got {bad}")


PROFILES = {
    "paper": Params(),
    # The same ten ResNet-110s and code path on the bundled digits instead of CIFAR-10,
    # 64 images a batch (a channel's statistics still pool 64 x H x W values): 30
    # forward passes at half a batch, well under a minute on two CPU cores.
    "quick": Params(dataset="digits", batch_size=64),
}


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    data = load_dataset(params.dataset)
    loader = data.loader("train", params.batch_size, augment=params.augment, seed=seed, device=device, drop_last=True)
    if params.networks > len(loader):
        raise ValueError(
            f"networks={params.networks} needs as many mini-batches of {params.batch_size}, but the "
            f"{params.dataset} train split has {len(loader)}: lower networks or batch_size"
        )
    batches = iter(loader.epoch_batches(0))
    frames = []
    bar = progress(total=params.networks * len(params.series), desc="fig5: activations at init", unit="net")
    for network in range(params.networks):
        images, _ = next(batches)
        for series in params.series:
            torch.manual_seed(derived_seed(seed, network))  # every series of a network from the same weights
            model = make_resnet(params, series, data.num_classes).to(device)
            stats = activation_statistics(model, images, list(params.layers))
            frames.append(stats.drop(columns=["network", "forward", "kind"]).assign(series=series, network=network))
            bar.update()
    bar.close()
    table = pd.concat(frames, ignore_index=True).rename(columns={"name": "layer_name"})
    table = table[table["statistic"].isin(STATISTICS)]
    columns = ["series", "network", "depth", "layer_name", "statistic", "value"]
    return {"activation_stats": table[columns].reset_index(drop=True)}
