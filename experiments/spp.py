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
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
import torch

from nfstudy.data import load_dataset
from nfstudy.models import INITS, NF_NORMS, NFBlock
from nfstudy.params import check_choice
from nfstudy.probes import activation_statistics
from nfstudy.runtime import progress, resolve_device

from ._common import check_network_params, make_resnet

FIGURE = "spp"
INPUTS = ("gaussian", "images")
STATISTICS = ("avg_channel_sq_mean", "avg_channel_var", "branch_avg_channel_sq_mean", "branch_avg_channel_var")


@dataclass(frozen=True)
class Params:
    dataset: str = "cifar10"  # the real images
    depth: int = 110  # ResNet depth, 6n+2
    batch_size: int = 128
    init: str = "kaiming_fan_out"  # torchvision's ResNet default
    series: tuple[str, ...] = ("bn", "none", "nf", "nf_no_ws")
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
