"""Fused multi-run training: several runs of one architecture trained as one stacked network.

A sweep of small networks (Figure 1's series of one norm, the AGC ablation's thresholds at
one batch size, the seeds of a figure) leaves a GPU mostly idle when trained one after
another: a batch-128 ResNet-110 step is thousands of small kernels. Horizontal fusion
(HFTA, Wang et al., MLSys 2021) trains them as one: ``torch.func.stack_module_state``'s
layout (every parameter and buffer stacked along a new dim 0) and
``vmap(functional_call(model, ...))`` run all runs' forward and backward passes as one
network whose convolutions are grouped, the model code unchanged::

    from nfstudy.train import train_fused

    results = train_fused([model_a, model_b], data, [config_a, config_b], seeds=0,
                          clips=[None, GradientClipper("adaptive", 0.01)],
                          out_dirs=["runs/a", "runs/b"])     # one TrainResult per run

:func:`train_fused` is :func:`nfstudy.train.train` for each run, side by side:

* **Per run**, as ``train`` does it: the learning rate, its schedule (milestones, decay,
  warmup), the plateau rule, the clipping hook (``clip(model)`` on that run's own module,
  so AGC is per unit and per run and finds the head by module as today), SGD (each run
  keeps its own ``torch.optim.SGD``: its parameters are views into the stacked tensors, so
  the update, the momentum and the optimizer state are exactly ``train``'s), divergence,
  evaluation (``nfstudy.train.evaluate`` on the run's module), ``history.csv`` and
  ``checkpoint.pt``. A run's files are those ``train`` writes: either function resumes
  the other's checkpoints.
* **Data.** Each run sees the mini-batches ``train`` would give it: the device-resident
  loader's order is a function of ``(seed, epoch)`` only (``nfstudy.data.epoch_generator``),
  so runs that share both share one batch (``vmap`` broadcasts it); runs at another seed or
  epoch (after a resume) get their own, stacked.
* **Leaving the stack.** A run that finishes (its budget reached, or diverged) leaves at
  once: the others are re-stacked without it (one copy of their parameters), so a diverged
  run never updates again, never touches the others, and a short run keeps no long one
  waiting. Runs of different budgets share the stack while they all train.
* **Arithmetic.** The forward pass, the losses and therefore every gradient of the logits
  are bitwise ``train``'s; the weight gradients of the grouped convolutions sum in another
  order, within a few 1e-7 relative of the per-run ones (float32). Histories agree to that
  rounding, amplified by training (tests/test_fused.py states the tolerance).
* **Not fused.** Evaluation runs per run (a small share of an epoch; it keeps the test
  metrics exactly ``evaluate``'s); DDP (one process trains the whole stack).

Runs must share the architecture (the same builder: same module tree, parameter names and
shapes), the dataset and the loader settings (``batch_size``, ``augment``, ``drop_last``,
``eval_batch_size``, ``precision``, ``channels_last``, ``compile``); anything else in
``TrainConfig`` may differ.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..data import ImageDataset
from ..runs import atomic_write_csv
from ..runtime import progress, resolve_device
from .checkpoint import CHECKPOINT_FORMAT, describe, fingerprint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import rank_and_world
from .loop import TrainResult, evaluate, history_frame
from .schedule import learning_rate, milestone_epochs, plateaued

__all__ = ["SHARED_FIELDS", "train_fused"]

# TrainConfig fields every run of a fused group must share: they fix the batches, their
# number per epoch and the precision of the one stacked forward pass.
SHARED_FIELDS = ("batch_size", "augment", "drop_last", "eval_batch_size", "precision", "channels_last", "compile")


@dataclass(eq=False)
class _Run:
    """One run's side of the stack: everything ``train`` keeps in its locals."""

    index: int
    model: nn.Module
    config: TrainConfig
    seed: int
    clip: Callable[[nn.Module], Any] | None
    out: Path | None
    description: dict[str, Any]
    optimizer: torch.optim.Optimizer
    s: dict[str, Any]
    resumed_from: int
    finished_before: bool
    warmup_steps: int = 0
    lr: float = 0.0
    synced: int = 0
    tick: float = 0.0
    trained_images: float = 0.0
    trained_seconds: float = 0.0
    step_loss: torch.Tensor | None = None
    step_correct: torch.Tensor | None = None
    params: list[nn.Parameter] = field(default_factory=list)
    buffers: list[torch.Tensor] = field(default_factory=list)

    @property
    def training(self) -> bool:
        return self.s["status"] == "running" and self.s["epoch"] < self.s["budget"]

    def checkpoint(self, device: torch.device) -> None:
        if self.out is None:
            return
        model_state = self.model.state_dict()  # views into the stack: cloned, or torch.save writes every run's storage
        for key, value in model_state.items():
            model_state[key] = value.clone()
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        save_checkpoint(
            self.out / "checkpoint.pt",
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fingerprint(self.description),
                "description": self.description,
                "state": self.s,
                "model": model_state,
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
            },
        )

    def write_history(self) -> None:
        if self.out is not None:
            atomic_write_csv(history_frame(self.s["history"], self.s["budget"]), self.out / "history.csv")

    def result(self, steps_per_epoch: int) -> TrainResult:
        s = self.s
        return TrainResult(
            history=history_frame(s["history"], s["budget"]),
            status=s["status"],
            epochs=s["epoch"],
            budget=s["budget"],
            steps=s["step"],
            steps_per_epoch=steps_per_epoch,
            initial_loss=float("nan") if s["initial_loss"] is None else s["initial_loss"],
            diverged_step=s["diverged_step"],
            diverged_loss=s["diverged_loss"],
            resumed_from=self.resumed_from,
            images_per_s=self.trained_images / self.trained_seconds if self.trained_seconds else float("nan"),
            model=self.model,
        )


