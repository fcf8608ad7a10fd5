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
