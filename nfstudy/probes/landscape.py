"""The loss landscape along the optimizer's update (Bjorck et al. 2018, Figs. 3 and 4).

Bjorck, Gomes, Selman, Weinberger, "Understanding Batch Normalization" (NeurIPS 2018,
arXiv 1806.02375), section 3: early in training, take a tentative step of size ``eta``
along the update direction ``d`` and compare the loss on the *same* mini-batch,
``L(theta - eta * d) / L(theta)``, for many ``eta``. With BatchNorm the loss falls over a
wide range of step sizes; without it, it explodes past a small one. A relative loss
above :data:`DIVERGENCE_THRESHOLD` (or a non-finite one) counts as divergence, as in the paper.

``d`` is the step ``optimizer.step()`` would take with ``lr = 1``
(:class:`~nfstudy.probes.update.UpdateDirection`, clipped as the training step clips).
The public reproduction (docs/papers.md#bjorck-reproduction) measured the same by calling the optimizer
with ``lr = eta`` for each ``eta`` and restoring model and optimizer from disk in
between (tests/_reference.py keeps that method). Here, without that waste:

* one forward and one backward pass per probed batch give ``L(theta)`` and ``d``;
* each step size costs one forward pass, through ``torch.func.functional_call`` with
  ``theta.add(d, alpha=-eta)`` (SGD's own arithmetic), so the module's parameters are
  never modified; with ``chunk_size > 1`` several step sizes share one vectorised
  forward pass (``torch.func.vmap`` over stacked parameter sets: worth it on a GPU);
* BatchNorm runs in the mode the training step uses (train mode: the batch's
  statistics), with the running statistics frozen, so they are not updated.

The parameters, buffers, ``.grad`` and optimizer state are afterwards bit for bit what
they were (tests/test_landscape.py checks it). Clipping by AGC, value or norm does not
depend on the learning rate, so one clipped ``d`` serves every step size.

:func:`relative_loss_during_training` trains with the engine's step
(:func:`nfstudy.train.backward_and_step`) and probes chosen mini-batches on the way (Fig.
3); :func:`channel_moments_along_update` records per-channel moments of chosen layers
(:class:`~nfstudy.probes.activations.ChannelMoments`) along fractions 0..1 of one update
(Fig. 4); :func:`divergence_onset` finds the smallest step at which the relative loss passes
the divergence threshold (a scan, then bisection on the log step: Fig. 4's update).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..constants import DIVERGENCE
from ..runtime import progress
from ..train import backward_and_step
from ._state import frozen_batchnorm_statistics, training_mode
from .activations import ChannelMoments
from .update import ClipFn, LossFn, UpdateDirection, clipped_gradients, sgd_update_direction

__all__ = [
    "DIVERGENCE_THRESHOLD",
    "ONSET_OUTCOMES",
    "ChannelMoments",
    "DivergenceOnset",
    "LandscapeProbe",
    "UpdateDirection",
    "channel_moments_along_update",
    "check_step_sizes",
    "clipped_gradients",
    "default_chunk_size",
    "divergence_onset",
    "evaluate_along_update",
    "frozen_batchnorm_statistics",
    "relative_loss_along_update",
    "relative_loss_during_training",
    "sgd_update_direction",
]

DIVERGENCE_THRESHOLD = DIVERGENCE  # a relative loss above this (or not finite) is divergence


# --------------------------------------------------------------------------- checks


def check_step_sizes(step_sizes, *, allow_zero: bool = False, name: str = "step_sizes") -> torch.Tensor:
    """``step_sizes`` as a 1-D float64 CPU tensor; a clear error unless all are finite and > 0."""
    values = torch.as_tensor(np.asarray(step_sizes, dtype=np.float64).reshape(-1))
    if values.numel() == 0:
        raise ValueError(f"{name} is empty: give at least one, e.g. numpy.logspace(-5.5, 0.5, 80)")
    bad = ~torch.isfinite(values) | (values < 0 if allow_zero else values <= 0)
    if bad.any():
        shown = ", ".join(f"{v:g}" for v in values[bad][:5].tolist())
        need = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must all be finite and {need}, got {shown}: use e.g. numpy.logspace(-5.5, 0.5, 80)")
    return values


def default_chunk_size(device: torch.device | str) -> int:
    """Step sizes per forward pass: one on a CPU (a vmapped conv becomes a grouped conv,
    no faster there), 16 on an accelerator, where a batch of step sizes fills the device."""
    return 1 if torch.device(device).type == "cpu" else 16


# --------------------------------------------------------------------------- evaluating along the update


def evaluate_along_update(
    model: nn.Module,
    update: UpdateDirection,
    images: torch.Tensor,
    labels: torch.Tensor,
    step_sizes,
    *,
    loss_fn: LossFn = F.cross_entropy,
    train: bool = True,
    chunk_size: int | None = None,
    moments: ChannelMoments | None = None,
) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """The loss at ``theta - eta * d`` for every step size (and, with ``moments``, the
    channel moments of its layers), all on the device: ``(losses [K], {layer: (means
    [K, C], vars [K, C])})``. Forward passes only; ``chunk_size`` step sizes per pass
    (1: one plain forward each, bit-comparable with a real optimizer step)."""
    steps = check_step_sizes(step_sizes, allow_zero=True)
    chunk_size = default_chunk_size(images.device) if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (step sizes per forward pass), got {chunk_size}")
    layers = moments.layers if moments is not None else ()

    def loss_and_moments(params: dict[str, torch.Tensor]):
        loss = loss_fn(functional_call(model, params, (images,)), labels)
        return loss, {k: moments.last[k] for k in layers}

    losses, found = [], {k: ([], []) for k in layers}
    with contextlib.ExitStack() as stack:
        stack.enter_context(training_mode(model, train))
        stack.enter_context(frozen_batchnorm_statistics(model))
        stack.enter_context(torch.no_grad())
        if moments is not None:
            stack.enter_context(moments)
        for start in range(0, len(steps), chunk_size):
            chunk = steps[start : start + chunk_size]
            if chunk_size == 1:
                loss, stats = loss_and_moments(update.params_at(chunk.item()))
                loss, stats = loss[None], {k: (m[None], v[None]) for k, (m, v) in stats.items()}
            else:
                loss, stats = vmap(loss_and_moments)(update.stacked_params_at(chunk))
            losses.append(loss)
            for k, (m, v) in stats.items():
                found[k][0].append(m)
                found[k][1].append(v)
    return torch.cat(losses), {k: (torch.cat(m), torch.cat(v)) for k, (m, v) in found.items()}


# --------------------------------------------------------------------------- the relative loss


@dataclass(frozen=True)
class LandscapeProbe:
    """The relative loss along the update for one mini-batch (all arrays over step sizes)."""

    step_sizes: np.ndarray
    loss_before: float
    loss_after: np.ndarray
    relative_loss: np.ndarray  # loss_after / loss_before
    diverged: np.ndarray  # relative loss > threshold, or not finite
    update_norm: float  # ||d||
    divergence_threshold: float = DIVERGENCE_THRESHOLD

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per step size."""
        return pd.DataFrame(
            {
                "step_size": self.step_sizes,
                "loss_before": self.loss_before,
                "loss_after": self.loss_after,
                "relative_loss": self.relative_loss,
                "diverged": self.diverged,
                "update_norm": self.update_norm,
            }
        )


