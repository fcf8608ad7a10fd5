"""Independent training runs side by side: :func:`train_runs`, the one entry point figures
train through, fused on a GPU, in a pool of worker processes on a CPU.

**Fused** (``fuse="on"``, or ``"auto"`` on CUDA): the jobs of one ``group`` (same
architecture, same batches) train as one stacked network (:func:`~nfstudy.train.train_fused`),
group after group in this process; a group of one trains through :func:`~nfstudy.train.train`.
Otherwise every job is its own run, as below.

A figure's runs (fig1's series, the AGC ablation's batch sizes and thresholds) are
independent: each starts from its own initial weights and draws its own batches from the
run's seed. On a CPU, torch's threads speed a small network up little and, on a shared
machine, slow it down (every parallel region waits for its slowest thread), so the cores
are better used by single-thread processes, one run each (benchmarks/README.md, "make
quick"). :func:`train_runs` trains a list of :class:`TrainJob` in
``workers`` processes and returns the :class:`~nfstudy.train.TrainResult` of each, in
order; with one worker it calls :func:`~nfstudy.train.train` for each in this process,
one after the other.

**The same numbers.** A run trains in a worker exactly as it would here: the same model
(its weights serialised, not rebuilt), the same global CPU random state as after it was
built, the same :class:`~nfstudy.train.TrainConfig` and seed, and as many torch threads as
this process has. Its tables are therefore equal, bit for bit, to the run trained in this
process at that thread count (tests/test_pool.py). Only the number of threads changes
float results (summation order): :func:`pool_workers` keeps it and fits the workers to
the cores instead.

**How many workers** (:func:`pool_workers`): ``NFSTUDY_WORKERS`` if set (1: no pool);
else, on a CPU, the usable cores divided by torch's threads (2 cores at 1 thread: 2
workers; at torch's default of one thread per core: 1, training here as before), at most
one per run; on a GPU 1 (its runs are fused or share the device).

Each worker's progress bar is off; the pool prints one line per finished run (status,
epochs, wall and CPU seconds). A run that raises stops the pool and raises its exception
here, with a note naming the run; a worker that dies (killed, out of memory) stops it with a
RuntimeError that names the runs in flight and the way out (``NFSTUDY_WORKERS=1``). Workers
end with the process that started them (they watch their parent), so an interrupted
figure leaves no run writing into its checkpoints.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import ImageDataset
from ..runtime import progress, resolve_device
from .config import TrainConfig
from .fused import train_fused
from .loop import ClipFn, TrainResult, train

__all__ = ["FUSE_CHOICES", "WORKERS_ENV", "TrainJob", "pool_workers", "train_runs", "use_fused"]

WORKERS_ENV = "NFSTUDY_WORKERS"
FUSE_CHOICES = ("auto", "on", "off")  # auto: fused on CUDA only


@dataclass
class TrainJob:
    """One call of :func:`~nfstudy.train.train`: ``train(model, data, config, clip=clip,
    out_dir=out_dir, desc=desc)``. ``rng_state``: the global CPU random state the run starts
    with (default: the state when the job is made, i.e. right after its model was built).
    ``cost``: the expected relative cost; the pool starts the costliest runs first (the
    order of the results is the order of the jobs). ``group``: jobs with the same group
    (same architecture, same batch settings) may train fused as one stacked network."""

    model: nn.Module
    config: TrainConfig
    clip: ClipFn | None = None
    out_dir: str | os.PathLike | None = None
    desc: str | None = None
    cost: float = 0.0
    group: str | None = None
    rng_state: torch.Tensor = field(default_factory=torch.get_rng_state)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def pool_workers(device: str | torch.device, runs: int) -> int:
    """The worker processes for ``runs`` runs on ``device`` (see the module docstring)."""
    text = os.environ.get(WORKERS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{WORKERS_ENV} must be a whole number >= 1 (1: every run in this process, one after the other), got {text!r}")
        wanted = int(text)
    elif torch.device(device).type != "cpu":
        wanted = 1
    else:
        wanted = _usable_cpus() // torch.get_num_threads()
    return max(1, min(wanted, runs))


def use_fused(fuse: str, device: str | torch.device) -> bool:
    """Whether ``fuse`` ("auto" | "on" | "off") trains fused on ``device``: "auto" fuses on CUDA only."""
    if fuse not in FUSE_CHOICES:
        raise ValueError(f"fuse must be one of {', '.join(FUSE_CHOICES)}, got {fuse!r}")
    return fuse == "on" or (fuse == "auto" and torch.device(device).type == "cuda")


def train_runs(
    jobs: Sequence[TrainJob],
    data: ImageDataset,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    fuse: str = "auto",
    workers: int | None = None,
    desc: str | None = None,
) -> list[TrainResult]:
    """``train(job.model, data, job.config, seed=seed, device=device, clip=job.clip,
    out_dir=job.out_dir, desc=job.desc)`` for every job: fused by ``group`` when
    :func:`use_fused`, else in ``workers`` processes (default :func:`pool_workers`); the
    results in the order of ``jobs``."""
    jobs = list(jobs)
    device = resolve_device(device)
    if use_fused(fuse, device):
        return _train_fused_groups(jobs, data, seed, device, desc)
    workers = pool_workers(device, len(jobs)) if workers is None else max(1, min(workers, len(jobs)))
    if workers <= 1:  # here, one after the other, in the given order
        results = []
        for job in jobs:
            torch.set_rng_state(job.rng_state)
            results.append(train(job.model, data, job.config, seed=seed, device=device, clip=job.clip, out_dir=job.out_dir, desc=job.desc))
        return results
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)  # costliest first; equal costs keep their order
    return _train_in_pool(jobs, order, data, seed, device, workers, desc)


def _train_fused_groups(jobs, data, seed, device, desc) -> list[TrainResult]:
    """Each group's jobs as one stacked network, group after group (in order of first appearance)."""
    results: dict[int, TrainResult] = {}
    keys = [(job.group,) if job.group is not None else i for i, job in enumerate(jobs)]  # no group: a run alone
    for key in dict.fromkeys(keys):
        indices = [i for i, k in enumerate(keys) if k == key]
        chosen = [jobs[i] for i in indices]
        if len(chosen) == 1:
            job = chosen[0]
            trained = [train(job.model, data, job.config, seed=seed, device=device, clip=job.clip, out_dir=job.out_dir, desc=job.desc)]
        else:
            trained = train_fused(
                [j.model for j in chosen],
                data,
                [j.config for j in chosen],
                seeds=seed,
                device=device,
                clips=[j.clip for j in chosen],
                out_dirs=[j.out_dir for j in chosen],
                desc=f"{desc or 'runs'} {chosen[0].group} x{len(chosen)}",
            )
        results.update(zip(indices, trained))
    return [results[i] for i in range(len(jobs))]