def _check_group(models: Sequence[nn.Module], configs: Sequence[TrainConfig]) -> None:
    if not models:
        raise ValueError("train_fused needs at least one run: give a list of models")
    if len(configs) != len(models):
        raise ValueError(f"{len(models)} models but {len(configs)} configs: give one TrainConfig per model")
    if len({id(m) for m in models}) < len(models):
        raise ValueError("the same model object appears twice: build one model per run")

    def layout(m):
        return (
            type(m),
            repr(m),
            [(n, p.shape, p.dtype) for n, p in m.named_parameters()],
            [(n, b.shape, b.dtype) for n, b in m.named_buffers()],
        )

    first = layout(models[0])
    for i, m in enumerate(models[1:], 1):
        if layout(m) != first:
            raise ValueError(
                f"model {i} is not built like model 0 (module tree, parameters or buffers differ): "
                "fuse only runs of one architecture, e.g. group by norm"
            )
    for name in SHARED_FIELDS:
        values = [getattr(c, name) for c in configs]
        if len(set(values)) > 1:
            raise ValueError(f"fused runs must share {name}, got {values}: fuse only runs that see the same batches")


def _per_run(value, n: int, what: str) -> list:
    """One value per run: a list of ``n``, or one value shared by all (not for ``out_dirs``)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what}: {len(value)} given for {n} runs, give one per run")
        return list(value)
    if what == "out_dirs" and value is not None:
        raise ValueError("out_dirs must be a list, one folder per run: runs cannot share an output folder")
    return [value] * n


def _restack(runs: list[_Run]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stack the runs' parameters and buffers along a new dim 0 (``stack_module_state``'s
    layout) and point every run's own tensors at its slice, so its optimizer, clipper,
    ``state_dict`` and ``evaluate`` see the stacked values."""
    names = [n for n, _ in runs[0].model.named_parameters()]
    buffer_names = [n for n, _ in runs[0].model.named_buffers()]
    params = {n: torch.stack([r.params[j].detach() for r in runs]).requires_grad_() for j, n in enumerate(names)}
    buffers = {n: torch.stack([r.buffers[j] for r in runs]) for j, n in enumerate(buffer_names)}
    for k, r in enumerate(runs):
        for j, n in enumerate(names):
            r.params[j].data = params[n].detach()[k]
        for j, n in enumerate(buffer_names):
            r.buffers[j].data = buffers[n][k]
    return params, buffers


def _unstack(run: _Run) -> None:
    """A run leaving the stack gets its own storage back (the stack's memory can go)."""
    for t in [*run.params, *run.buffers]:
        t.data = t.data.clone()


