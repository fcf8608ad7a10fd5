"""tools/bench_tables.py: the benchmarks' JSON lines -> benchmarks/README.md's tables, the
paper profiles' cost and Fig. 1's epochs in a time budget, from measured step times."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from nfstudy.runs import project_root

ROOT = project_root()
spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "tools" / "bench_tables.py")
bench_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_tables)


def fused(model, norm, batch, n, alone, fused_sps, image=32):
    return {
        "bench": "bench_train",
        "kind": "fused",
        "label": "x",
        "model": model,
        "norm": norm,
        "image": image,
        "batch": batch,
        "n": n,
        "alone_steps_per_s": alone,
        "fused_steps_per_s": fused_sps,
        "ratio": fused_sps / alone,
        "ratios": [fused_sps / alone],
    }


def test_group_step_times_are_measured_interpolated_in_n_or_extrapolated():
    # alone 100 steps/s: 10 ms; N=2 fused 150 steps/s: 2/150 s; N=4 fused 200 steps/s: 20 ms
    times = bench_tables.StepTimes([fused("resnet110", "bn", 128, 2, 100, 150), fused("resnet110", "bn", 128, 4, 100, 200)])
    key = ("resnet110", "bn", 128, 32)
    assert times.seconds(key, 1) == (pytest.approx(0.010), "measured")
    assert times.seconds(key, 3) == (pytest.approx((2 / 150 + 0.020) / 2), "interpolated")
    assert times.seconds(key, 6) == (pytest.approx(0.020 + (6 - 4) * (0.020 - 2 / 150) / (4 - 2)), "extrapolated")
    t, how = times.seconds(("resnet110", "nf", 128, 32), 2)
    assert math.isnan(t) and how == "not measured"


def _paper_records():
    records = []
    for norm, (alone, f2, f4) in {"bn": (50, 80, 120), "none": (60, 100, 150), "nf": (40, 70, 100)}.items():
        records += [fused("resnet110", norm, 128, 2, alone, f2), fused("resnet110", norm, 128, 4, alone, f4)]
    # agc: ResNet-56 NF at batches 256 and 4096 only; 1024 is interpolated in log2(batch)
    records += [fused("resnet56", "nf", 256, 6, 40, 120), fused("resnet56", "nf", 4096, 6, 4, 10)]
    return records


def test_the_paper_profiles_cost_follows_the_formula():
    times = bench_tables.StepTimes(_paper_records())
    fig1, agc = bench_tables.figure_costs(times, seeds=5)
    steps = 165 * math.ceil(50_000 / 128)  # the paper profile: 165 epochs of CIFAR-10 at batch 128
    assert fig1["steps_per_run"] == steps == 64_515 and fig1["runs_per_seed"] == 8
    t3 = {n: (2 / f2 + 4 / f4) / 2 for n, (f2, f4) in {"bn": (80, 120), "none": (100, 150)}.items()}  # N=3: halfway
    alone = steps * (3 / 50 + 3 / 60 + 2 / 40)
    fused_s = steps * (t3["bn"] + t3["none"] + 2 / 70)
    assert fig1["alone_hours_per_seed"] == pytest.approx(alone / 3600, rel=1e-9)
    assert fig1["fused_hours_per_seed"] == pytest.approx(fused_s / 3600, rel=1e-9)
    # agc at batch 1024: the per-image time halfway (in log2) between 256's and 4096's
    per_image_1 = {256: (1 / 40) / 256, 4096: (1 / 4) / 4096}
    w = (10 - 8) / (12 - 8)
    t1_1024 = 1024 * (per_image_1[256] + w * (per_image_1[4096] - per_image_1[256]))
    assert bench_tables._interp_batch(times, "resnet56", "nf", 1024, 1)[0] == pytest.approx(t1_1024)
    assert agc["runs_per_seed"] == 35 and agc["steps_per_run"] == 34_290
    assert agc["fused_hours_per_seed"] < agc["alone_hours_per_seed"]  # fused 6 at 3x alone's steps/s


def test_fig1_epochs_fit_the_seconds_with_the_margin():
    times = bench_tables.StepTimes(_paper_records())
    group_s = sum((2 / f2 + 4 / f4) / 2 for f2, f4 in ((80, 120), (100, 150))) + 2 / 70
    epoch_s = math.ceil(60_000 / 128) * group_s * (1 + bench_tables.EVAL_SHARE)
    for seconds in (200.0, 3000.0):
        epochs, text = bench_tables.fig1_epochs(times, seconds)
        assert epochs == max(1, math.floor(bench_tables.SAFETY * seconds / epoch_s))
        assert "469 steps an epoch" in text
    with pytest.raises(SystemExit, match="bench_train.py --fused --grid fig1"):
        bench_tables.fig1_epochs(bench_tables.StepTimes(_paper_records()[:2]), 200)


def test_a_half_written_last_line_is_skipped(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(fused("resnet8", "nf", 32, 2, 10, 12)) + "\n" + '{"bench": "bench_tr')
    assert len(bench_tables.read_records([path])) == 1


def test_tables_from_a_cpu_run_of_the_fused_benchmark(tmp_path):
    """The smoke grid on this CPU through --jsonl, then the tables: each measured number
    appears as the benchmark wrote it, the CUDA-only variant in 'Not measured'."""
    jsonl = tmp_path / "bench.jsonl"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--fused", "--grid", "smoke", "--device", "cpu"]
    command += ["--rounds", "1", "--variants", "eager fp32,cuda graph", "--jsonl", str(jsonl)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={"NFSTUDY_PROGRESS": "0", **__import__("os").environ})
    assert done.returncode == 1, done.stderr  # the CUDA graph variant cannot run here: a failed measurement
    records = bench_tables.read_records([jsonl])
    assert [r["kind"] for r in records] == ["env", "started", "variant", "started", "error", "fused"]
    text = bench_tables.markdown(records)
    f = records[-1]
    assert f"| smoke | resnet8 | nf | 32 | 2 | {f['alone_steps_per_s']:.2f} | {f['fused_steps_per_s']:.2f} | **{f['ratio']:.2f}x**" in text
    v = records[2]
    assert f"| smoke | resnet8 | nf | 32 | eager fp32 | {v['ms_per_step']:.2f} |" in text
    assert "cuda graph | RuntimeError: the cuda graph variant needs a CUDA device" in text
    assert "no GPU" in text.splitlines()[0]


def test_a_variant_that_started_and_never_ended_is_reported_unfinished():
    started = {"bench": "bench_train", "kind": "started", "label": "fig1 paper", "model": "resnet110", "norm": "bn", "batch": 128, "n": 1}
    done = {**started, "kind": "variant", "variant": "eager fp32", "ms_per_step": 10.0, "steps_per_s": 100.0, "image": 32}
    text = bench_tables.markdown([{**started, "variant": "eager fp32"}, done, {**started, "variant": "compile"}])
    unfinished = [line for line in text.splitlines() if "unfinished" in line]
    assert len(unfinished) == 1 and "compile" in unfinished[0] and "stopped at its time limit" in unfinished[0]
