"""Distributed data parallel set-up: rank, world size and the one collective the loop needs.

Under ``torchrun`` each rank trains on its share of every global batch; metrics are summed
over ranks with :func:`all_reduce`. Without a process group everything here is a no-op
for rank 0 of a world of 1.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..runtime import resolve_device

__all__ = ["all_reduce", "init_distributed", "rank_and_world"]


def init_distributed(device: str | torch.device = "auto") -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; under ``torchrun`` (``WORLD_SIZE > 1``) this also
    starts the process group: NCCL with one GPU per process (``cuda:LOCAL_RANK``) when
    the device is CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device)
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """``t`` summed over ranks, in place (untouched in a world of 1)."""
    if world_size > 1:
        dist.all_reduce(t)
    return t