def train_fused(
    models: Sequence[nn.Module],
    data: ImageDataset,
    configs: Sequence[TrainConfig] | TrainConfig,
    *,
    seeds: Sequence[int] | int = 0,
    device: str | torch.device = "auto",
    clips: Sequence[Callable[[nn.Module], Any] | None] | None = None,
    out_dirs: Sequence[str | os.PathLike | None] | None = None,
    desc: str | None = None,
    on_epoch: Callable[[int, dict[str, Any]], Any] | None = None,
) -> list[TrainResult]:
    """Train ``models[i]`` on ``data`` as ``configs[i]`` says, all at once; one
    :class:`~nfstudy.train.TrainResult` per run, in order. See the module docstring.

    ``configs``, ``seeds`` and ``clips`` are per run (a single value is shared);
    ``out_dirs[i]`` holds run i's ``history.csv`` and ``checkpoint.pt`` (resumed when
    present), as :func:`nfstudy.train.train` writes them; ``on_epoch(i, row)`` is called
    after each epoch of run i with its history row (after the row is written, before any
    checkpoint). Every run is :func:`nfstudy.train.train` with the same arguments.
    """
    n_runs = len(models)
    configs = [configs] * n_runs if isinstance(configs, TrainConfig) else list(configs)
    _check_group(models, configs)
    seeds = _per_run(seeds, n_runs, "seeds")
    clips = _per_run(clips, n_runs, "clips")
    out_dirs = _per_run(out_dirs, n_runs, "out_dirs")
    if len({str(o) for o in out_dirs if o is not None}) < sum(o is not None for o in out_dirs):
        raise ValueError(f"out_dirs repeats a folder: {out_dirs}; give every run its own")
    rank, world = rank_and_world()
    if world > 1:
        raise ValueError("train_fused trains the whole stack in one process: call nfstudy.train.train under DDP")
    device = resolve_device(device)
    cuda = device.type == "cuda"
    shared = configs[0]
    amp, channels_last = shared.autocast_and_layout(cuda)

    runs: list[_Run] = []
    for i, (model, config, seed, clip, out_dir) in enumerate(zip(models, configs, seeds, clips, out_dirs)):
        description = describe(model, data, config, seed, 1)  # before any training touches the weights
        out = Path(out_dir) if out_dir is not None else None
        model.to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        s = dict(
            epoch=0,
            budget=config.epochs,
            extensions=0,
            step=0,
            history=[],
            status="running",
            initial_loss=None,
            diverged_step=None,
            diverged_loss=None,
        )
        if out is not None and (out / "checkpoint.pt").is_file():
            saved = load_checkpoint(out / "checkpoint.pt", description)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            s.update(saved["state"])  # the torch RNG is not restored: training draws nothing from it
        run = _Run(i, model, config, int(seed), clip, out, description, optimizer, s, s["epoch"], s["status"] != "running")
        run.params, run.buffers = list(model.parameters()), list(model.buffers())
        runs.append(run)

    if cuda:
        torch.backends.cudnn.benchmark = True
    size = data.train_images.shape[-1]
    common = dict(device=device, channels_last=channels_last)
    loaders = {
        seed: data.loader(
            "train", shared.batch_size, augment=shared.augment, pad=size // 8, drop_last=shared.drop_last, seed=seed, **common
        )
        for seed in sorted({r.seed for r in runs})
    }
    test_loader = data.loader("test", shared.eval_batch_size, shuffle=False, seed=runs[0].seed, **common)
    steps = len(next(iter(loaders.values())))
    n = len(data.train_labels)
    batch_sizes = [min(shared.batch_size, n - b * shared.batch_size) for b in range(steps)]
    sizes = torch.tensor(batch_sizes, device=device, dtype=torch.float32)
    for r in runs:
        r.step_loss, r.step_correct = torch.zeros(steps, device=device), torch.zeros(steps, device=device)
        r.warmup_steps = round(r.config.warmup_epochs * steps)

    base = copy.deepcopy(models[0])  # the module functional_call runs; its own weights are never used

    def forward(params, buffers, x):
        return functional_call(base, (params, buffers), (x,))

    forward_shared_batch = vmap(forward, in_dims=(0, 0, None))  # one batch broadcast to every run
    forward_own_batches = vmap(forward, in_dims=(0, 0, 0))
    if shared.compile:
        forward_shared_batch, forward_own_batches = torch.compile(forward_shared_batch), torch.compile(forward_own_batches)

    def finish(r: _Run) -> None:
        if r.s["status"] == "running":
            r.s["status"] = "completed"
        if r.s["diverged_step"] is not None:
            r.s["step"] = r.s["diverged_step"]
        if not r.finished_before:
            r.write_history()
            r.checkpoint(device)

    bar = progress(total=sum(r.s["budget"] for r in runs) * steps, initial=sum(r.s["epoch"] for r in runs) * steps, desc=desc, unit="step")
    done: set[int] = set()
    stacked: list[_Run] = []
    params = buffers = None
    while True:
        for r in runs:  # the plateau rule, per run, at the start of its epoch
            c = r.config
            while r.training and c.extend_until_plateau and r.s["extensions"] < c.max_extensions:
                first_drop = milestone_epochs(r.s["budget"], c.milestones)[0] if c.milestones else None
                if r.s["epoch"] != first_drop or plateaued(r.s["history"], c.plateau_metric, c.plateau_window, c.plateau_tol):
                    break
                r.s["budget"], r.s["extensions"] = 2 * r.s["budget"], r.s["extensions"] + 1  # not plateaued: twice the epochs
                bar.total += r.s["budget"] // 2 * steps
        for r in runs:
            if not r.training and r.index not in done:
                done.add(r.index)
                finish(r)
        active = [r for r in runs if r.training]
        if not active:
            break
        if active != stacked:  # a run left: the others go on without it
            for r in stacked:
                if r not in active:
                    _unstack(r)
            params, buffers = _restack(active)
            stacked = active
        for r in active:
            r.lr = learning_rate(r.s["epoch"], r.s["budget"], r.config.lr, r.config.milestones, r.config.lr_decay)
            for group in r.optimizer.param_groups:
                group["lr"] = r.lr
            r.synced, r.tick = 0, time.perf_counter()
        base.train()
        batches = {}  # (seed, epoch) -> that epoch's batch iterator: runs that share both share the batch
        for r in active:
            key = (r.seed, r.s["epoch"])
            if key not in batches:
                batches[key] = loaders[r.seed].epoch_batches(r.s["epoch"])
        for b in range(steps):
            current = {key: next(it) for key, it in batches.items()}
            keys = [(r.seed, r.s["epoch"]) for r in stacked]
            for r in stacked:
                t = r.s["epoch"] * steps + b
                if r.warmup_steps and t <= r.warmup_steps:  # linear warmup, then the schedule's rate
                    for group in r.optimizer.param_groups:
                        group["lr"] = r.lr * min(1.0, (t + 1) / r.warmup_steps)
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                if len(set(keys)) == 1:
                    x, y = current[keys[0]]
                    logits = forward_shared_batch(params, buffers, x)
                    ys = [y] * len(stacked)
                else:
                    logits = forward_own_batches(params, buffers, torch.stack([current[k][0] for k in keys]))
                    ys = [current[k][1] for k in keys]
            # Per run, as train computes it: the same loss, so the same logit gradients.
            loss_sums = [F.cross_entropy(logits[k].float(), ys[k], reduction="sum") for k in range(len(stacked))]
            (torch.stack(loss_sums) * (1 / sizes[b])).sum().backward()
            grads = {name: p.grad for name, p in params.items()}
            for k, r in enumerate(stacked):
                for p, g in zip(r.params, grads.values()):
                    p.grad = g[k]
                if r.clip is not None:
                    r.clip(r.model)
                r.optimizer.step()
                r.optimizer.zero_grad(set_to_none=True)
                r.step_loss[b], r.step_correct[b] = loss_sums[k].detach(), (logits[k].argmax(1) == ys[k]).sum()
            for p in params.values():
                p.grad = None
            left = False
            for r in stacked:
                if not (b + 1 == steps or b + 1 - r.synced >= r.config.sync_every):
                    continue
                window = slice(r.synced, b + 1)  # a host sync for this run: check its losses
                losses = (r.step_loss[window] / sizes[window]).tolist()
                if r.s["initial_loss"] is None:
                    r.s["initial_loss"] = losses[0]
                for i, value in enumerate(losses):
                    if not math.isfinite(value) or value > r.config.divergence_factor * r.s["initial_loss"]:
                        r.s.update(status="diverged", diverged_step=r.s["epoch"] * steps + r.synced + i + 1, diverged_loss=value)
                        break
                r.trained_seconds += time.perf_counter() - r.tick
                r.trained_images += float(sum(batch_sizes[window]))
                bar.update(b + 1 - r.synced)
                r.synced, r.tick = b + 1, time.perf_counter()
                left = left or r.s["status"] == "diverged"
            if left:  # a diverged run stops here, as train's loop breaks; the others go on without it
                for r in stacked:
                    if r.s["status"] == "diverged":
                        bar.total -= (r.s["budget"] * steps) - (r.s["epoch"] * steps + r.synced)
                        done.add(r.index)
                        _unstack(r)
                        finish(r)
                stacked = [r for r in stacked if r.s["status"] == "running"]
                if not stacked:
                    break
                params, buffers = _restack(stacked)
        for r in stacked:  # the epoch ends for the runs still in the stack
            test_loss, test_accuracy = evaluate(r.model, test_loader, amp)
            r.s["epoch"] += 1
            r.s["step"] = r.s["epoch"] * steps
            row = dict(
                epoch=r.s["epoch"],
                step=r.s["step"],
                lr=r.optimizer.param_groups[0]["lr"],
                train_loss=float(r.step_loss.sum()) / n,
                train_accuracy=float(r.step_correct.sum()) / n,
                test_loss=test_loss,
                test_accuracy=test_accuracy,
            )
            r.s["history"].append(row)
            r.write_history()
            if on_epoch is not None:
                on_epoch(r.index, {**row, "progress_pct": 100.0 * r.s["epoch"] / r.s["budget"]})
            if r.s["epoch"] % r.config.checkpoint_every == 0 and r.s["epoch"] < r.s["budget"]:
                r.checkpoint(device)
    bar.close()
    for r in stacked:
        _unstack(r)
    return [r.result(steps) for r in runs]
