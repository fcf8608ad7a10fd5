"""Weight initialisation schemes, a parameter of every model here.

The public reproduction of Bjorck et al. found that the scale of the Figure 2
gradients only matches the paper with torchvision's default ResNet initialisation
(kaiming normal, fan_out, on the convolutions), so the scheme is a choice:

* ``kaiming_fan_out``: torchvision's ResNet default. Convs: ``kaiming_normal_(mode="fan_out",
  nonlinearity="relu")``; Linear: PyTorch's default; BatchNorm: weight 1, bias 0.
* ``kaiming_fan_in``: He et al. 2015 as written. Convs: ``kaiming_normal_(mode="fan_in",
  nonlinearity="relu")``; Linear: PyTorch's default.
* ``xavier_uniform``: as the public reproduction. Convs and Linear: ``xavier_uniform_``
  (std ``sqrt(2 / (fan_in + fan_out))``, half the variance of He's on a square conv).
* ``xavier_normal``: Glorot & Bengio 2010 with Gaussian weights. Convs and Linear:
  ``xavier_normal_`` (the same std as ``xavier_uniform``, unbounded tails).
* ``pytorch_default``: what ``nn.Conv2d`` and ``nn.Linear`` do on construction
  (``reset_parameters``: ``kaiming_uniform_(a=sqrt(5))``, std ``1 / sqrt(3 fan_in)``, a
  sixth of He's variance), i.e. a network whose author never chose an init.

Every scheme treats the rest alike: conv biases (only the NF convs have them) start at 0,
BatchNorm / GroupNorm at weight 1 and bias 0, and the Linear bias at PyTorch's default.
Scaled-WS convs standardise their weights, so the scheme only changes the *shape* of
their initial filters.
"""

from __future__ import annotations

from torch import nn

from ..params import check_choice

INITS = ("kaiming_fan_out", "kaiming_fan_in", "xavier_uniform", "xavier_normal", "pytorch_default")

# The paper's network. Bjorck et al. do not state their initialisation; of INITS this is
# the one whose ResNet-110 (with and without BN) best matches the magnitudes of their
# figures at once (docs/papers.md#bjorck-magnitudes), measured by experiments/_init_survey.py; the table
# and the reasons are in results/init_survey/. The paper profile of every Bjorck figure
# (figs 1-6) uses it.
PAPER_INIT = "xavier_uniform"

__all__ = ["INITS", "PAPER_INIT", "initialize"]


def initialize(model: nn.Module, scheme: str = "kaiming_fan_out") -> nn.Module:
    """Initialise ``model``'s conv, linear and norm layers in place with ``scheme``."""
    check_choice("init", scheme, INITS)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if scheme == "pytorch_default":
                module.reset_parameters()
            elif scheme == "xavier_uniform":
                nn.init.xavier_uniform_(module.weight)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(module.weight)
            else:
                mode = "fan_out" if scheme == "kaiming_fan_out" else "fan_in"
                nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            module.reset_parameters()
            if scheme == "xavier_uniform":
                nn.init.xavier_uniform_(module.weight)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(module.weight)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
