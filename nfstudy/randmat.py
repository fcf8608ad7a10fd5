"""Singular values of products of random Gaussian matrices: Bjorck et al. 2018, Fig. 7.

Their random-matrix explanation of Figs. 5 and 6: a deep network without normalisation
is, at initialisation, close to a product of independent random matrices, and such a
product is ill conditioned, increasingly so with the number of factors: most singular
values pile up near 0 while the largest grows, so the output is dominated by a few
input directions whatever the input.

Entries are i.i.d. N(0, 1/n) (the scale He/Glorot initialisation gives a square layer),
so every factor preserves the expected squared norm and the mean of the squared
singular values of any product is 1. For k factors the squared singular values of the
product follow, as n grows, the Fuss-Catalan law with support
``[0, (k + 1)^(k + 1) / k^k]`` (k = 1: Marchenko-Pastur, largest singular value 2):
:func:`fuss_catalan_edge` is the square root of its upper end.
"""

from __future__ import annotations

import math

import torch

from .params import check_positive

__all__ = ["fuss_catalan_edge", "gaussian_product", "product_singular_values"]


def gaussian_product(
    size: int, factors: int, generator: torch.Generator, dtype=torch.float64, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """The product of ``factors`` independent ``size x size`` matrices with N(0, 1/size)
    entries, drawn from the CPU ``generator`` (the same numbers on every device) and
    multiplied on ``device``."""
    check_positive("size", size, integer=True)
    check_positive("factors", factors, integer=True)
    product = None
    for _ in range(factors):
        w = (torch.randn(size, size, generator=generator, dtype=dtype) / math.sqrt(size)).to(device)
        product = w if product is None else w @ product
    return product


def product_singular_values(size: int, factors: int, samples: int, seed: int = 0, device: str | torch.device = "cpu") -> torch.Tensor:
    """``samples x size`` singular values (each row descending) of independent products,
    in float64 (the smallest of a 5-factor product are ~1e-4 of the largest), on the host."""
    check_positive("samples", samples, integer=True)
    g = torch.Generator().manual_seed(int(seed))
    found = [torch.linalg.svdvals(gaussian_product(size, factors, g, device=device)) for _ in range(samples)]
    return torch.stack(found).cpu()


def fuss_catalan_edge(factors: int) -> float:
    """The largest singular value of a product of ``factors`` N(0, 1/n) matrices as n -> inf."""
    check_positive("factors", factors, integer=True)
    k = factors
    return math.sqrt((k + 1) ** (k + 1) / k**k)
