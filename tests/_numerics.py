"""Tolerances for the tests that compare two code paths computing the same float numbers.

Two paths (fused and one at a time, the vectorised AGC and its definition, a probe and a
direct computation, DDP and one process) run different kernels, and which kernels run, and
in what order they sum, depends on the CPU (AVX-512, AVX2, none) and the thread count. Their
results agree to rounding, not bit for bit: each such test states its tolerance from what
it computes, with the bounds below, and carries the ``numerics`` marker, which ``make test``
runs a second time under another kernel set (``ATEN_CPU_CAPABILITY=default``). Bitwise
equality is kept for the same path run twice on one machine (a rerun, a resume) and for
paths that run the same operations on the same numbers (each such test says which).

Rounding model (float32, unit roundoff ``U32``): one operation rounds to within ``U32``
relative; a sum of ``n`` terms, in any order, is within ``(n - 1) * U32`` of the exact sum
relative to the sum of the terms' magnitudes (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., eq. 4.4); a dot product of length ``n`` likewise, with one more
rounding per product. Two paths that each obey such a bound differ by at most the sum of
the two. Where that worst case is affordable (AGC's units: tens to hundreds of values) the
tests use it: they cannot fail from rounding on any CPU. A forward pass chains reductions of
thousands of terms, where the worst case (every rounding going the same way) says nothing;
there roundings of either sign add like a random walk, ``sqrt(n) * U32`` per reduction
(:func:`forward_rtol`). Measured differences sit well below either (5-1000x), while the errors the
tests are there to catch (a wrong unit, weight, batch, step or factor) are larger by orders
of magnitude.
"""

from __future__ import annotations

import math

U32 = 2.0**-24  # float32 unit roundoff: half the spacing of floats in [1, 2)


def sum_rtol(n: int, u: float = U32) -> float:
    """Worst-case relative error of a sum (or a dot product) of ``n`` terms of one sign."""
    return n * u


def norm_rtol(n: int, u: float = U32) -> float:
    """Worst-case relative error of the L2 norm of ``n`` numbers: the sum of squares halved
    by the square root, plus the root's own rounding."""
    return sum_rtol(n, u) / 2 + u


def agc_rtol(unit: int, u: float = U32) -> float:
    """Two AGC implementations of one unit of ``unit`` elements: each takes the unit's
    gradient and weight norms (``norm_rtol`` each) and three roundings more (the clamp's
    product with lambda, the ratio, the product with the gradient); the two may sum in
    different orders, hence twice one implementation's bound."""
    return 2 * (2 * norm_rtol(unit, u) + 3 * u)


def forward_rtol(reductions: int, n: int, u: float = U32) -> float:
    """Two forward passes that differ in the order of their sums (a vmapped, chunked or
    channels-last kernel against a plain one): ``reductions`` in a row (weight layers,
    normalisations, the loss's mean), each of at most ``n`` terms, each off by ~``sqrt(n) * u``
    (random walk), adding up along the chain."""
    return reductions * math.sqrt(n) * u


# Training, fused (vmap) against one run at a time (tests/test_fused.py, test_fig1.py, test_agc.py).
#
# The first loss is one forward pass of a ResNet-8 on one batch, by a plain convolution or by
# vmap's batched one: 16 reductions in a row (8 weight layers, 7 BatchNorms, the loss's mean
# over the batch), each of at most 32768 terms (BatchNorm's statistics over a batch of 512
# 8x8 images; a convolution sums 576): forward_rtol = 1.7e-4. Measured: 0 to 1.5e-7 (AVX-512,
# AVX2, no SIMD). A wrong batch or wrong weights move the first loss by ~1e-2.
FIRST_LOSS_RTOL = forward_rtol(16, 32768)
# After training, the rounding of the first steps has been amplified by the steps after it:
# train() itself, given initial weights perturbed by 3e-7 relative, moves the per-epoch train
# loss of the BN run at lr 0.1 by 3.7e-4 relative after 12 steps; hence, over the <= 48 SGD
# steps of these tests, losses agree to FUSED_LOSS_RTOL and accuracies to FUSED_ACC_IMAGES images.
FUSED_LOSS_RTOL = 2e-3
FUSED_ACC_IMAGES = 2
