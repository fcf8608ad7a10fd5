"""nfstudy.train.pool: independent runs in worker processes give the numbers they give here."""

import os
import sys
import time

import pandas as pd
import pytest
import torch

import nfstudy.train.pool as pool
from nfstudy.clip import GradientClipper
from nfstudy.models import cifar_resnet
from nfstudy.train import WORKERS_ENV, TrainConfig, TrainJob, pool_workers, train_runs


@pytest.fixture(scope="module")
def tiny():
    from nfstudy.data import load_dataset

    d = load_dataset("digits", image_size=8)
    return type(d)(d.name, d.train_images[:256], d.train_labels[:256], d.test_images[:128], d.test_labels[:128], d.classes, d.mean, d.std)


def jobs(tmp_path=None):
    """Runs as fig1 makes them: each model built right after torch.manual_seed; one clipped,
    one whose rate diverges, one at a rate the plateau rule extends; the cheapest listed first."""
    specs = [("bn", 0.05, None, 0.0), ("none", 0.05, 0.08, 1.0), ("none", 50.0, None, 0.5), ("nf", 1e-4, None, 2.0)]
    out = []
    for k, (norm, lr, lam, cost) in enumerate(specs):
        torch.manual_seed(0)
        model = cifar_resnet(8, norm)
        config = TrainConfig(
            epochs=4,
            batch_size=64,
            lr=lr,
            augment=False,
            extend_until_plateau=lr < 1e-3,
            plateau_window=1,
            plateau_tol=0.0,
            max_extensions=1,
        )
        clip = GradientClipper("adaptive", lam) if lam else None
        out_dir = tmp_path / f"run{k}" if tmp_path else None
        out.append(TrainJob(model, config, clip=clip, out_dir=out_dir, desc=f"{norm}@{lr}", cost=cost))
    return out


def tables(results):
    history = pd.concat([r.history.assign(run=k) for k, r in enumerate(results)], ignore_index=True)
    summary = pd.DataFrame([r.summary() for r in results])
    return history, summary


