"""Shared fixtures: offline, CPU, quiet, every run writing under a temporary folder."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("NFSTUDY_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
# One OpenMP thread, here and in every kernel or process the tests start: the models under
# test are tiny, and on a shared 2-core machine two threads spin-wait at every parallel
# region, running 4-15x slower than one (DEVELOPERS.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Each figure's training runs one after the other in its own process: a pool of worker
# processes (nfstudy.train.pool) would start two per run() here; tests/test_pool.py tests it.
os.environ.setdefault("NFSTUDY_WORKERS", "1")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from nfstudy.compat import import_torchvision

    import_torchvision()  # before timm, which imports torchvision itself

import torch  # noqa: E402

from nfstudy.cli import figure_package  # noqa: E402

torch.set_num_threads(1)
# `nfstudy_experiments` is this checkout's experiments/ folder, whatever another checkout's
# editable install maps the name to (a worktree run with PYTHONPATH); the notebooks' kernels
# bind it the same way (nfstudy.cli.load_figure).
figure_package()


@pytest.fixture
def results_root(tmp_path, monkeypatch):
    root = tmp_path / "results"
    monkeypatch.setenv("NFSTUDY_RESULTS", str(root))
    return root


@pytest.fixture(scope="session")
def digits():
    from nfstudy.data import load_dataset

    return load_dataset("digits")


@pytest.fixture
def config_dir(results_root):
    """The folder of the configuration that ``python -m nfstudy ARGV`` (``run``, ``aggregate``)
    writes to: the profile's own, or ``<profile>+<what differs>-<hash>`` for a run with other
    parameters (nfstudy.identity), under ``--results`` or the test's results root."""

    def folder(argv):
        from nfstudy import cli, runs

        args = cli._parser().parse_args(cli._p_as_param(list(argv)))
        return runs.config_folder(args.figure, args.profile, cli._overrides(args) or None, args.results or results_root)

    return folder
