"""Checkpoints that resume only the run they were written for.

``checkpoint.pt`` holds model, optimizer (momentum), the loop's state (epoch, budget,
history, status), the torch RNG states and a fingerprint of the configuration:
hyper-parameters, precision, seed, dataset (name, shape, content), model (class,
architecture, initial weights) and number of ranks. :func:`load_checkpoint` of a
checkpoint written for anything else raises :class:`CheckpointMismatch`, naming what
differs. Performance knobs (:data:`PERFORMANCE_FIELDS`) are not part of the fingerprint:
changing them does not change the results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ImageDataset
from ..runs import atomic_write
from .config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "PERFORMANCE_FIELDS",
    "CheckpointMismatch",
    "describe",
    "fingerprint",
    "load_checkpoint",
    "restore_rng_states",
    "rng_states",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1
# Fields that change speed, not results: left out of the checkpoint fingerprint.
PERFORMANCE_FIELDS = ("checkpoint_every", "sync_every", "eval_batch_size", "compile", "channels_last")


class CheckpointMismatch(ValueError):
    """A checkpoint was written for another configuration; it is never resumed silently."""


def _sha256(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def describe(model: nn.Module, data: ImageDataset, config: TrainConfig, seed: int, world_size: int) -> dict[str, Any]:
    """What the checkpoint fingerprint covers, readable (for the mismatch message).
    Call it before training touches the weights: it hashes the initial ones."""
    # No warmup (and the default plateau metric) are left out, so checkpoints written before those options existed still resume.
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in PERFORMANCE_FIELDS}
    if not config.warmup_epochs:
        fields.pop("warmup_epochs")
    if config.plateau_metric == "train_loss":  # the default, as before the option existed
        fields.pop("plateau_metric")
    return {
        **fields,
        "seed": seed,
        "world_size": world_size,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_architecture": hashlib.sha256(repr(model).encode()).hexdigest()[:16],
        "model_initial_weights": _sha256(model.state_dict().values()),
        "dataset": data.name,
        "dataset_shape": [len(data.train_labels), len(data.test_labels), *data.train_images.shape[1:]],
        "dataset_content": _sha256([data.train_images, data.train_labels, data.test_images, data.test_labels]),
    }


def fingerprint(description: dict[str, Any]) -> str:
    """A short hash of :func:`describe`'s dictionary."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_states(device: torch.device) -> dict[str, torch.Tensor | None]:
    """The torch RNG states a resumed run needs: the CPU's, and the device's on CUDA."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng_states(rng: dict[str, torch.Tensor | None], device: torch.device) -> None:
    """Set the states :func:`rng_states` recorded."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` of ``state`` written atomically: a crash leaves the previous file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path: Path, description: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path``, if it was written for ``description`` (:func:`describe`);
    otherwise :class:`CheckpointMismatch`, naming what differs, or saying it is unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointMismatch(
            f"cannot read the checkpoint {path}: it is truncated, corrupt or not written by nfstudy.train "
            f"({type(error).__name__}); delete it to start over"
        ) from error
    if state.get("fingerprint") != fingerprint(description):
        theirs = state.get("description", {})
        keys = sorted(set(theirs) | set(description))
        diff = [f"{k}: {theirs.get(k)!r} there, {description.get(k)!r} here" for k in keys if theirs.get(k) != description.get(k)]
        raise CheckpointMismatch(
            f"the checkpoint {path} was written for another configuration ({'; '.join(diff) or 'format'}). "
            f"It is not resumed: delete {path.parent} to train this configuration from scratch, "
            "or give this run another output folder."
        )
    return state
