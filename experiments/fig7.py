"""Figure 7 of Bjorck et al. 2018: singular values of products of random Gaussian matrices.

No network: for each number of factors (1, 3, 5 in the paper) we draw ``samples``
independent products of ``size x size`` matrices with i.i.d. N(0, 1/size) entries (see
:mod:`nfstudy.randmat`) and keep every singular value. The paper does not state the
matrix size; 1000 is our choice for the paper profile (a parameter). The matrices are
drawn on the CPU (the same numbers on every device), multiplied and decomposed in float64
on the run's device.

Seed ``s`` draws the products of ``k`` factors from ``torch.Generator().manual_seed(1000 s + k)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nfstudy.params import check_positive
from nfstudy.randmat import fuss_catalan_edge, product_singular_values
from nfstudy.runtime import derived_seed, progress, resolve_device

FIGURE = "fig7"


@dataclass(frozen=True)
class Params:
    size: int = 1000  # rows = columns of every factor
    factors: tuple[int, ...] = (1, 3, 5)  # numbers of factors compared
    samples: int = 10  # independent products per number of factors
    small: float = 0.1  # "near 0": below this singular value (their mean square is 1)

    def __post_init__(self):
        check_positive("size", self.size, integer=True)
        check_positive("samples", self.samples, integer=True)
        check_positive("small", self.small)
        if not self.factors:
            raise ValueError("factors must list at least one number of factors, e.g. 1,3,5")
        for k in self.factors:
            check_positive("factors", k, integer=True)
        if list(self.factors) != sorted(set(self.factors)):
            raise ValueError(f"factors must be distinct and increasing, got {self.factors!r}")


PROFILES = {
    "paper": Params(),
    "quick": Params(size=300, samples=10),  # 3000 singular values per histogram, seconds on a CPU
}


def run(params: Params, *, seed: int = 0, device: str = "auto") -> dict[str, pd.DataFrame]:
    device = resolve_device(device)
    if device.type == "mps":
        device = torch.device("cpu")  # MPS has no float64
    values, summary = [], []
    for k in progress(params.factors, desc="fig7: random matrix products", unit="k"):
        sv = product_singular_values(params.size, k, params.samples, seed=derived_seed(seed, k), device=device).numpy()
        samples, size = sv.shape
        values.append(
            pd.DataFrame(
                {
                    "factors": k,
                    "sample": np.repeat(np.arange(samples), size),
                    "index": np.tile(np.arange(size), samples),
                    "singular_value": sv.reshape(-1),
                }
            )
        )
        summary.append(
            {
                "factors": k,
                "size": params.size,
                "samples": samples,
                "mean_square": float((sv**2).mean()),  # 1 by construction, in expectation
                "largest": float(sv[:, 0].mean()),  # mean over samples of the largest
                "edge": fuss_catalan_edge(k),  # its n -> inf limit
                "median": float(np.median(sv)),
                "small": params.small,
                "frac_small": float((sv < params.small).mean()),
            }
        )
    return {"singular_values": pd.concat(values, ignore_index=True), "singular_value_summary": pd.DataFrame(summary)}
