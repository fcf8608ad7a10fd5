"""Shared fixtures: offline, CPU, quiet, every run writing under a temporary folder."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("NFSTUDY_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from nfstudy.compat import import_torchvision

    import_torchvision()  # before timm, which imports torchvision itself


@pytest.fixture
def results_root(tmp_path, monkeypatch):
    root = tmp_path / "results"
    monkeypatch.setenv("NFSTUDY_RESULTS", str(root))
    return root


@pytest.fixture(scope="session")
def digits():
    from nfstudy.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread (and one in any kernel started meanwhile) for a module of tests on
    tiny models: thread fan-out costs more than it gains there, and on a shared 2-core
    machine two threads per process can run 10x slower than one."""
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env