@pytest.mark.slow
def test_runs_in_worker_processes_equal_the_runs_here_bit_for_bit(tiny, tmp_path, monkeypatch):
    """One torch thread here and in the workers (conftest): the same path, the same machine,
    so the tables are equal exactly (the CSVs a figure writes are these frames)."""
    assert torch.get_num_threads() == 1
    here = train_runs(jobs(), tiny, seed=3, device="cpu", workers=1)
    lines = []  # (time, text) of what the pool prints

    class Timed:
        def write(self, text):
            lines.append((time.monotonic(), text))

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Timed())
    pooled = train_runs(jobs(tmp_path), tiny, seed=3, device="cpu", workers=2)
    ended = time.monotonic()
    monkeypatch.undo()
    # Each run's line as it ends: the diverged run's long before the longest run (8 epochs) is done.
    (diverged,) = [t for t, text in lines if "none@50.0: diverged at step" in text]
    assert ended - diverged > 0.5, lines
    assert [r.status for r in pooled] == ["completed", "completed", "diverged", "completed"]  # in the jobs' order
    assert pooled[3].budget == 8  # extended by the plateau rule, in the worker too
    for a, b in zip(tables(here), tables(pooled)):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert a.to_csv(index=False) == b.to_csv(index=False)
    for a, b in zip(here, pooled):  # the trained weights too (a diverged run's are NaN in both)
        for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=name)  # exactly; NaN where it diverged
    # Each worker wrote its run's files where train() would, and they resume as finished runs.
    assert (tmp_path / "run3" / "history.csv").is_file() and (tmp_path / "run3" / "checkpoint.pt").is_file()
    resumed = train_runs(jobs(tmp_path), tiny, seed=3, device="cpu", workers=1)
    assert all(r.resumed_from == r.epochs for r in resumed)
    pd.testing.assert_frame_equal(tables(resumed)[0], tables(pooled)[0], check_exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("figure", ["fig1", "agc"])
def test_a_figures_tables_from_the_pool_equal_its_tables_one_run_after_the_other(figure, monkeypatch):
    """The figure as `make quick` runs it (NFSTUDY_WORKERS unset: 2 single-thread workers on
    2 cores) against the same figure with every run in this process, one after the other, at
    one thread. Each run goes through the same code (train() on the same weights, random state,
    config and seed) on the same machine at the same thread count, so bitwise equality is the
    legitimate bar here; a different thread count or kernel would need a tolerance."""
    import importlib

    assert torch.get_num_threads() == 1
    tiny_run = importlib.import_module(f"test_{figure}").tiny_run  # the figure's tiny config (seconds)
    monkeypatch.setenv(WORKERS_ENV, "1")
    here = tiny_run(seed=1)
    monkeypatch.delenv(WORKERS_ENV)
    monkeypatch.setattr("nfstudy.train.pool._usable_cpus", lambda: 2)  # two workers whatever this machine has
    spawned = []
    real = pool._train_in_pool
    monkeypatch.setattr(pool, "_train_in_pool", lambda *a: spawned.append(a[5]) or real(*a))
    pooled = tiny_run(seed=1)
    assert spawned == [2], "the figure did not train in a pool of two workers"
    assert set(here) == set(pooled)
    for name in here:
        pd.testing.assert_frame_equal(here[name], pooled[name], check_exact=True, obj=f"{figure} {name}")
        assert here[name].to_csv(index=False) == pooled[name].to_csv(index=False)


@pytest.mark.slow
def test_a_run_that_fails_in_a_worker_fails_the_pool_naming_the_run(tiny, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = jobs()
    bad[1].out_dir = blocker / "run"  # a folder under a file: train() cannot write there
    with pytest.raises(OSError) as raised:  # the run's own exception, not a wrapper
        train_runs(bad, tiny, seed=0, device="cpu", workers=2)
    assert "[pool] raised in the worker process training none@0.05" in raised.value.__notes__


class DieInWorker:
    """A clipper that ends the worker process the way the kernel's OOM killer would."""

    def __call__(self, model):
        os.kill(os.getpid(), 9)


@pytest.mark.slow
def test_a_worker_that_dies_fails_the_pool_with_the_way_out(tiny):
    bad = jobs()
    bad[0].clip = DieInWorker()  # pickled by reference: the worker imports this module (spawn passes sys.path)
    with pytest.raises(RuntimeError, match=rf"worker process ended abruptly .*bn@0.05.* Rerun with {WORKERS_ENV}=1"):
        train_runs(bad, tiny, seed=0, device="cpu", workers=2)


def test_workers_fit_the_cores_to_the_threads(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.setattr("nfstudy.train.pool._usable_cpus", lambda: 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert pool_workers("cpu", 8) == 2  # two cores, one thread each
        assert pool_workers("cpu", 1) == 1  # never more than the runs
        torch.set_num_threads(2)
        assert pool_workers("cpu", 8) == 1  # the threads already fill the cores: train here, as before
        assert pool_workers("cuda", 8) == 1
        monkeypatch.setenv(WORKERS_ENV, "3")
        assert pool_workers("cpu", 8) == 3
        for bad in ("0", "two", "-1"):
            monkeypatch.setenv(WORKERS_ENV, bad)
            with pytest.raises(ValueError, match=f"{WORKERS_ENV} must be a whole number >= 1"):
                pool_workers("cpu", 8)
    finally:
        torch.set_num_threads(threads)


# A script that starts a pool of two long runs and waits in it.
LONG_POOL = """
import torch
from nfstudy.data import load_dataset
from nfstudy.models import cifar_resnet
from nfstudy.train import TrainConfig, TrainJob, train_runs

if __name__ == "__main__":
    torch.set_num_threads(1)
    data = load_dataset("digits", image_size=8)
    jobs = [TrainJob(cifar_resnet(8, "bn"), TrainConfig(epochs=10_000, batch_size=64, augment=False)) for _ in range(2)]
    train_runs(jobs, data, device="cpu", workers=2)
"""


@pytest.mark.slow
def test_workers_end_when_the_process_that_started_them_is_killed(tmp_path):
    """A killed figure (SIGKILL, out of memory) leaves no worker training on, writing checkpoints."""
    import subprocess

    import psutil

    script = tmp_path / "long_pool.py"
    script.write_text(LONG_POOL)
    parent = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "NFSTUDY_PROGRESS": "0"})
    try:
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and len(workers) < 2:  # the pool's two workers (spawn also starts a resource tracker)
            time.sleep(0.5)
            workers = [p for p in psutil.Process(parent.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, "the pool did not start two workers"
        time.sleep(1.0)
        parent.kill()
        parent.wait()
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers still running after their parent was killed: {[p.pid for p in alive]}"
    finally:
        parent.kill()