def relative_loss_along_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    step_sizes,
    *,
    loss_fn: LossFn = F.cross_entropy,
    train: bool = True,
    chunk_size: int | None = None,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
    clip: ClipFn | None = None,
) -> LandscapeProbe:
    """``L(theta - eta * d) / L(theta)`` on one mini-batch for every ``eta`` in ``step_sizes``.

    ``d`` is the direction ``optimizer.step()`` would take (SGD: momentum and weight decay
    included), from the gradient as ``clip`` leaves it when the network trains with gradient
    clipping. One forward and backward pass, then one forward pass per step size
    (``chunk_size`` of them at a time; default 1 on a CPU, 16 on a GPU). ``train=True``:
    BatchNorm uses the batch's statistics, as the training step does. Model, buffers,
    ``.grad`` and optimizer state are left exactly as they were. A non-finite relative loss
    or one above ``divergence_threshold`` is recorded as diverged, never raised.
    """
    steps = check_step_sizes(step_sizes)
    update = UpdateDirection.compute(model, optimizer, images, labels, loss_fn, train, clip=clip)
    losses, _ = evaluate_along_update(model, update, images, labels, steps, loss_fn=loss_fn, train=train, chunk_size=chunk_size)
    # One transfer for the whole probe; the ratio in float64 of the two float32 losses.
    norm = update.norm()
    values = torch.cat([norm.reshape(1), update.loss.reshape(1).to(norm.dtype), losses.to(norm.dtype)])
    values = values.cpu().numpy().astype(np.float64)
    norm, before, after = float(values[0]), float(values[1]), values[2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = after / before
    diverged = ~np.isfinite(relative) | (relative > divergence_threshold)
    return LandscapeProbe(steps.numpy(), before, after, relative, diverged, norm, divergence_threshold)


def relative_loss_during_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    probe_batches: Sequence[int],
    step_sizes,
    *,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
    desc: str | None = None,
    clip: ClipFn | None = None,
) -> pd.DataFrame:
    """Train on ``batches`` and probe the relative loss at the batches ``probe_batches``.

    Batch ``k`` (0-based) is probed after ``k`` ordinary training steps (forward,
    backward, ``clip(model)`` if given, ``optimizer.step()``) on batches ``0..k-1``, before
    its own step, as the public reproduction does; the probe's direction is that of the
    clipped step too. Training stops after the last probe. ``batches`` must hold
    them all (``len(batches)`` is checked when it has one). Returns a tidy frame:
    ``batch, step_size, loss_before, loss_after, relative_loss, diverged, update_norm``.
    """
    wanted = sorted(set(int(b) for b in probe_batches))
    if not wanted or wanted[0] < 0:
        raise ValueError(f"probe_batches must be batch indices >= 0 (0 = before the first update), got {list(probe_batches)}")
    steps = check_step_sizes(step_sizes)
    available = len(batches) if hasattr(batches, "__len__") else None
    if available is not None and wanted[-1] >= available:
        raise IndexError(
            f"batch {wanted[-1]} is beyond the epoch: it has {available} mini-batches (0..{available - 1}); "
            "probe earlier batches or use a smaller batch size"
        )
    frames, index = [], -1
    bar = progress(total=wanted[-1] + 1, desc=desc or "landscape", unit="batch")
    for index, (images, labels) in enumerate(batches):
        if index in wanted:
            probe = relative_loss_along_update(
                model,
                optimizer,
                images,
                labels,
                steps,
                loss_fn=loss_fn,
                chunk_size=chunk_size,
                divergence_threshold=divergence_threshold,
                clip=clip,
            )
            frames.append(probe.to_frame().assign(batch=index))
        if index == wanted[-1]:
            bar.update()
            break
        model.train()
        if index == 0:
            optimizer.zero_grad(set_to_none=True)  # stale gradients must not add to the first step's
        backward_and_step(model, optimizer, loss_fn(model(images), labels), clip)  # the engine's step; no .grad after
        bar.update()
    bar.close()
    if len(frames) < len(wanted):
        raise IndexError(
            f"batches ran out after {index + 1}: probe_batches {wanted} need {wanted[-1] + 1}; "
            "probe earlier batches or use a smaller batch size"
        )
    out = pd.concat(frames, ignore_index=True)
    return out[["batch", *[c for c in out.columns if c != "batch"]]]


