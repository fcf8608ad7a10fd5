"""Per-channel activation statistics, reduced on the device, read once per forward pass.

What Bjorck et al. 2018 plot in Fig. 5 (channel means and standard deviations at
initialisation vs depth) and Fig. 4 (per-channel means and variances of chosen layers),
and what Brock, De, Smith (ICLR 2021, arXiv 2101.08692) call a signal propagation plot:
for every residual block output the *average channel squared mean*
``mean_C(mean_NHW(x)^2)``, the *average channel variance* ``mean_C(var_NHW(x))`` and the
same variance of the residual branch ``f_i`` before it is scaled and added.

    with ActivationProbe(model, "blocks", network="nf") as probe:
        model(images)                   # every forward pass adds one set of records
    probe.frame()                       # tidy: network, forward, depth, name, kind, statistic, value
    probe.channel_frame([44])           # per channel: ... channel, statistic, value

How it stays cheap: each hook reduces its layer's output to the per-channel mean and
(biased) variance *on the device* the moment the layer runs, and keeps only those
``2 x C`` numbers, never the activation (so later in-place ops, e.g. an in-place ReLU on
a conv's output, cannot change what was measured). A hook on the root module
concatenates every layer's moments when the forward pass ends and copies them to the
host in one transfer: one device synchronisation per forward, not one per layer as
``.item()`` in every hook would cost. Everything else (std, squared mean, averages over
channels) is derived on the host from those moments, in float64.

Hooks are removed on exit, also when the forward pass raises.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..models.surgery import weight_layers
from ._state import preserved_state

__all__ = [
    "CHANNEL_STATISTICS",
    "LAYER_STATISTICS",
    "ActivationProbe",
    "HookPoint",
    "activation_statistics",
    "channel_moments",
    "hook_points",
]

# Per channel c of one layer's output x (reduced over batch and space):
CHANNEL_STATISTICS = ("mean", "std", "var", "sq_mean")  # mean_c, sqrt(var_c), var_c, mean_c^2
# Per layer: averages over channels, the quantities the papers plot.
LAYER_STATISTICS = (
    "avg_channel_abs_mean",  # mean_C |mean_c|     Bjorck Fig. 5, "channel means" (log magnitude)
    "avg_channel_std",  # mean_C std_c         Bjorck Fig. 5, "channel stds"
    "avg_channel_var",  # mean_C var_c         SPP "average channel variance"
    "avg_channel_sq_mean",  # mean_C mean_c^2  SPP "average channel squared mean"
)
BRANCH_PREFIX = "branch_"  # the same statistics of a block's residual branch output
SELECTIONS = ("weights", "blocks")


@dataclass(frozen=True)
class HookPoint:
    """One place the probe measures: ``depth`` numbers it along the network.

    ``kind`` is ``"weight_layer"`` (output of weight layer ``depth``, numbered as
    :func:`nfstudy.models.weight_layers`), ``"block"`` (output of residual block
    ``depth``; depth 0 is the stem, i.e. the input of the first block) or ``"module"``
    (a module chosen by name; ``depth`` is its position in the list given).
    """

    depth: int
    name: str
    kind: str
    module: nn.Module
    branch: nn.Module | None = None  # the block's residual branch, measured too
    on_input: bool = False  # measure the module's input (the stem = input of block 1)


def channel_moments(x: torch.Tensor, accumulate: torch.dtype | None = None) -> torch.Tensor:
    """``2 x C``: per-channel mean and biased variance of ``x`` (channels on dim 1),
    reduced over every other dim on ``x``'s device, returned in float64 (float32 on MPS).

    Two contiguous reductions per (image, channel) plane, a sum and a sum of squares
    (as a 2-norm), accumulated in ``accumulate`` (default: float32, or the input's dtype
    if wider), then combined over the batch in float64 as ``E[x^2] - E[x]^2``. On a CPU
    this costs a third of ``torch.var_mean`` over dims (0, 2, 3) (benchmarks/README.md).
    Limits of the float32 default: a plane's sum of squares must stay below 3.4e38 (RMS
    activations up to ~1e18 at 32 x 32; beyond that the variance is inf, never a wrong
    finite number), and the variance keeps ~7 - log10(1 + mean^2 / var) significant
    digits. Pass ``accumulate=torch.float64`` for diverging networks (slower on a CPU).
    """
    x = x.detach()
    if x.dim() < 2:
        raise ValueError(f"expected an activation with channels on dim 1 (N x C x ...), got shape {tuple(x.shape)}")
    n, c = x.shape[0], x.shape[1]
    if accumulate is None:
        accumulate = x.dtype if x.dtype == torch.float64 else torch.float32
    combine = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    if x.is_contiguous():
        rows, dim = x.reshape(n * c, -1), 1  # one row per (image, channel) plane
    else:
        rows, dim = x.movedim(1, -1).reshape(-1, c), 0  # channels last: channels innermost
    sums = rows.sum(dim, dtype=accumulate).to(combine)
    squares = torch.linalg.vector_norm(rows, dim=dim, dtype=accumulate).to(combine).square()
    if dim == 1:
        sums, squares = sums.view(n, c).sum(0), squares.view(n, c).sum(0)
    count = x.numel() // c if c else 0
    mean = sums / count
    var = (squares / count - mean.square()).clamp_(min=0)  # rounding can dip below 0 for var << mean^2
    return torch.stack((mean, var))


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if callable(getattr(model, "blocks", None)):
        return list(model.blocks())
    # Any model whose residual blocks expose their branch as a submodule named `branch`.
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "branch", None), nn.Module)]


def _what_exists(model: nn.Module) -> str:
    layers = weight_layers(model)
    blocks = _blocks(model)
    text = f"weight-layer depths 1..{len(layers)} ({layers[0].name} ... {layers[-1].name})" if layers else "no weight layers"
    if blocks:
        text += f", 'blocks' ({len(blocks)} blocks: {blocks[0][0]} ... {blocks[-1][0]})"
    return text + ", 'weights', or module names from model.named_modules()"


def hook_points(model: nn.Module, layers: str | Sequence[int] | Sequence[str] = "weights") -> list[HookPoint]:
    """Where to measure: ``"weights"`` (every weight layer's output), ``"blocks"`` (the
    stem and every residual block's output, with its residual branch), a list of
    weight-layer depths, or a list of module names. What does not exist is an error
    that lists what does."""
    if isinstance(layers, str):
        if layers == "weights":
            return [HookPoint(w.depth, w.name, "weight_layer", w.module) for w in weight_layers(model)]
        if layers == "blocks":
            blocks = _blocks(model)
            if not blocks:
                raise ValueError(
                    f"{type(model).__name__} has no residual blocks (no blocks() method and no submodule "
                    f"with a `branch`): choose {_what_exists(model)}"
                )
            first_name, first = blocks[0]
            points = [HookPoint(0, "stem", "block", first, on_input=True)]
            for depth, (name, block) in enumerate(blocks, start=1):
                branch = getattr(block, "branch", None)
                points.append(HookPoint(depth, name, "block", block, branch if isinstance(branch, nn.Module) else None))
            return points
        raise ValueError(f"unknown layer selection {layers!r}: choose {_what_exists(model)}")
    layers = list(layers)
    if not layers:
        raise ValueError(f"no layers chosen: choose {_what_exists(model)}")
    if all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in layers):
        found = weight_layers(model)
        missing = [int(d) for d in layers if not 1 <= d <= len(found)]
        if missing:
            raise IndexError(
                f"layer{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} do{'' if len(missing) > 1 else 'es'} "
                f"not exist in {type(model).__name__}: choose {_what_exists(model)}"
            )
        return [HookPoint(int(d), found[d - 1].name, "weight_layer", found[d - 1].module) for d in layers]
    if all(isinstance(n, str) for n in layers):
        modules = dict(model.named_modules())
        missing = [n for n in layers if n not in modules or n == ""]
        if missing:
            hints = {n: difflib.get_close_matches(n, [m for m in modules if m], n=3) for n in missing}
            said = "; ".join(f"{n!r} (did you mean {', '.join(h)}?)" if h else repr(n) for n, h in hints.items())
            raise ValueError(f"no module named {said} in {type(model).__name__}: choose {_what_exists(model)}")
        return [HookPoint(i, n, "module", modules[n]) for i, n in enumerate(layers, start=1)]
    raise TypeError(f"layers must be 'weights', 'blocks', a list of depths or a list of module names, got {layers!r}")


class ActivationProbe:
    """Records per-channel statistics of chosen layers on every forward pass of ``model``.

    ``layers``: see :func:`hook_points`. ``network`` labels the rows (default: the
    model's ``name`` or class name); ``accumulate`` as for :func:`channel_moments`. Use
    it as a context manager; the hooks are removed on exit whatever happens. Each
    completed forward pass of the *root* module adds one ``forward`` (0, 1, ...) to the
    records; a forward pass that raised leaves none. Records survive the ``with`` block:
    read them with :meth:`frame` and :meth:`channel_frame` afterwards.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[int] | Sequence[str] = "weights",
        *,
        network: str | None = None,
        accumulate: torch.dtype | None = None,
    ):
        self.model = model
        self.accumulate = accumulate  # see channel_moments; torch.float64 for exploding activations
        self.points = hook_points(model, layers)
        self.network = network if network is not None else str(getattr(model, "name", type(model).__name__))
        self._handles: list = []
        self._pending: list[tuple[int, str, torch.Tensor]] = []  # (point, site, 2 x C moments) of this forward
        self._records: list[tuple[int, int, str, np.ndarray]] = []  # (forward, point, site, 2 x C float64)
        self._forwards = 0

    # ------------------------------------------------------------------ hooks

    def __enter__(self) -> "ActivationProbe":
        try:
            self._register()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._pending:
                self._flush()  # submodules were called directly, without the root
        finally:
            self._pending.clear()
            self.remove()

    def _register(self) -> None:
        if self._handles:
            raise RuntimeError("this ActivationProbe is already attached: use one `with` block at a time")
        for index, point in enumerate(self.points):
            if point.on_input:
                self._handles.append(point.module.register_forward_pre_hook(self._input_hook(index)))
            else:
                self._handles.append(point.module.register_forward_hook(self._output_hook(index, "output")))
            if point.branch is not None:
                self._handles.append(point.branch.register_forward_hook(self._output_hook(index, "branch")))
        # A forward pass that raised leaves partial moments behind: drop them at the next start.
        self._handles.append(self.model.register_forward_pre_hook(lambda module, args: self._pending.clear()))
        self._handles.append(self.model.register_forward_hook(lambda module, args, output: self._flush()))

    def remove(self) -> None:
        """Remove every hook (idempotent); the records stay."""
        while self._handles:
            self._handles.pop().remove()

    def _output_hook(self, index: int, site: str):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                with torch.no_grad():
                    self._pending.append((index, site, channel_moments(output, self.accumulate)))

        return hook

    def _input_hook(self, index: int):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor):
                with torch.no_grad():
                    self._pending.append((index, "output", channel_moments(args[0], self.accumulate)))

        return hook

    def _flush(self) -> None:
        """End of a forward pass: one concatenation, one copy to the host."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        sizes = [m.numel() for _, _, m in pending]
        host = torch.cat([m.flatten() for _, _, m in pending]).cpu().numpy().astype(np.float64)
        offset = 0
        for (index, site, moments), size in zip(pending, sizes):
            self._records.append((self._forwards, index, site, host[offset : offset + size].reshape(2, -1)))
            offset += size
        self._forwards += 1

    # ------------------------------------------------------------------ results

    @property
    def forwards(self) -> int:
        """How many forward passes were recorded."""
        return self._forwards

    def _point_columns(self, index: int) -> dict:
        p = self.points[index]
        return {"network": self.network, "depth": p.depth, "name": p.name, "kind": p.kind}

    def frame(self) -> pd.DataFrame:
        """Tidy per-layer statistics: ``network, forward, depth, name, kind, statistic,
        value``, statistics as :data:`LAYER_STATISTICS`, prefixed ``branch_`` for a
        block's residual branch."""
        rows = []
        for forward, index, site, (mean, var) in self._records:
            prefix = BRANCH_PREFIX if site == "branch" else ""
            values = {
                "avg_channel_abs_mean": np.abs(mean).mean(),
                "avg_channel_std": np.sqrt(var).mean(),
                "avg_channel_var": var.mean(),
                "avg_channel_sq_mean": (mean**2).mean(),
            }
            base = {**self._point_columns(index), "forward": forward}
            rows += [{**base, "statistic": prefix + k, "value": float(v)} for k, v in values.items()]
        return pd.DataFrame(rows, columns=["network", "forward", "depth", "name", "kind", "statistic", "value"])

    def channel_frame(self, depths: Sequence[int] | None = None) -> pd.DataFrame:
        """Tidy per-channel statistics of the points at ``depths`` (all if None):
        ``network, forward, depth, name, kind, channel, statistic, value``, statistics as
        :data:`CHANNEL_STATISTICS` (``branch_`` prefixed for a residual branch)."""
        known = sorted({p.depth for p in self.points})
        if depths is not None:
            missing = sorted(set(depths) - set(known))
            if missing:
                raise IndexError(f"depth{'s' if len(missing) > 1 else ''} {missing} not probed: this probe measured depths {known}")
        wanted = None if depths is None else set(depths)
        frames = []
        for forward, index, site, (mean, var) in self._records:
            point = self.points[index]
            if wanted is not None and point.depth not in wanted:
                continue
            prefix = BRANCH_PREFIX if site == "branch" else ""
            channels = np.arange(len(mean))
            per_stat = {"mean": mean, "std": np.sqrt(var), "var": var, "sq_mean": mean**2}
            for stat, values in per_stat.items():
                frames.append(
                    pd.DataFrame(
                        {
                            **self._point_columns(index),
                            "forward": forward,
                            "channel": channels,
                            "statistic": prefix + stat,
                            "value": values,
                        }
                    )
                )
        columns = ["network", "forward", "depth", "name", "kind", "channel", "statistic", "value"]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)[columns]


def activation_statistics(
    model: nn.Module,
    images: torch.Tensor,
    layers: str | Sequence[int] | Sequence[str] = "weights",
    *,
    network: str | None = None,
    train: bool = True,
) -> pd.DataFrame:
    """:meth:`ActivationProbe.frame` of one forward pass of ``images`` (no gradients).

    The model runs in train mode by default (BatchNorm normalises with the batch's own
    statistics, as at the first step of training); its mode and buffers (BatchNorm's
    running statistics) are restored afterwards, so probing leaves the model unchanged.
    """
    with preserved_state(model, train), ActivationProbe(model, layers, network=network) as probe, torch.no_grad():
        model(images)
    return probe.frame()
