"""Where `make quick`'s time goes: per figure, and within the training figures per run.

Not a `make bench` benchmark (it takes as long as `make quick`); the measurements of
benchmarks/README.md ("make quick") come from it.

    python benchmarks/time_quick.py figures [--figures fig1 agc ...] [--threads 1] [--log FILE]
        each figure's quick seed 0, one after the other, as `make quick` runs it
        (`python -m nfstudy run FIG --profile quick --seed 0 --no-aggregate`), into a scratch
        results folder; per figure the wall seconds and the CPU seconds (user + sys) of the
        command and everything it waited for (its notebook kernel and any worker processes).
        --paired: each figure twice, at torch's default threads and at 1 thread, one right
        after the other (alternating which goes first).
    python benchmarks/time_quick.py runs fig1|agc [--out DIR]
        the figure's `run()` of the quick profile in this process (its runs one after the
        other, `NFSTUDY_WORKERS=1`), each training run's wall and CPU seconds and epochs;
        with --out its tables as CSV (to compare against another way of running them).

CPU seconds do not count the time a process waited for a core, so on a machine shared
with other jobs they measure the work; wall seconds measure the wait too. The load average
is printed with every line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALL = ["fig1", "agc", "fig3", "fig6", "fig4", "fig5", "spp", "fig2", "fig7"]


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def time_figures(figures: list[str], threads: int | None, results: Path, log: Path | None, extra: list[str]) -> list[dict]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    else:
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    env["NFSTUDY_PROGRESS"] = "0"
    rows = []
    for figure in figures:
        cmd = [
            sys.executable,
            "-m",
            "nfstudy",
            "run",
            figure,
            "--profile",
            "quick",
            "--seed",
            "0",
            "--no-aggregate",
            "--results",
            str(results),
        ]
        load = _load()
        wall = time.perf_counter()
        proc = subprocess.Popen(cmd + extra, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - wall
        stderr = proc.stderr.read()
        code = os.waitstatus_to_exitcode(status)
        row = {
            "figure": figure,
            "threads": threads or "default",
            "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "exit": code,
            "load_before": load,
            "load_after": _load(),
            "workers": env.get("NFSTUDY_WORKERS", ""),
        }
        if code:
            row["stderr_tail"] = stderr[-2000:]
        rows.append(row)
        print(json.dumps(row), flush=True)
        if log:
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def time_runs(figure: str, out: Path | None) -> None:
    import torch

    from nfstudy.cli import load_figure

    os.environ["NFSTUDY_WORKERS"] = "1"
    os.environ["NFSTUDY_PROGRESS"] = "0"
    module = load_figure(figure)
    params = module.PROFILES["quick"]
    from nfstudy.train import train as real_train

    rows = []

    def timed_train(model, data, config, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = real_train(model, data, config, **kwargs)
        row = {
            "run": kwargs.get("desc"),
            "status": result.status,
            "epochs": result.epochs,
            "steps": result.steps,
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(time.process_time() - cpu, 1),
            "load": _load(),
        }
        row["cpu_s_per_epoch"] = round(row["cpu_s"] / max(result.epochs, 1), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        return result

    import nfstudy.train.pool as pool

    module.train = timed_train  # before the pool: the figure called train itself
    pool.train = timed_train  # with the pool (NFSTUDY_WORKERS=1: each run here, one after the other)
    print(f"{figure}: torch threads {torch.get_num_threads()}, load {_load()}", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as checkpoints:
        tables = module.run(params, seed=0, device="cpu", checkpoint_dir=checkpoints)
    total = {
        "figure": figure,
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "load": _load(),
    }
    print(json.dumps(total), flush=True)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for name, df in tables.items():
            df.to_csv(out / f"{name}.csv", index=False)
        (out / "timing.json").write_text(json.dumps({"runs": rows, "total": total}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("figures")
    f.add_argument("--figures", nargs="+", default=ALL)
    f.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS (default: unset, torch's default)")
    f.add_argument("--results", type=Path, default=None, help="results root (default: a scratch folder)")
    f.add_argument("--log", type=Path, default=None)
    f.add_argument("--paired", action="store_true", help="each figure at torch's default threads and at 1 thread, side by side")
    f.add_argument("extra", nargs="*", help="after --: more arguments for `nfstudy run`")
    r = sub.add_parser("runs")
    r.add_argument("figure", choices=["fig1", "agc"])
    r.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.what == "figures":
        with tempfile.TemporaryDirectory() as scratch:
            root = args.results or Path(scratch)
            if not args.paired:
                time_figures(args.figures, args.threads, root, args.log, args.extra)
                return
            for k, figure in enumerate(args.figures):  # torch's default threads and 1 thread, alternating which goes first
                for threads in (None, 1) if k % 2 == 0 else (1, None):
                    time_figures([figure], threads, root / f"threads{threads or 'default'}", args.log, args.extra)
    else:
        time_runs(args.figure, args.out)


if __name__ == "__main__":
    main()
