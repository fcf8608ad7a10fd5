"""Normalizer-Free building blocks.

Brock, De, Smith, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets" (ICLR 2021, arXiv 2101.08692) and Brock et al., "High-Performance
Large-Scale Image Recognition Without Normalization" (ICML 2021, arXiv 2102.06171).

* :class:`ScaledStdConv2d`: Scaled Weight Standardisation,
  ``W_hat = gain * (W - mean(W)) / sqrt(max(N * var(W), eps))`` per output filter,
  N the fan-in, var biased, eps = 1e-4 as in the official code (a *max* guard; timm's
  ``ScaledStdConv2d`` instead adds eps inside the square root).
* :class:`ScaledReLU`: ``gamma * relu(x)``, gamma chosen so that a unit Gaussian keeps
  unit variance (see :data:`ACTIVATION_GAMMA`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATION_GAMMA", "RELU_GAMMA", "ScaledReLU", "ScaledStdConv2d"]

# gamma such that Var(gamma * relu(z)) = 1 for z ~ N(0, 1):
# E[relu(z)^2] = 1/2, E[relu(z)] = 1/sqrt(2 pi), so Var = (1 - 1/pi) / 2.
RELU_GAMMA = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))  # 1.7128585...

# Where the numbers come from: "relu" is the analytic value above; "relu_official" is
# the empirically measured constant of the official NFNets code (deepmind-research,
# nfnets/base.py, nonlinearities table), kept for bit-faithful comparisons.
ACTIVATION_GAMMA = {
    "relu": RELU_GAMMA,
    "relu_official": 1.7139588594436646,
}


class ScaledReLU(nn.Module):
    """``gamma * relu(x)``: variance preserving for unit Gaussian input."""

    def __init__(self, gamma: float = RELU_GAMMA):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) * self.gamma

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:.6f}"


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d with Scaled Weight Standardisation and a learnable per-filter gain.

    The stored ``weight`` is the raw parameter; every forward pass standardises each
    output filter over its fan-in (``in_channels / groups * kh * kw`` values) to zero
    mean and ``1 / fan_in`` variance, then multiplies by ``gain`` (initialised to
    ``gain_init``). A zero-mean filter removes the mean shift a ReLU introduces, and the
    ``1 / fan_in`` scale preserves variance for unit-variance inputs.
    """

    def __init__(self, *args, gain_init: float = 1.0, eps: float = 1e-4, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), float(gain_init)))
        self.eps = float(eps)

    def standardized_weight(self) -> torch.Tensor:
        weight = self.weight
        fan_in = weight[0].numel()
        var, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        scale = torch.rsqrt(torch.clamp(var * fan_in, min=self.eps)) * self.gain
        return (weight - mean) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, gain_init: float = 1.0, eps: float = 1e-4) -> ScaledStdConv2d:
        """A WS conv with the same configuration, weights and bias as ``conv``."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            gain_init=gain_init,
            eps=eps,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new