def channel_moments_along_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    layers: Sequence[int],
    fractions,
    *,
    loss_fn: LossFn = F.cross_entropy,
    train: bool = True,
    chunk_size: int | None = None,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
    clip: ClipFn | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Channel means and variances of weight layers ``layers`` while a fraction ``f`` of
    one optimizer update is applied (``theta - f * lr * d``, ``f = 0``: before, ``1``: the
    full step ``optimizer.step()`` would take), for every ``f`` in ``fractions``.

    Returns two tidy frames: ``fraction, layer, layer_name, channel, mean, variance`` and
    ``fraction, step_size, loss, relative_loss, diverged`` (the loss on the same batch).
    Like :func:`relative_loss_along_update`, it changes no state; ``clip`` as there.
    """
    fractions = check_step_sizes(fractions, allow_zero=True, name="fractions")
    lrs = {float(group["lr"]) for group in optimizer.param_groups}
    if len(lrs) != 1:
        raise ValueError(f"the optimizer's parameter groups have different learning rates {sorted(lrs)}: use one group")
    lr = lrs.pop()
    moments = ChannelMoments(model, layers)  # checks the layers before any work
    update = UpdateDirection.compute(model, optimizer, images, labels, loss_fn, train, clip=clip)
    losses, found = evaluate_along_update(
        model, update, images, labels, fractions * lr, loss_fn=loss_fn, train=train, chunk_size=chunk_size, moments=moments
    )
    losses = losses.double().cpu().numpy()
    before = float(update.loss)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        relative = losses / before
    loss_table = pd.DataFrame(
        {
            "fraction": fractions.numpy(),
            "step_size": fractions.numpy() * lr,
            "loss": losses,
            "relative_loss": relative,
            "diverged": ~np.isfinite(relative) | (relative > divergence_threshold),
        }
    )
    rows = []
    for layer, (means, variances) in found.items():
        means, variances = means.cpu().numpy(), variances.cpu().numpy()  # fractions x channels
        k, c = means.shape
        rows.append(
            pd.DataFrame(
                {
                    "fraction": np.repeat(fractions.numpy(), c),
                    "layer": layer,
                    "layer_name": moments.names[layer],
                    "channel": np.tile(np.arange(c), k),
                    "mean": means.reshape(-1),
                    "variance": variances.reshape(-1),
                }
            )
        )
    return pd.concat(rows, ignore_index=True), loss_table


# --------------------------------------------------------------------------- the onset of divergence

# How a search for the onset of divergence ended (DivergenceOnset.outcome).
ONSET_OUTCOMES = ("bracketed", "no divergence in range", "diverged at the smallest step", "loss before not finite")


@dataclass(frozen=True)
class DivergenceOnset:
    """The smallest step size along one update at which the relative loss passes a threshold.

    ``outcome`` (:data:`ONSET_OUTCOMES`): ``"bracketed"``: ``step_size`` diverges and
    ``step_below`` does not, within ``10**tolerance_decades`` of each other; ``"no divergence
    in range"``: no step up to ``high`` diverges (``step_size = high``, the largest tried);
    ``"diverged at the smallest step"``: ``low`` already diverges (``step_size = low``: the
    onset lies below the range); ``"loss before not finite"``: nothing to compare with
    (``step_size = low``, nothing evaluated).
    """

    outcome: str
    step_size: float  # the step to take: the smallest found diverging (see outcome)
    step_below: float  # the largest found not diverging below it (NaN: none)
    relative_loss: float  # at step_size (NaN: not evaluated)
    relative_loss_below: float  # at step_below (NaN: none)
    loss_before: float
    update_norm: float  # ||d||
    threshold: float
    tolerance_decades: float
    search: pd.DataFrame  # one row per evaluation, in order: step, phase (scan | bisect), step_size, loss, relative_loss, diverged

    @property
    def bracketed(self) -> bool:
        return self.outcome == "bracketed"


def divergence_onset(
    model: nn.Module,
    update: UpdateDirection,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    low: float,
    high: float,
    scan_decades: float = 0.5,
    tolerance_decades: float = 0.005,
    threshold: float = DIVERGENCE_THRESHOLD,
    loss_fn: LossFn = F.cross_entropy,
    train: bool = True,
) -> DivergenceOnset:
    """The first step size ``eta`` in ``[low, high]`` at which ``L(theta - eta * d) / L(theta)``
    passes ``threshold`` (or is not finite), on the batch ``update`` was computed on.

    A scan upward from ``low`` in steps of ``scan_decades`` (and ``high`` last) stops at
    the first diverging step; bisection on ``log10(eta)`` between it and the scan's step
    before then narrows the bracket to ``tolerance_decades``: ``ceil(log2(scan_decades /
    tolerance_decades))`` more forward passes. "First" holds to the scan's resolution: a
    crossing and recrossing within one scan step is not seen. It always ends (a finite
    scan; a bracket that halves, stopped too where float64 cannot split it) and never
    raises on divergence. One forward pass per evaluation; no state changes.
    """
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high) and 0 < low < high):
        raise ValueError(f"the search range must be 0 < low < high, got low={low:g}, high={high:g}: e.g. low=10**-5.5, high=10**0.5")
    for name, value in (("scan_decades", scan_decades), ("tolerance_decades", tolerance_decades)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(
                f"{name} must be > 0 (decades of the step size), got {value!r}: e.g. scan_decades=0.5, tolerance_decades=0.005"
            )
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite relative loss > 0, got {threshold!r}: the paper's is {DIVERGENCE_THRESHOLD:g}")
    before = float(update.loss)
    norm = float(update.norm())
    rows = []

    def relative(eta: float, phase: str) -> tuple[float, bool]:
        losses, _ = evaluate_along_update(model, update, images, labels, [eta], loss_fn=loss_fn, train=train, chunk_size=1)
        loss = float(losses[0])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = float(np.float64(loss) / np.float64(before))
        diverged = not np.isfinite(r) or r > threshold
        rows.append({"step": len(rows), "phase": phase, "step_size": eta, "loss": loss, "relative_loss": r, "diverged": diverged})
        return r, diverged

    def result(outcome, step, below=np.nan, r=np.nan, r_below=np.nan) -> DivergenceOnset:
        search = pd.DataFrame(rows, columns=["step", "phase", "step_size", "loss", "relative_loss", "diverged"])
        return DivergenceOnset(outcome, step, below, r, r_below, before, norm, float(threshold), float(tolerance_decades), search)

    if not np.isfinite(before):
        return result("loss before not finite", low)
    logs = np.arange(np.log10(low), np.log10(high), scan_decades)
    grid = [*(10.0**logs), high] if np.log10(high) - logs[-1] > 1e-9 else list(10.0**logs)
    grid[0] = low  # exactly, not 10**log10(low)
    below, r_below = np.nan, np.nan
    for eta in grid:
        r, diverged = relative(eta, "scan")
        if diverged:
            break
        below, r_below = eta, r
    else:
        return result("no divergence in range", high, r=r)
    if not np.isfinite(below):
        return result("diverged at the smallest step", low, r=r)
    hi, r_hi = eta, r
    while np.log10(hi / below) > tolerance_decades:
        mid = float(np.sqrt(below) * np.sqrt(hi))  # the geometric middle, without overflow
        if not below < mid < hi:  # float64 cannot split the bracket further
            break
        r, diverged = relative(mid, "bisect")
        if diverged:
            hi, r_hi = mid, r
        else:
            below, r_below = mid, r
    return result("bracketed", hi, below, r_hi, r_below)
