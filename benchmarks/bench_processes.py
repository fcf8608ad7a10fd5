"""Two single-thread processes against one two-thread process, on the quick profiles' training.

The same work, two training runs of a quick profile's network, done two ways on one
machine, interleaved round by round so that a changing load hits both alike:

* **1 x 2**: one process with 2 torch threads trains the two runs one after the other
  (what ``make quick`` did before: one figure at a time, torch's default threads);
* **2 x 1**: two processes with 1 torch thread each train one run each, at the same time
  (what ``make quick`` does now: figures and runs in single-thread processes).

Each process times its own training (process start and imports excluded) and reports
wall and CPU (user + sys) seconds. Per round: the wall time until both runs are done and
the CPU seconds spent; the ratio is 1x2 / 2x1 (above 1: the single-thread processes win).
Run it with nothing else on the machine for the idle numbers; on a shared machine say how
loaded it was (the load average is printed).

    python benchmarks/bench_processes.py [--rounds 3] [--epochs 2] [--workload fig1-bn fig1-nf agc-b32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# name -> (depth, norm, batch size, lr, agc lambda or None): the quick profiles' shapes
WORKLOADS = {
    "fig1-bn": (44, "bn", 128, 0.1, None),  # fig1 quick: ResNet-44 on 8x8 digits, batch 128
    "fig1-nf": (44, "nf", 128, 0.1, None),
    "fig1-none+agc": (44, "none", 128, 0.1, 0.08),
    "agc-b32": (8, "nf", 32, 0.1, 0.01),  # agc quick: ResNet-8, batch 32 (its most steps)
}


def _child(workload: str, epochs: int, runs: int) -> None:
    """In a child process: train ``runs`` runs of ``workload`` one after the other; print
    one JSON line with the training's wall and CPU seconds."""
    import torch

    from nfstudy.clip import GradientClipper
    from nfstudy.data import load_dataset
    from nfstudy.models import build_model
    from nfstudy.train import TrainConfig, train

    os.environ["NFSTUDY_PROGRESS"] = "0"
    depth, norm, batch, lr, lam = WORKLOADS[workload]
    data = load_dataset("digits", image_size=8)
    config = TrainConfig(epochs=epochs, batch_size=batch, lr=lr, augment=False)
    wall, cpu = time.perf_counter(), time.process_time()
    started = time.time()
    for _ in range(runs):
        torch.manual_seed(0)
        model = build_model("cifar_resnet", depth, norm, "kaiming_fan_out", num_classes=10)
        clip = GradientClipper("adaptive", lam) if lam else None
        train(model, data, config, seed=0, device="cpu", clip=clip)
    print(
        json.dumps(
            {
                "wall": time.perf_counter() - wall,
                "cpu": time.process_time() - cpu,
                "started": started,
                "ended": time.time(),
                "threads": torch.get_num_threads(),
            }
        )
    )


def _spawn(workload: str, epochs: int, runs: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "NFSTUDY_PROGRESS": "0"}
    cmd = [sys.executable, __file__, "--child", workload, "--epochs", str(epochs), "--runs", str(runs)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def _collect(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a child failed with exit code {p.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def one_by_two(workload: str, epochs: int) -> dict:
    """One process, 2 threads, both runs one after the other."""
    (r,) = _collect([_spawn(workload, epochs, 2, 2)])
    assert r["threads"] == 2, r
    return {"wall": r["wall"], "cpu": r["cpu"]}


def two_by_one(workload: str, epochs: int) -> dict:
    """Two processes, 1 thread each, one run each, started together."""
    rs = _collect([_spawn(workload, epochs, 1, 1) for _ in range(2)])
    assert all(r["threads"] == 1 for r in rs), rs
    return {"wall": max(r["ended"] for r in rs) - min(r["started"] for r in rs), "cpu": sum(r["cpu"] for r in rs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", nargs="+", default=["fig1-bn", "agc-b32"], choices=sorted(WORKLOADS))
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (fig1: 12 steps each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.epochs, args.runs)
        return
    print(f"cpus {os.cpu_count()}, load average at start {os.getloadavg()}")
    for workload in args.workload:
        rows = []
        for r in range(args.rounds):
            pair = (one_by_two, two_by_one) if r % 2 == 0 else (two_by_one, one_by_two)  # alternate who goes first
            result = {f.__name__: f(workload, args.epochs) for f in pair}
            a, b = result["one_by_two"], result["two_by_one"]
            rows.append((a["wall"] / b["wall"], a["cpu"] / b["cpu"]))
            print(
                f"{workload} round {r}: 1x2 wall {a['wall']:.1f}s cpu {a['cpu']:.1f}s | 2x1 wall {b['wall']:.1f}s cpu {b['cpu']:.1f}s"
                f" | wall 1x2/2x1 {rows[-1][0]:.2f}x, cpu {rows[-1][1]:.2f}x | load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        walls, cpus = zip(*rows)
        print(
            f"{workload}: median wall 1x2/2x1 {statistics.median(walls):.2f}x (range {min(walls):.2f}-{max(walls):.2f}), "
            f"cpu {statistics.median(cpus):.2f}x (range {min(cpus):.2f}-{max(cpus):.2f})"
        )
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
