"""Sweeps of one figure over seeds: one job per seed, on a SLURM cluster or as local processes.

    python -m nfstudy run fig1 --seeds 0-4 --launcher slurm --partition gpu --gpus-per-job 1
    python -m nfstudy run fig1 --seeds 0-4 --launcher local   # one per visible GPU, then aggregate

Each job is the command line ``python -m nfstudy run FIG --seed S --no-aggregate`` with the
sweep's other options: the same per-seed folder, lock and attempt staging as a seed run by
hand, so ``aggregate`` and ``report`` combine the seeds as always. Jobs go through submitit
(https://github.com/facebookincubator/submitit), the standard Python client for SLURM; its
``LocalExecutor`` runs the local ones, each in its own process with the GPU it was given as
``CUDA_VISIBLE_DEVICES``. submitit is imported only here, when a launcher is asked for:
``pip install submitit`` (the ``cluster`` extra).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["LAUNCHERS", "Slot", "launch", "local_slots", "parse_seeds", "run_local", "seed_argv", "submit_slurm"]

LAUNCHERS = ("local", "slurm")
# Options that only mean something to a launcher; `run` without --launcher refuses them.
LAUNCHER_OPTIONS = ("partition", "account", "gpus_per_job", "timeout_min", "jobs")
# A local job has no queue's time limit; submitit's LocalExecutor kills a job after
# timeout_min (default 2 minutes), so a local sweep sets a week unless told otherwise.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
SLURM_TIMEOUT_MIN = 24 * 60
POLL_S = 1.0

_SEED_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(specs: str | Iterable[str]) -> list[int]:
    """Seeds from ``0-9``, ``0,2,5``, ``0-3,7`` or several such words (``0 1 2``), in the
    order given, each once. Anything else is a ValueError naming the accepted forms."""
    words = [specs] if isinstance(specs, str) else list(specs)
    seeds: list[int] = []
    for word in words:
        for item in str(word).split(","):
            match = _SEED_ITEM.match(item.strip())
            if not match:
                raise ValueError(f"--seeds takes seeds >= 0 as 0-9, 0,2,5 or a mix such as 0-3,7; got {str(word)!r}")
            first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
            if last < first:
                raise ValueError(f"--seeds range {item.strip()!r} runs backwards: write it low-high, e.g. {last}-{first}")
            seeds.extend(s for s in range(first, last + 1) if s not in seeds)
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 0-4")
    return seeds


def forwarded_options(args) -> list[str]:
    """The options of ``nfstudy run`` that every job repeats (all but the seeds, the GPUs and
    the launcher's own); a relative --results becomes absolute so a job's folder is the
    same wherever it starts."""
    out = ["--profile", args.profile, "--device", args.device]
    if args.dataset:
        out += ["--dataset", args.dataset]
    for name, value in args.p or []:
        out += ["-p", name, value]
    out += [f"--param={item}" for item in args.param or []]
    if args.results:
        out += ["--results", str(Path(args.results).resolve())]
    return out


def seed_argv(figure: str, seed: int, options: Sequence[str] = (), python: str | None = None) -> list[str]:
    """The command line of one job: exactly what a user runs for one seed, minus the
    cross-seed step, which the sweep does once at the end."""
    return [python or sys.executable, "-m", "nfstudy", "run", figure, *options, "--seed", str(seed), "--no-aggregate"]


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where a local job runs: a GPU index (as the launching process numbers it in
    CUDA_VISIBLE_DEVICES terms) or the CPU with ``threads`` OpenMP threads."""

    gpu: int | None = None
    threads: int | None = None


def visible_gpus(gpus: str | None = None) -> list[int]:
    """The GPUs a local sweep spreads over: --gpus if given, else CUDA_VISIBLE_DEVICES,
    else every GPU torch sees."""
    text = gpus if gpus is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is not None:
        ids = [g.strip() for g in text.split(",") if g.strip()]
        if not all(g.isdigit() for g in ids):
            raise ValueError(f"GPUs are listed as indices such as 0,1,2,3, got {text!r} (UUIDs are not supported here)")
        return [int(g) for g in ids]
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def local_slots(n_jobs: int, device: str = "auto", gpus: str | None = None, jobs: int | None = None, cpus: int | None = None) -> list[Slot]:
    """One slot per visible GPU (a job per GPU at a time), or, on the CPU, ``jobs``
    processes (default: half the cores, at least one), never more than there are jobs;
    each CPU process gets its share of the cores as OpenMP threads."""
    cpus = cpus or os.cpu_count() or 1
    found = [] if device == "cpu" else visible_gpus(gpus)
    if found:
        slots = [Slot(gpu=g) for g in found]
        return slots[: jobs or len(slots)][:n_jobs]
    count = max(1, min(n_jobs, jobs or max(1, cpus // 2)))
    return [Slot(threads=max(1, cpus // count))] * count


class SubmititMissing(ImportError, ValueError):
    """submitit is not installed: a fixable setup error (the CLI prints its one line)."""


def _submitit():
    try:
        import submitit
    except ImportError:
        raise SubmititMissing("--launcher needs submitit: pip install submitit (or pip install -e '.[cluster]')") from None
    return submitit


def _local_executor(submitit, folder: Path, slot: Slot, timeout_min: float):
    executor = submitit.LocalExecutor(folder=folder)
    setup = []
    if slot.threads and "OMP_NUM_THREADS" not in os.environ:
        setup.append(f"export OMP_NUM_THREADS={slot.threads}")
    executor.update_parameters(
        timeout_min=timeout_min,
        gpus_per_node=0 if slot.gpu is None else 1,
        visible_gpus=() if slot.gpu is None else (slot.gpu,),
        setup=setup,
    )
    return executor


def run_local(
    jobs: Sequence[Sequence[str]],
    slots: Sequence[Slot],
    folder: str | os.PathLike,
    *,
    timeout_min: float = LOCAL_TIMEOUT_MIN,
    cwd: str | None = None,
    names: Sequence[str] | None = None,
    log=print,
) -> list[tuple[int, str]]:
    """Run ``jobs`` (argv lists) through submitit's LocalExecutor, at most one per slot at a
    time, like ``make -j``; returns (index, error) for each job that failed."""
    submitit = _submitit()
    folder, cwd = Path(folder), cwd or os.getcwd()
    names = list(names or [" ".join(j) for j in jobs])
    pending, running, free, failed = list(range(len(jobs))), {}, list(slots), []
    try:
        while pending or running:
            while pending and free:
                slot, index = free.pop(0), pending.pop(0)
                job = _local_executor(submitit, folder, slot, timeout_min).submit(
                    submitit.helpers.CommandFunction(list(jobs[index]), verbose=False, cwd=cwd)
                )
                where = f"cuda device {slot.gpu}" if slot.gpu is not None else f"CPU ({slot.threads} threads)"
                log(f"[nfstudy] {names[index]}: started on {where}, job {job.job_id}, logs {job.paths.stderr}")
                running[index] = (job, slot)
            time.sleep(POLL_S)
            for index, (job, slot) in list(running.items()):
                if not job.done():
                    continue
                del running[index]
                free.append(slot)
                error = job.exception()
                if error is None:
                    log(f"[nfstudy] {names[index]}: done")
                else:
                    failed.append((index, str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__))
                    log(f"[nfstudy] {names[index]}: FAILED ({failed[-1][1]}); its log: {job.paths.stderr}")
    except KeyboardInterrupt:
        for job, _ in running.values():  # each `nfstudy run` keeps its attempt, as after a Ctrl-C by hand
            job.cancel(check=False)
        raise
    return failed


def submit_slurm(
    jobs: Sequence[Sequence[str]],
    folder: str | os.PathLike,
    *,
    partition: str | None = None,
    account: str | None = None,
    gpus_per_job: int = 1,
    timeout_min: float = SLURM_TIMEOUT_MIN,
    job_name: str = "nfstudy",
    cwd: str | None = None,
) -> list[str]:
    """Submit ``jobs`` as one SLURM job array (one task per job); returns the job ids
    without waiting. Each job runs in ``cwd`` (default: here) on a shared filesystem."""
    submitit = _submitit()
    executor = submitit.SlurmExecutor(folder=folder)
    parameters = {"time": int(timeout_min), "gpus_per_node": gpus_per_job, "job_name": job_name}
    parameters.update({k: v for k, v in {"partition": partition, "account": account}.items() if v})
    executor.update_parameters(**parameters)
    with executor.batch():
        submitted = [executor.submit(submitit.helpers.CommandFunction(list(job), cwd=cwd or os.getcwd())) for job in jobs]
    return [job.job_id for job in submitted]


def check_options(args) -> None:
    """The launcher's options, checked before anything is submitted or run."""
    launcher = getattr(args, "launcher", None)
    given = [name for name in LAUNCHER_OPTIONS if getattr(args, name, None) is not None]
    if launcher is None:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(
                f"{flags} {'applies' if len(given) == 1 else 'apply'} only to a sweep: add --launcher local or --launcher slurm"
            )
        return
    from .params import check_choice

    check_choice("launcher", launcher, LAUNCHERS)
    if launcher == "local" and any(getattr(args, n, None) is not None for n in ("partition", "account", "gpus_per_job")):
        raise ValueError("--partition, --account and --gpus-per-job are SLURM's: use them with --launcher slurm")
    if launcher == "slurm" and args.jobs is not None:
        raise ValueError("--jobs bounds local processes; SLURM schedules its own jobs: drop --jobs")
    for name in ("gpus_per_job", "jobs"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "gpus_per_job" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'gpus_per_job' else '>= 1'}, got {value}")
    if args.timeout_min is not None and args.timeout_min <= 0:
        raise ValueError(f"--timeout-min must be > 0 minutes, got {args.timeout_min}")
    if launcher == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise ValueError(
            "--launcher slurm needs SLURM's sbatch and srun on PATH: run this on the cluster's login node, or use --launcher local"
        )


def _preflight(args, launcher: str) -> None:
    """What ``nfstudy run`` checks before a seed's folder is touched, once for the sweep:
    the figure, its parameters, the data; the device too when the jobs run here."""
    from .cli import RUN_PARAMETERS, _check_data, _experiment, _overrides
    from .params import resolve
    from .runtime import resolve_device

    module = _experiment(args.figure)
    overrides = _overrides(args)
    reserved = sorted(set(overrides) & set(RUN_PARAMETERS))
    if reserved:
        raise ValueError(f"set {', '.join(reserved)} with its own option (--profile, --seed, --device), not as a parameter")
    params = resolve(module.PROFILES, args.profile, overrides)
    if launcher == "local":
        resolve_device(args.device)  # a login node has no GPU: SLURM jobs check theirs
    _check_data(params)  # CIFAR-10 downloaded once, here, not by every job at once


def _aggregate_command(args) -> str:
    """The command that aggregates the sweep's configuration (its -p and --dataset options too)."""
    options = [*(["--dataset", args.dataset] if args.dataset else []), *(x for name, value in args.p or [] for x in ("-p", name, value))]
    options += [f"--param={item}" for item in args.param or []]
    options += ["--results", str(Path(args.results).resolve())] if args.results else []
    return shlex.join(["python", "-m", "nfstudy", "aggregate", args.figure, "--profile", args.profile, *options])


def launch(args) -> int:
    """``nfstudy run FIG --seeds ... --launcher local|slurm``: the sweep, from parsed options."""
    check_options(args)
    seeds = parse_seeds(args.seeds if args.seeds else [str(args.seed)])
    launcher = args.launcher
    if args.gpus and launcher == "slurm":
        raise ValueError("--gpus picks local GPUs; on SLURM use --gpus-per-job")
    _submitit()  # a missing submitit is one line before anything starts
    _preflight(args, launcher)
    options = forwarded_options(args)
    jobs = [seed_argv(args.figure, seed, options) for seed in seeds]
    names = [f"{args.figure} seed {seed}" for seed in seeds]
    folder = Path(args.results or os.environ.get("NFSTUDY_RESULTS") or "results").resolve() / args.figure / args.profile / ".jobs"
    if launcher == "slurm":
        ids = submit_slurm(
            jobs,
            folder,
            partition=args.partition,
            account=args.account,
            gpus_per_job=1 if args.gpus_per_job is None else args.gpus_per_job,
            timeout_min=args.timeout_min or SLURM_TIMEOUT_MIN,
            job_name=f"nfstudy-{args.figure}",
        )
        for name, job_id in zip(names, ids):
            print(f"{name}: SLURM job {job_id}")
        print(
            f"[nfstudy] {len(ids)} jobs submitted (logs in {folder}); follow them with `squeue --me`; "
            f"when they are done: {_aggregate_command(args)}",
            file=sys.stderr,
        )
        return 0
    slots = local_slots(len(jobs), args.device, args.gpus, args.jobs)
    print(f"[nfstudy] {len(jobs)} jobs, {len(slots)} at a time (logs in {folder})", file=sys.stderr)
    failed = run_local(
        jobs, slots, folder, timeout_min=args.timeout_min or LOCAL_TIMEOUT_MIN, names=names, log=lambda line: print(line, file=sys.stderr)
    )
    if failed:
        listed = ", ".join(names[i] for i, _ in failed)
        print(
            f"[nfstudy] {len(failed)} of {len(jobs)} jobs failed ({listed}); the completed seeds are kept: "
            f"rerun the failed ones, then {_aggregate_command(args)}",
            file=sys.stderr,
        )
        return 1
    from .cli import _overrides, aggregate

    aggregate(args.figure, args.profile, args.results, _overrides(args) or None)
    return 0
