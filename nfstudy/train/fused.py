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

:func:`train_fused` is :func:`nfstudy.train.train` for each run, side by side: only the
step is its own (the stacked forward and backward pass, then each run's update); every
run is a :class:`~nfstudy.train.state.Trainee`, as ``train``'s one run is.

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
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..data import DeviceLoader, ImageDataset
from ..runtime import progress, resolve_device
from .checkpoint import describe
from .config import TrainConfig
from .distributed import rank_and_world
from .loop import evaluate
from .state import ClipFn, Trainee, TrainResult, batch_sizes, clip_and_step

__all__ = ["SHARED_FIELDS", "train_fused"]

# TrainConfig fields every run of a fused group must share: they fix the batches, their
# number per epoch and the precision of the one stacked forward pass.
SHARED_FIELDS = ("batch_size", "augment", "drop_last", "eval_batch_size", "precision", "channels_last", "compile")


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


def train_fused(
    models: Sequence[nn.Module],
    data: ImageDataset,
    configs: Sequence[TrainConfig] | TrainConfig,
    *,
    seeds: Sequence[int] | int = 0,
    device: str | torch.device = "auto",
    clips: Sequence[ClipFn | None] | None = None,
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
    runs, group = _start(models, data, configs, seeds, device, clips, out_dirs, on_epoch)
    steps = runs[0].steps
    stack = _Stack(models[0], runs[0].config.compile)
    bar = progress(
        total=sum(r.state.budget for r in runs) * steps, initial=sum(r.state.epoch for r in runs) * steps, desc=desc, unit="step"
    )
    while True:
        for r in runs:
            while r.extend_budget():  # not plateaued at the first drop: twice the epochs
                bar.total += r.state.budget // 2 * steps
            if not r.training and not r.finished:
                r.finish()
        if not any(r.training for r in runs):
            break
        stack.hold([r for r in runs if r.training])  # a run left: the others go on without it
        batches = {}  # (seed, epoch) -> that epoch's batch iterator: runs that share both share the batch
        for r in stack.runs:
            r.start_epoch()
            if (r.seed, r.state.epoch) not in batches:
                batches[r.seed, r.state.epoch] = group.loaders[r.seed].epoch_batches(r.state.epoch)
        for b in range(steps):
            current = {key: next(it) for key, it in batches.items()}
            for r in stack.runs:
                r.warm_up(b)
            stack.step(b, current, group)
            for r in stack.runs:
                if r.sync_due(b):
                    read = r.record_window(b + 1)  # the divergence check
                    bar.update(read.end - read.start)
            if any(r.diverged for r in stack.runs):  # it stops here, as train's loop breaks; the others go on without it
                for r in stack.runs:
                    if r.diverged:
                        bar.total -= (r.state.budget * steps) - (r.state.epoch * steps + r.synced)
                        r.finish()
                stack.hold([r for r in stack.runs if not r.diverged])
                if not stack.runs:
                    break
        for r in stack.runs:  # the epoch ends for the runs still in the stack
            r.end_epoch(*evaluate(r.model, group.test_loader, group.amp))
    bar.close()
    stack.hold([])
    return [r.result() for r in runs]


class _Stack:
    """The runs training together as one network: their parameters and buffers stacked
    along a new dim 0 (``stack_module_state``'s layout), run by ``vmap(functional_call)``.
    Every run's own tensors point at its slice, so its optimizer, clipper, ``state_dict``
    and ``evaluate`` see the stacked values."""

    def __init__(self, model: nn.Module, compile: bool):
        self.base = copy.deepcopy(model).train()  # the module functional_call runs; its own weights are never used

        def forward(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,))

        self.forward_shared_batch = vmap(forward, in_dims=(0, 0, None))  # one batch broadcast to every run
        self.forward_own_batches = vmap(forward, in_dims=(0, 0, 0))
        if compile:
            self.forward_shared_batch, self.forward_own_batches = (
                torch.compile(self.forward_shared_batch),
                torch.compile(self.forward_own_batches),
            )
        self.runs: list[Trainee] = []
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.run_params: list[list[nn.Parameter]] = []  # each run's parameters, in the stack's order

    def hold(self, runs: list[Trainee]) -> None:
        """Train exactly ``runs`` from now on: a run that leaves gets its own storage back
        (the stack's memory can go), the others are re-stacked (one copy of their parameters)."""
        if runs == self.runs:
            return
        for r in self.runs:
            if r not in runs:
                for t in [*r.model.parameters(), *r.model.buffers()]:
                    t.data = t.data.clone()
        self.runs = runs
        if not runs:
            return
        names = [n for n, _ in runs[0].model.named_parameters()]
        buffer_names = [n for n, _ in runs[0].model.named_buffers()]
        own = [(list(r.model.parameters()), list(r.model.buffers())) for r in runs]
        self.params = {n: torch.stack([p[j].detach() for p, _ in own]).requires_grad_() for j, n in enumerate(names)}
        self.buffers = {n: torch.stack([b[j] for _, b in own]) for j, n in enumerate(buffer_names)}
        for k, (p, b) in enumerate(own):
            for j, n in enumerate(names):
                p[j].data = self.params[n].detach()[k]
            for j, n in enumerate(buffer_names):
                b[j].data = self.buffers[n][k]
        self.run_params = [p for p, _ in own]

    def step(self, b: int, current: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]], group: _Group) -> None:
        """Step ``b`` of the epoch for every run, each on its batch of ``current`` (keyed by
        ``(seed, epoch)``): one forward and backward pass, then each run's own update."""
        keys = [(r.seed, r.state.epoch) for r in self.runs]
        with torch.autocast(group.device.type, torch.bfloat16, enabled=group.amp):
            if len(set(keys)) == 1:
                x, y = current[keys[0]]
                logits = self.forward_shared_batch(self.params, self.buffers, x)
                ys = [y] * len(self.runs)
            else:
                logits = self.forward_own_batches(self.params, self.buffers, torch.stack([current[k][0] for k in keys]))
                ys = [current[k][1] for k in keys]
        # Per run, as train computes it: the same loss, so the same logit gradients.
        loss_sums = [F.cross_entropy(logits[k].float(), ys[k], reduction="sum") for k in range(len(self.runs))]
        (torch.stack(loss_sums) * (1 / self.runs[0].sizes[b])).sum().backward()
        grads = [p.grad for p in self.params.values()]
        for k, r in enumerate(self.runs):
            for p, g in zip(self.run_params[k], grads):
                p.grad = g[k]
            clip_and_step(r.model, r.optimizer, r.clip)
            r.record_step(b, loss_sums[k], logits[k], ys[k])
        for p in self.params.values():
            p.grad = None


