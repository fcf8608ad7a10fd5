"""Devices, seeding and progress bars: the small runtime shared by experiments."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

__all__ = ["DEVICES", "derived_seed", "progress", "resolve_device", "seed_everything"]

DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable device is a clear error."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise RuntimeError("device 'mps' requested but not available: use DEVICE=auto or DEVICE=cpu")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available here: use DEVICE=auto or DEVICE=cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {name!r} does not exist: this machine has cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return dev
    raise ValueError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(seed: int, *keys: int) -> int:
    """A seed for sub-experiment ``keys`` of run ``seed`` (network i of seed s, ...):
    independent streams that never collide across seeds, the same on every machine."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint32)[0])


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr; ``NFSTUDY_PROGRESS=0`` turns bars off (tests do)."""
    from tqdm import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    kwargs.setdefault("disable", os.environ.get("NFSTUDY_PROGRESS", "1") == "0")
    return tqdm(iterable, **kwargs)
