"""``make gpu-check``: one call on a CUDA machine, at most 8 minutes on one H100/H200-class GPU.

Runs, in this order, each step a process of its own under its own time limit (``budget_s``):

1. ``environment``: the GPU, driver, torch, CUDA and cuDNN versions (in this process);
2. ``cuda-tests``: ``pytest -m cuda`` (tests/test_cuda.py and any other test marked ``cuda``);
3. ``figure:<fig>`` for every figure: its *paper* profile end to end through its notebook
   (``nfstudy run FIG --profile paper --dataset synthetic``) at the reduced size of
   :data:`REDUCED` (smaller depth, epochs, steps; the code path of the paper profile);
4. ``bench-train``: benchmarks/bench_train.py, a short GPU run.

and writes one summary, ``results/gpu_check/summary.json`` (schema: :data:`SUMMARY_SCHEMA`),
with each step's log beside it in ``logs/``. A step over its budget is stopped (its process
group killed) and marked ``timeout``; once the total budget is spent the remaining steps
are ``skipped``. Exit code 0 when every step is ``ok``.

Steps 2 and 3 run ``--jobs`` at a time (default 4 on a GPU machine of 16 cores, 1 with
``--device cpu``): each figure step is a small run whose time is mostly its kernel's start
and CUDA's initialisation, so one after another they leave the GPU idle. A step marked
``exclusive`` (the benchmark, whose timing must not share the machine) starts only once
every step before it has finished, and nothing starts beside it. Each step keeps its own
budget, process group and log; the summary lists the steps in the plan's order whatever
order they finish in.

    python -m nfstudy.gpu_check                 # on the GPU machine (make gpu-check)
    python -m nfstudy.gpu_check --dry-run       # the plan and an empty summary, anywhere
    python -m nfstudy.gpu_check --device cpu --only environment,figure:fig7   # a CPU smoke run
    python -m nfstudy.gpu_check --jobs 1        # every step alone, in order
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import fnmatch
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["REDUCED", "SUMMARY_SCHEMA", "TOTAL_BUDGET_S", "Step", "default_jobs", "environment", "main", "plan", "run_step", "run_steps"]

TOTAL_BUDGET_S = 480.0  # the limit: 8 minutes on one GPU, everything included
SCHEMA = "nfstudy.gpu_check/1"
STATUSES = ("ok", "failed", "timeout", "skipped", "planned")

# Each figure's paper profile, made small: the paper's model family, schedule logic, probes
# and claims code, on synthetic CIFAR-shaped data, in seconds. Each budget includes ~10 s of
# kernel start and CUDA initialisation.
REDUCED: dict[str, dict[str, Any]] = {
    "agc": {"depth": 8, "epochs": 2, "batch_sizes": (256, 512), "agc_lambdas": (0.01, 0.16), "warmup_epochs": 0.5, "checkpoint_every": 1},
    "fig1": {"depth": 8, "epochs": 4, "plateau_window": 1, "max_extensions": 1, "checkpoint_every": 1},
    "fig2": {"depth": 20, "layer": 10},
    "fig3": {"depth": 20, "n_step_sizes": 8, "batches": (1, 3)},
    "fig4": {"depth": 20, "layers": (2, 8, 15), "n_fractions": 6},
    "fig5": {"depth": 20, "layers": (2, 8, 14), "networks": 2},
    "fig6": {"depth": 20, "networks": 2},
    "fig7": {"size": 200, "samples": 2},
    "spp": {"depth": 20},
}
# Measured on one H200, 4 steps at a time (benchmarks/README.md, "GPU"): agc 55 s, fig1 55 s,
# fig4 36 s, fig3 27 s, spp 25 s, fig6 24 s, the rest 18-20 s; each budget is ~1.5x that.
FIGURE_BUDGET_S: dict[str, float] = {"agc": 85, "fig1": 85, "fig4": 55, "fig3": 40, "spp": 40, "fig6": 40}
DEFAULT_FIGURE_BUDGET_S = 30.0
CUDA_TESTS_BUDGET_S = 75.0
BENCH_BUDGET_S = 60.0
# Short, on the GPU: ResNet-110 at the paper's batch, 40 steps per epoch, 2 interleaved rounds.
BENCH_ARGS = ("--model", "resnet110", "--images", "5120", "--rounds", "2")

SUMMARY_SCHEMA: dict[str, Any] = {
    "schema": f"str: {SCHEMA!r}",
    "ok": "bool: every step ok",
    "dry_run": "bool: the plan only, nothing ran",
    "started": "str: ISO 8601, UTC",
    "seconds": "float: wall time of the whole check",
    "budget_s": "float: the total budget",
    "jobs": "int: steps run at a time (exclusive steps alone)",
    "environment": "dict: gpu, gpu_memory_gib, gpu_count, driver, torch, cuda, cudnn, python, platform, git_commit, device",
    "steps": "list of dict: name, status (ok | failed | timeout | skipped | planned), seconds, budget_s, command, "
    "numbers (the step's key numbers), log (path), error (its last line, or null)",
}


@dataclasses.dataclass
class Step:
    """One step: a command (None: done in this process, alone) with its budget and what to
    read from its output and files afterwards. An ``exclusive`` step runs alone: it starts
    when every step before it has finished, and the next starts when it has (a timing)."""

    name: str
    command: list[str] | None
    budget_s: float
    numbers: Callable[[str], dict[str, Any]] = lambda output: {}
    exclusive: bool = False


def default_jobs(device: str, cpus: int | None = None) -> int:
    """Steps at a time: on a GPU one per 4 cores, at most 4 (16 cores: 4; each step's first
    seconds are a kernel's start and imports on the CPU, and 4 small runs leave an H100/H200
    far from full); on a CPU one, since every step there is compute-bound on the same cores."""
    if not str(device).startswith("cuda"):
        return 1
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(4, cpus // 4))


def _figures(root: Path) -> list[str]:
    """The figure registry (``FIGURES``); ``root`` is kept for callers that name a checkout."""
    from .cli import figures_available

    return list(figures_available())


def _param_args(overrides: dict[str, Any]) -> list[str]:
    return [f"--param={name}={list(value) if isinstance(value, tuple) else value!r}" for name, value in overrides.items()]


def _config_folder(figure: str, root: Path) -> Path:
    """Where the reduced run of ``figure`` lands: not the paper profile's own parameters, so
    its own configuration's folder (nfstudy.identity), as the command's options name it."""
    from .cli import load_figure
    from .runs import config_folder

    takes_data = any(f.name == "dataset" for f in dataclasses.fields(load_figure(figure).Params))
    return config_folder(figure, "paper", {**REDUCED[figure], **({"dataset": "synthetic"} if takes_data else {})}, root)


def _claims_numbers(folder: Path) -> Callable[[str], dict[str, Any]]:
    def read(output: str) -> dict[str, Any]:
        import pandas as pd

        path = folder / "seed=0" / "claims.csv"
        if not path.exists():
            return {}
        claims = pd.read_csv(path)
        meta = json.loads((folder / "seed=0" / "run.json").read_text()) if (folder / "seed=0" / "run.json").exists() else {}
        passed = claims["passed"].astype(str).str.lower() == "true"
        return {
            "claims": int(len(claims)),
            "claims_passed": int(passed.sum()),
            "tables": len(list((folder / "seed=0").glob("*.csv*"))),  # large ones are .csv.gz
            "run_status": meta.get("status"),
        }

    return read


def _pytest_numbers(junit: Path) -> Callable[[str], dict[str, Any]]:
    def read(output: str) -> dict[str, Any]:
        if not junit.exists():
            return {}
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        return counts

    return read


def _bench_numbers(output: str) -> dict[str, Any]:
    """The engine's images/s per round and the engine / baseline ratio (bench_train's lines)."""
    engine = [float(x) for x in re.findall(r"engine\s+([\d.]+)\s*img/s", output)]
    baseline = [float(x) for x in re.findall(r"baseline\s+([\d.]+)\s*img/s", output)]
    ratio = re.findall(r"engine / baseline = ([\d.]+)x", output)
    found: dict[str, Any] = {}
    if engine:
        found["engine_images_per_s"] = max(engine)
    if baseline:
        found["baseline_images_per_s"] = max(baseline)
    if ratio:
        found["engine_over_baseline"] = float(ratio[-1])
    return found


def plan(root: Path, out: Path, device: str = "cuda", python: str | None = None) -> list[Step]:
    """The steps of the check, in order. A figure without reduced parameters is a step that
    fails, so that a new figure cannot slip out of the check unnoticed."""
    python = python or sys.executable
    runs = out / "runs"
    steps = [Step("environment", None, 10.0)]
    junit = out / "logs" / "cuda-tests.xml"
    steps.append(
        Step(
            "cuda-tests",
            [python, "-m", "pytest", "-q", "-m", "cuda", f"--junitxml={junit}", "-p", "no:cacheprovider", str(root / "tests")],
            CUDA_TESTS_BUDGET_S,
            _pytest_numbers(junit),
        )
    )
    for figure in _figures(root):
        budget = FIGURE_BUDGET_S.get(figure, DEFAULT_FIGURE_BUDGET_S)
        if figure not in REDUCED:
            steps.append(
                Step(
                    f"figure:{figure}",
                    [python, "-c", f"raise SystemExit('no reduced parameters for {figure}: add them to nfstudy.gpu_check.REDUCED')"],
                    budget,
                )
            )
            continue
        command = [
            python,
            "-m",
            "nfstudy",
            "run",
            figure,
            "--profile",
            "paper",
            "--seed",
            "0",
            "--device",
            device,
            "--dataset",
            "synthetic",
            "--results",
            str(runs),
            *_param_args(REDUCED[figure]),
        ]
        steps.append(Step(f"figure:{figure}", command, budget, _claims_numbers(_config_folder(figure, runs))))
    bench = [python, str(root / "benchmarks" / "bench_train.py"), "--device", device, *BENCH_ARGS]
    bench += ["--jsonl", str(out / "logs" / "bench-train.jsonl")]  # its records, for tools/bench_tables.py
    steps.append(Step("bench-train", bench, BENCH_BUDGET_S, _bench_numbers, exclusive=True))
    return steps


def environment(device: str = "cuda") -> dict[str, Any]:
    """What ran the check: GPU, driver, torch, CUDA, cuDNN, Python, commit."""
    import torch

    from .runs import _git

    found: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    found["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    found["git_commit"] = _git().get("commit")
    found["gpu_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found["gpu_count"]:
        props = torch.cuda.get_device_properties(0)
        found["gpu"] = props.name
        found["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    else:
        found["gpu"] = found["gpu_memory_gib"] = None
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        found["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        found["driver"] = None
    return found


# The steps' processes now running: each is a session of its own, which a signal to the check
# does not reach, so the check stops them itself when it is stopped (stop_running_steps).
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended meanwhile
        pass


def stop_running_steps(signum: int, frame: Any = None) -> None:
    """A SIGTERM/SIGINT handler: kill every running step's process group, then exit (128 +
    the signal). Without it a check stopped from outside (``timeout``, a scheduler) would
    leave its steps running on the GPU, beside whatever comes next."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for process in running:
        _kill(process)
    print(f"[gpu-check] stopped by signal {signum}: killed {len(running)} running step(s)", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def run_step(step: Step, log: Path, budget_s: float, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Run one step's command under ``budget_s``; its output goes to ``log``. Returns its
    summary row."""
    row: dict[str, Any] = {
        "name": step.name,
        "status": "ok",
        "seconds": 0.0,
        "budget_s": round(budget_s, 1),
        "command": shlex.join(step.command or []),
        "numbers": {},
        "log": str(log),
        "error": None,
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w") as out:
        # A session of its own, so that a step over its budget is stopped with everything it
        # started (a notebook's kernel, a benchmark's workers).
        process = subprocess.Popen(step.command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            code = process.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            _kill(process)
            process.wait()
            code = None
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
    row["seconds"] = round(time.monotonic() - start, 2)
    output = log.read_text(errors="replace")
    if code is None:
        row["status"], row["error"] = "timeout", f"stopped after its budget of {budget_s:.0f} s"
    elif code != 0:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        row["status"], row["error"] = "failed", (lines[-1] if lines else f"exit code {code}")
    try:
        row["numbers"] = step.numbers(output)
    except Exception as error:  # a step's numbers are a report, never a reason to lose the summary
        row["numbers"] = {"unreadable": f"{type(error).__name__}: {error}"}
    return row


def _write(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _row(step: Step, status: str, error: str | None = None) -> dict[str, Any]:
    return {
        "name": step.name,
        "status": status,
        "seconds": 0.0,
        "budget_s": step.budget_s,
        "command": shlex.join(step.command or []),
        "numbers": {},
        "log": None,
        "error": error,
    }


def run_steps(
    steps: Sequence[Step],
    out: Path,
    summary: dict[str, Any],
    *,
    budget_s: float,
    jobs: int = 1,
    device: str = "cuda",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Run ``steps`` into ``summary`` (its ``steps``, ``environment``, ``seconds``, ``ok``),
    ``jobs`` at a time, within ``budget_s`` in all; ``out/summary.json`` is rewritten as each
    step ends, the steps in plan order. A step starts with the smaller of its own budget and
    what is left of the total; with less than 5 s left it is ``skipped``. A step without a
    command (``environment``) and an ``exclusive`` one run alone (see the module docstring)."""
    clock = time.monotonic()
    rows: dict[int, dict[str, Any]] = {}
    lock = threading.Lock()
    env = dict(os.environ if env is None else env)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # steps side by side share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def record(index: int, row: dict[str, Any]) -> None:
        with lock:
            rows[index] = row
            summary["steps"] = [rows[i] for i in sorted(rows)]
            summary["seconds"] = round(time.monotonic() - clock, 1)
            print(
                f"[gpu-check] {row['name']:<16} {row['status']:<8} {row['seconds']:7.1f} s  {row['error'] or row['numbers'] or ''}",
                file=sys.stderr,
                flush=True,
            )
            _write(out / "summary.json", summary)  # after every step: a killed check still leaves its summary

    def execute(index: int, step: Step) -> None:
        left = budget_s - (time.monotonic() - clock)
        budget = min(step.budget_s, left)
        if dry_run:
            row = _row(step, "planned")
        elif left < 5:
            row = _row(step, "skipped", "the total budget was spent")
        elif step.command is None:
            begin = time.monotonic()
            try:
                summary["environment"] = environment(device)
                numbers = {k: summary["environment"][k] for k in ("gpu", "driver", "torch", "cuda")}
                row = {"name": step.name, "status": "ok", "numbers": numbers, "error": None}
            except Exception as error:
                row = {"name": step.name, "status": "failed", "numbers": {}, "error": f"{type(error).__name__}: {error}"}
            row.update(seconds=round(time.monotonic() - begin, 2), budget_s=step.budget_s, command="", log=None)
            if device.startswith("cuda") and not summary["environment"].get("gpu_count"):
                row.update(status="failed", error="no CUDA device visible: run on a GPU machine, or --device cpu for a smoke run")
        else:
            row = run_step(step, out / "logs" / f"{step.name.replace(':', '-')}.log", budget, env=env, cwd=cwd)
        record(index, row)

    jobs = max(1, int(jobs))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        running: set[concurrent.futures.Future] = set()

        def wait(until: str) -> set[concurrent.futures.Future]:
            """Wait for one running step (FIRST_COMPLETED) or all (ALL_COMPLETED); the ones still running."""
            done, still = concurrent.futures.wait(running, return_when=until)
            for future in done:
                future.result()  # a bug in a step's bookkeeping is raised, not lost
            return still

        for index, step in enumerate(steps):
            if step.command is None or step.exclusive or jobs == 1:
                running = wait(concurrent.futures.ALL_COMPLETED)
                execute(index, step)  # alone, in this thread
                continue
            while len(running) >= jobs:
                running = wait(concurrent.futures.FIRST_COMPLETED)
            running.add(pool.submit(execute, index, step))
        wait(concurrent.futures.ALL_COMPLETED)
    summary["steps"] = [rows[i] for i in sorted(rows)]
    summary["ok"] = bool(summary["steps"]) and all(r["status"] == "ok" for r in summary["steps"])
    summary["seconds"] = round(time.monotonic() - clock, 1)
    _write(out / "summary.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfstudy.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/gpu_check", help="where summary.json, logs/ and runs/ go")
    parser.add_argument("--device", default="cuda", help="cuda (default) | cpu: a smoke run of the same steps")
    parser.add_argument("--only", help="comma-separated step names or patterns, e.g. environment,figure:fig7")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="the total budget (default 480)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget (a slower machine, a CPU smoke run)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="steps at a time (default: 4 on a GPU machine of 16+ cores, 1 with --device cpu)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, write the summary with every step 'planned'")
    args = parser.parse_args(argv)

    from .runs import project_root

    root = project_root() or Path.cwd()
    out = Path(args.out).resolve()
    steps = plan(root, out, args.device)
    if args.budget_scale <= 0:
        parser.error(f"--budget-scale must be > 0, got {args.budget_scale}")
    jobs = default_jobs(args.device) if args.jobs is None else args.jobs
    if jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    args.budget_s *= args.budget_scale
    for step in steps:
        step.budget_s *= args.budget_scale
    if args.only:
        patterns = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in patterns if not any(fnmatch.fnmatch(s.name, p) for s in steps)]
        if unknown:
            parser.error(f"--only {', '.join(unknown)} matches no step: choose from {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if any(fnmatch.fnmatch(s.name, p) for p in patterns)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env.setdefault("NFSTUDY_PROGRESS", "0")
    env.setdefault("MPLBACKEND", "Agg")

    started = dt.datetime.now(dt.timezone.utc)
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "ok": False,
        "dry_run": args.dry_run,
        "started": started.isoformat(timespec="seconds"),
        "seconds": 0.0,
        "budget_s": args.budget_s,
        "jobs": jobs,
        "environment": {},
        "steps": [],
    }
    print(f"[gpu-check] {len(steps)} steps, {jobs} at a time, {args.budget_s:.0f} s in all -> {out / 'summary.json'}", file=sys.stderr)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop_running_steps) if main_thread else None
    try:
        run_steps(steps, out, summary, budget_s=args.budget_s, jobs=jobs, device=args.device, env=env, cwd=root, dry_run=args.dry_run)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(f"[gpu-check] {'all ok' if summary['ok'] else 'NOT ok'} in {summary['seconds']:.0f} s: {out / 'summary.json'}", file=sys.stderr)
    return 0 if summary["ok"] or args.dry_run else 1


if __name__ == "__main__":
    sys.exit(main())
