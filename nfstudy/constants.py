"""Numbers the papers fix, each defined once, with where it comes from.

Every module that needs one of these imports it from here; a figure's own magnitudes
(the bands its claims test) live in that figure's module.
"""

from __future__ import annotations

__all__ = ["AGC_SUFFIX", "DIVERGENCE"]

# Bjorck et al. 2018, Sec. 2 and Fig. 3: a loss more than 10^3 times the reference loss
# (the loss before the step, or the run's first loss) counts as divergence.
DIVERGENCE = 1e3

# The series naming every figure shares: "norm+agc" is the network "norm" trained with
# adaptive gradient clipping (Brock et al. 2021); plots draw it dashed.
AGC_SUFFIX = "+agc"
