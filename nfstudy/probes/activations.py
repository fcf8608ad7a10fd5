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

How it stays cheap: each hook reduces its layer's output to per-channel sums (of the
values and of their squares) *on the device* the moment the layer runs, and keeps only
those ``2 x C`` numbers, never the activation (so later in-place ops, e.g. an in-place
ReLU on a conv's output, cannot change what was measured). A hook on the root module
concatenates every layer's sums when the forward pass ends and copies them to the host
in one transfer: one device synchronisation per forward, not one per layer as
``.item()`` in every hook would cost. Means, variances, stds and the averages over
channels are derived on the host from those sums, in float64.

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
    "ChannelMoments",
    "HookPoint",
    "activation_statistics",
    "channel_moments",
    "channel_sums",
    "channel_var_mean",
    "finish_sums",
    "hook_points",
    "moments_from_sums",
    "plane_partials",
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


def plane_partials(x: torch.Tensor, accumulate: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums, norms)``, each ``P x C``: the sum and the 2-norm of the values of every
    (image, channel) plane of ``x`` (channels on dim 1; ``P`` = batch size), on ``x``'s
    device, accumulated in ``accumulate`` (default float32, or the input's dtype if wider).

    Two contiguous reductions, the whole per-activation cost of the probe: on a CPU a
    third of ``torch.var_mean`` over dims (0, 2, 3) (benchmarks/README.md). A
    channels-last tensor is reduced over its rows instead (``P`` = 1). The float32
    default overflows to inf (never to a wrong finite number) once a plane's sum of
    squares passes 3.4e38, i.e. beyond RMS activations of ~1e18 at 32 x 32: pass
    ``accumulate=torch.float64`` for diverging networks (slower on a CPU).
    """
    x = x.detach()
    if x.dim() < 2:
        raise ValueError(f"expected an activation with channels on dim 1 (N x C x ...), got shape {tuple(x.shape)}")
    n, c = x.shape[0], x.shape[1]
    if accumulate is None:
        accumulate = x.dtype if x.dtype == torch.float64 else torch.float32
    if x.is_contiguous():
        rows = x.reshape(n * c, -1)  # one row per (image, channel) plane
        return rows.sum(1, dtype=accumulate).view(n, c), torch.linalg.vector_norm(rows, dim=1, dtype=accumulate).view(n, c)
    rows = x.movedim(1, -1).reshape(-1, c)  # channels last: channels innermost
    return rows.sum(0, dtype=accumulate).view(1, c), torch.linalg.vector_norm(rows, dim=0, dtype=accumulate).view(1, c)


def finish_sums(sums: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``... x 2 x C`` per-channel sum and sum of squares from :func:`plane_partials`
    (``... x P x C`` each, any leading dims), in float64 (float32 on MPS, which has none)."""
    combine = torch.float32 if sums.device.type == "mps" else torch.float64
    return torch.stack((sums.to(combine).sum(-2), norms.to(combine).square().sum(-2)), dim=-2)


def channel_sums(x: torch.Tensor, accumulate: torch.dtype | None = None) -> torch.Tensor:
    """``2 x C``: per-channel sum and sum of squares of ``x`` over every dim but 1, on
    ``x``'s device (:func:`plane_partials`, then :func:`finish_sums`)."""
    return finish_sums(*plane_partials(x, accumulate))


def moments_from_sums(sums, count: int):
    """Per-channel mean and biased variance ``E[x^2] - E[x]^2`` from :func:`channel_sums`
    of ``count`` values per channel (tensors or arrays). The variance keeps about
    ``7 - log10(1 + mean^2 / var)`` significant digits with float32 partial sums."""
    mean = sums[0] / count
    var = sums[1] / count - mean**2
    return mean, var.clip(min=0) if isinstance(var, np.ndarray) else var.clamp(min=0)  # rounding can dip below 0


def channel_moments(x: torch.Tensor, accumulate: torch.dtype | None = None) -> torch.Tensor:
    """``2 x C``: per-channel mean and biased variance of ``x`` over every dim but 1, on
    ``x``'s device, from :func:`channel_sums` (same precision and range)."""
    sums = channel_sums(x, accumulate)
    return torch.stack(moments_from_sums(sums, x.numel() // max(x.shape[1], 1)))


def _per_channel(x: torch.Tensor) -> int:
    """How many values each channel of ``x`` pools (batch x space)."""
    return x.numel() // x.shape[1] if x.dim() >= 2 and x.shape[1] else 0


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
            points = [HookPoint(0, "stem", "block", blocks[0][1], on_input=True)]
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
        # (point, site, values per channel, P x C plane sums, P x C plane norms) of this forward
        self._pending: list[tuple[int, str, int, torch.Tensor, torch.Tensor]] = []
        self._records: list[tuple[int, int, str, np.ndarray]] = []  # (forward, point, site, 2 x C float64)
        self._forwards = 0

    # ------------------------------------------------------------------ hooks

    def __enter__(self) -> ActivationProbe:
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
                self._record(index, site, output)

        return hook

    def _input_hook(self, index: int):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor):
                self._record(index, "output", args[0])

        return hook

    def _record(self, index: int, site: str, x: torch.Tensor) -> None:
        """What a hook keeps of activation ``x``: its per-plane partial sums, on the device."""
        with torch.no_grad():
            self._pending.append((index, site, _per_channel(x), *plane_partials(x, self.accumulate)))

    def _flush(self) -> None:
        """End of a forward pass: finish the sums of all layers of one shape at once (a
        ResNet has four shapes, so a handful of ops instead of a few per layer), then one
        concatenation and one copy to the host."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        groups: dict[tuple, list[int]] = {}
        for position, (*_, sums, norms) in enumerate(pending):
            groups.setdefault((tuple(sums.shape), sums.dtype, sums.device), []).append(position)
        order = [p for positions in groups.values() for p in positions]
        finished = [
            finish_sums(torch.stack([pending[p][3] for p in positions]), torch.stack([pending[p][4] for p in positions])).flatten()
            for positions in groups.values()
        ]
        if len({f.device for f in finished}) == 1:
            host = torch.cat(finished).cpu().numpy().astype(np.float64)
        else:  # a model spread over devices: one copy per device
            host = np.concatenate([f.cpu().numpy().astype(np.float64) for f in finished])
        records, offset = {}, 0
        for position in order:
            index, site, count, sums, _ = pending[position]
            size = 2 * sums.shape[1]
            mean, var = moments_from_sums(host[offset : offset + size].reshape(2, -1), count)
            records[position] = (self._forwards, index, site, np.stack((mean, var)))
            offset += size
        self._records += [records[p] for p in range(len(pending))]  # in the order the layers ran
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


def channel_var_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(mean, biased variance)`` of ``x`` over every dim but 1, two-pass
    (``torch.var_mean``) in float64 (float32 on MPS, which has none), on ``x``'s device:
    exact where the one-pass sums of :func:`channel_moments` lose digits, and free of host
    transfers, so it runs inside ``torch.func.vmap``."""
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    var, mean = torch.var_mean(x.detach().to(dtype).transpose(0, 1).flatten(1), dim=1, correction=0)  # channels x rest
    return mean, var


class ChannelMoments(ActivationProbe):
    """The moments of a few weight layers, kept on the device: :class:`ActivationProbe`'s
    hooks (layer selection, registration, removal on exit) with :func:`channel_var_mean`
    as the reduction and no host transfer, so the landscape probe can record them for
    several step sizes in one vectorised forward pass (Bjorck et al. Fig. 4).

    ``layers`` are 1-based weight-layer depths (:func:`hook_points`). Use as a context
    manager; after each forward pass :attr:`last` maps layer -> ``(mean, var)``, tensors
    on the device (batched under ``vmap``). Nothing goes to :meth:`frame`.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        self.layers = tuple(layers)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in self.layers):
            raise TypeError(f"layers must be weight-layer depths (ints), got {list(self.layers)!r}")
        super().__init__(model, list(self.layers))  # checks every layer first
        self.names = {p.depth: p.name for p in self.points}
        self.last: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _record(self, index: int, site: str, x: torch.Tensor) -> None:
        self.last[self.points[index].depth] = channel_var_mean(x)

    def _flush(self) -> None:  # the moments stay on the device, in self.last
        pass


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
