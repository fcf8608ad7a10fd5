"""Figure 2 of Bjorck et al. 2018: the gradients of one conv kernel at initialisation.

A freshly initialised ResNet sees one training mini-batch (train mode: BatchNorm uses
the batch's statistics), and we keep every value of the gradient of the loss with
respect to the weight of weight layer ``layer`` (layer 55 of ResNet-110 in the paper:
``layer2.8.branch.conv2``, the middle of the network). Series: with BN, without BN
(the same network, BatchNorm removed, the same initial conv weights) and the
NF-ResNet.

The NF series uses ``nf_skip_gain_init = 1``: with SkipInit's zero gain every
residual-branch weight gets exactly zero gradient at initialisation (the gain is the
only path to it), so its histogram would be a spike at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nfstudy.data import load_dataset
from nfstudy.models import PAPER_INIT, get_layer
from nfstudy.probes import weight_gradients
from nfstudy.runtime import progress, resolve_device

from ._common import check_network_params, make_resnet

FIGURE = "fig2"


@dataclass(frozen=True)
class Params:
    dataset: str = "cifar10"
    depth: int = 110  # ResNet depth, 6n+2
    layer: int = 55  # weight layer, numbered from the input (1..depth)
    batch_size: int = 128
    init: str = PAPER_INIT  # the paper's network, identified by measurement: results/init_survey/
    series: tuple[str, ...] = ("bn", "none", "nf")
    augment: bool = True  # the mini-batch as training would see it (crop + flip)
    nf_skip_gain_init: float = 1.0  # see the module docstring
    model: str = "cifar_resnet"  # cifar_resnet (the paper's) | torchvision_resnet (seed 004's, depth 101)

    def __post_init__(self):
        check_network_params(self)
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or not 1 <= self.layer <= self.depth:
            raise ValueError(f"layer must be a weight layer 1..{self.depth} of a ResNet-{self.depth}, got {self.layer!r}")


PROFILES = {
    "paper": Params(),
    # Same network and code path; the bundled digits instead of CIFAR-10 (at
    # initialisation a ResNet-110 costs a few seconds on a CPU).
    "quick": Params(dataset="digits"),
}


def _excess_kurtosis(x: torch.Tensor) -> float:
    x = x.double()
    z = (x - x.mean()) / x.std(unbiased=False)
    return float((z**4).mean() - 3.0)


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    data = load_dataset(params.dataset)
    loader = data.loader("train", params.batch_size, augment=params.augment, seed=seed, device=device, drop_last=True)
    images, labels = loader.first_batch()
    values, summary = [], []
    for series in progress(params.series, desc="fig2: gradients at init", unit="net"):
        torch.manual_seed(seed)  # every series starts from the same conv weights
        model = make_resnet(params, series, data.num_classes).to(device)
        grads, loss = weight_gradients(model, images, labels, [params.layer])
        g = grads[params.layer].flatten().cpu()
        name = get_layer(model, params.layer).name
        values.append(
            pd.DataFrame(
                {
                    "series": series,
                    "layer": params.layer,
                    "layer_name": name,
                    "index": np.arange(g.numel()),
                    "value": g.numpy().astype(np.float64),
                }
            )
        )
        summary.append(
            {
                "series": series,
                "layer": params.layer,
                "layer_name": name,
                "n": g.numel(),
                "loss": loss,
                "mean": float(g.double().mean()),
                "std": float(g.double().std(unbiased=False)),
                "max_abs": float(g.abs().max()),
                "kurtosis": _excess_kurtosis(g),
            }
        )
    return {"gradient_values": pd.concat(values, ignore_index=True), "gradient_summary": pd.DataFrame(summary)}