@dataclass
class _Group:
    """What the stack steps with besides its runs: set up once, never saved."""

    device: torch.device
    amp: bool
    loaders: dict[int, DeviceLoader]  # per seed: the order of a seed's batches is a function of (seed, epoch)
    test_loader: DeviceLoader


def _start(models, data, configs, seeds, device, clips, out_dirs, on_epoch) -> tuple[list[Trainee], _Group]:
    """Check the group; place every model, build its optimizer, resume it from its
    checkpoint; build the loaders; size the epoch."""
    n_runs = len(models)
    configs = [configs] * n_runs if isinstance(configs, TrainConfig) else list(configs)
    _check_group(models, configs)
    seeds = _per_run(seeds, n_runs, "seeds")
    clips = _per_run(clips, n_runs, "clips")
    out_dirs = _per_run(out_dirs, n_runs, "out_dirs")
    if len({str(o) for o in out_dirs if o is not None}) < sum(o is not None for o in out_dirs):
        raise ValueError(f"out_dirs repeats a folder: {out_dirs}; give every run its own")
    if rank_and_world()[1] > 1:
        raise ValueError("train_fused trains the whole stack in one process: call nfstudy.train.train under DDP")
    device = resolve_device(device)
    shared = configs[0]
    amp, channels_last = shared.autocast_and_layout(device.type == "cuda")

    runs = []
    for i, (model, config, seed, clip, out_dir) in enumerate(zip(models, configs, seeds, clips, out_dirs)):
        description = describe(model, data, config, seed, 1)  # before any training touches the weights
        model.to(device)
        out = Path(out_dir) if out_dir is not None else None
        report = functools.partial(on_epoch, i) if on_epoch is not None else None
        # The torch RNG is not restored (whose would it be?): training draws nothing from it.
        runs.append(
            Trainee.open(
                model,
                config,
                description,
                seed=seed,
                device=device,
                clip=clip,
                out=out,
                on_epoch=report,
                writer=out is not None,
                restore_rng=False,
            )
        )

    if device.type == "cuda":
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
    n = len(data.train_labels)
    for r in runs:
        r.size_epoch(batch_sizes(n, shared.batch_size, len(next(iter(loaders.values())))), n)
    return runs, _Group(device, amp, loaders, test_loader)
