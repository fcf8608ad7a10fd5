"""Figure 6 of Bjorck et al. 2018: gradients of the output logits at initialisation.

A freshly initialised ResNet sees one training mini-batch in train mode (BatchNorm
uses the batch's statistics); we keep the gradient of every image's loss with respect
to its logits (images x classes; ``softmax - onehot`` for cross-entropy, see
:mod:`nfstudy.probes.logits`). Series: with BN, without BN (the same conv weights,
BatchNorm removed) and the NF-ResNet.

The paper shows one network and one mini-batch; the public reproduction found that a
rerun sometimes shows two or three bright columns and averaged over an epoch. We do
both, and more: ``networks`` independent initialisations each see the same mini-batch
(the claims use all of them, the heatmap shows the median network by its dominant-class
share, :func:`nfstudy.figures.fig6.representative_network`), and that median network
of each series also sees every image of one epoch of ``epoch_split`` (un-augmented, the last batch possibly
smaller; BatchNorm normalises each batch on its own). The epoch average is taken per true
class (rows: the images' label, columns: the logit), because an average by position in
the batch mixes a different random image into each row every batch and converges to
the same row everywhere.

Network ``i`` of seed ``s`` is initialised from ``torch.manual_seed(1000 s + i)``.
The NF series uses ``nf_skip_gain_init = 1``: with SkipInit's zero gain the residual
branches are switched off at initialisation, and the NF-ResNet's logits would come
from a five-layer network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nfstudy.data import load_dataset
from nfstudy.models import PAPER_INIT
from nfstudy.figures.fig6 import representative_network
from nfstudy.params import check_choice
from nfstudy.probes import LogitGradients, dominant_class, epoch_logit_gradients, logit_gradients
from nfstudy.runtime import derived_seed, progress, resolve_device

from ._common import check_network_params, make_resnet

FIGURE = "fig6"


@dataclass(frozen=True)
class Params:
    dataset: str = "cifar10"
    depth: int = 110  # ResNet depth, 6n+2
    networks: int = 10  # independent initialisations per series (the heatmap shows the median one)
    batch_size: int = 128  # the heatmap's rows
    epoch: bool = True  # also average the median network's logit gradients over one epoch
    epoch_split: str = "train"  # the split that epoch runs over
    init: str = PAPER_INIT  # the paper's network, identified by measurement: results/init_survey/
    series: tuple[str, ...] = ("bn", "none", "nf")
    augment: bool = True  # the mini-batches as training would see them (crop + flip)
    nf_skip_gain_init: float = 1.0  # see the module docstring
    model: str = "cifar_resnet"  # cifar_resnet (the paper's) | torchvision_resnet (seed 004's, depth 101)

    def __post_init__(self):
        check_network_params(self)
        check_choice("epoch_split", self.epoch_split, ("train", "test"))


PROFILES = {
    "paper": Params(),
    # The same ten ResNet-110s on the bundled digits, 64 images a batch; the epoch runs
    # over the 299 test images (at initialisation no split is special, and the 1498
    # training images would triple the run time on a CPU).
    "quick": Params(dataset="digits", batch_size=64, epoch_split="test"),
}


def _summary(g: LogitGradients, **columns) -> dict:
    d = dominant_class(g.gradients, g.labels)
    logits = g.logits.double()
    return {
        **columns,
        "dominant_class": d.cls,
        "dominant_share": d.share,  # of the images labelled otherwise, fraction giving it > 1/2
        "dominant_probability": d.mean_probability,  # its mean probability over those images
        "top1_share": d.top1_share,
        "n_predicted": d.n_predicted,
        "n_images": d.n_images,
        "loss": g.loss,
        "logit_std": float(logits.std()),  # the logits' scale: O(1) with BN, huge without
    }


def _gradient_rows(g: LogitGradients, **columns) -> pd.DataFrame:
    grads = g.gradients.cpu().numpy().astype(np.float64)
    n, c = grads.shape
    return pd.DataFrame(
        {
            **columns,
            "image": np.repeat(np.arange(n), c),
            "label": np.repeat(g.labels.cpu().numpy(), c),
            "class": np.tile(np.arange(c), n),
            "gradient": grads.reshape(-1),
        }
    )


def _class_means(g: LogitGradients, num_classes: int, **columns) -> pd.DataFrame:
    """Mean gradient per (true class, logit class) over the images of each true class."""
    means, counts = g.mean_by_label(num_classes)
    means, counts = means.cpu().numpy(), counts.cpu().numpy()
    k = means.shape[1]
    return pd.DataFrame(
        {
            **columns,
            "label": np.repeat(np.arange(num_classes), k),
            "class": np.tile(np.arange(k), num_classes),
            "gradient": means.reshape(-1),
            "n_images": np.repeat(counts, k),
        }
    )


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    data = load_dataset(params.dataset)
    loader = data.loader("train", params.batch_size, augment=params.augment, seed=seed, device=device, drop_last=True)
    images, labels = loader.first_batch()
    # Every image of the epoch's split once: no augmentation, no image dropped.
    epoch_loader = data.loader(params.epoch_split, params.batch_size, augment=False, seed=seed, device=device)
    batch_rows, epoch_rows, summary = [], [], []
    steps = params.networks * len(params.series) + (len(params.series) if params.epoch else 0)
    bar = progress(total=steps, desc="fig6: logit gradients at init", unit="net")
    for network in range(params.networks):
        for series in params.series:
            torch.manual_seed(derived_seed(seed, network))  # every series of a network from the same weights
            model = make_resnet(params, series, data.num_classes).to(device)
            g = logit_gradients(model, images, labels)
            batch_rows.append(_gradient_rows(g, series=series, network=network))
            summary.append(_summary(g, series=series, network=network, scope="batch"))
            bar.update()
    if params.epoch:
        batch_summary = pd.DataFrame(summary)
        for series in params.series:
            _, network = representative_network(batch_summary, series)
            torch.manual_seed(derived_seed(seed, network))  # the same weights as in its batch
            model = make_resnet(params, series, data.num_classes).to(device)
            e = epoch_logit_gradients(model, epoch_loader.epoch_batches(0))
            epoch_rows.append(_class_means(e, data.num_classes, series=series, network=network))
            summary.append(_summary(e, series=series, network=network, scope="epoch"))
            bar.update()
    bar.close()
    tables = {
        "logit_gradients": pd.concat(batch_rows, ignore_index=True),
        "dominant_class": pd.DataFrame(summary),
    }
    if epoch_rows:
        tables["logit_gradients_epoch"] = pd.concat(epoch_rows, ignore_index=True)
    return tables