# -------------------------------------------------------------------- the pool


def _dumps(obj: Any) -> bytes:
    """Bytes, not shared memory: a worker's tensors are its own, allocated as here."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)


_WORKER: dict[str, Any] = {}


def _watch_parent(parent: int) -> None:
    """End this worker when the process that started it is gone (killed, interrupted)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _init_worker(threads: int, data: bytes, parent: int) -> None:
    os.environ["NFSTUDY_PROGRESS"] = "0"  # a worker's bar would go to its parent's log, not the screen
    torch.set_num_threads(threads)
    _WORKER["data"] = _loads(data)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _work(job: bytes, seed: int, device: str) -> tuple[bytes, float, float, int]:
    job = _loads(job)
    wall, cpu = time.perf_counter(), time.process_time()
    torch.set_rng_state(job.rng_state)
    result = train(job.model, _WORKER["data"], job.config, seed=seed, device=device, clip=job.clip, out_dir=job.out_dir, desc=job.desc)
    return _dumps(result), time.perf_counter() - wall, time.process_time() - cpu, torch.get_num_threads()


def _line(job: TrainJob, result: TrainResult, wall: float, cpu: float) -> str:
    what = f"diverged at step {result.diverged_step}" if result.diverged else result.status
    return f"[pool] {job.desc or 'run'}: {what}, {result.epochs} epochs, {wall:.0f} s ({cpu:.0f} CPU s)"


def _train_in_pool(jobs, order, data, seed, device, workers, desc) -> list[TrainResult]:
    import multiprocessing

    threads = torch.get_num_threads()
    device = str(device)
    context = multiprocessing.get_context("spawn")  # fork would copy a kernel's threads and locks
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads, _dumps(data), os.getpid()))
    title = f"{desc or 'runs'}: {len(jobs)} runs in {workers} processes ({threads} thread{'s' if threads > 1 else ''} each)"
    bar = progress(total=len(jobs), desc=title, unit="run")
    if bar.disable:
        print(f"[pool] {title}", file=sys.stderr, flush=True)
    results: dict[int, TrainResult] = {}
    try:
        futures = {executor.submit(_work, _dumps(jobs[i]), seed, device): i for i in order}
        for future in as_completed(futures):  # each run as it ends
            i = futures[future]
            try:
                payload, wall, cpu, used = future.result()  # a run's exception is raised here
            except BrokenProcessPool as error:  # the worker itself died: killed, out of memory, a crash in a kernel
                unfinished = [jobs[k].desc or f"run {k}" for k in order if k not in results]
                raise RuntimeError(
                    f"[pool] a worker process ended abruptly (killed, out of memory, or a crash); runs not finished: "
                    f"{', '.join(unfinished)}. Rerun with {WORKERS_ENV}=1 to train the runs one after the other in this "
                    f"process (the finished runs resume from their checkpoints when the figure has a checkpoint folder)"
                ) from error
            except Exception as error:  # the run raised: its own exception, naming the run
                error.add_note(f"[pool] raised in the worker process training {jobs[i].desc or f'run {i}'}")
                raise
            if used != threads:
                raise RuntimeError(f"a worker trained with {used} torch threads instead of {threads}")
            results[i] = _loads(payload)
            bar.write(_line(jobs[i], results[i], wall, cpu), file=sys.stderr)
            bar.update(1)
    except BaseException:
        _stop(executor)
        raise
    finally:
        bar.close()
    executor.shutdown()
    return [results[i] for i in range(len(jobs))]


def _stop(executor: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (a run in flight keeps its last checkpoint)."""
    processes = list(getattr(executor, "_processes", {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=10)
