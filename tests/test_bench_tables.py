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
    fixed_s = bench_tables.STARTUP_S + 3 * bench_tables.GROUP_START_S + bench_tables.FINISH_S
    for seconds in (200.0, 3000.0):
        epochs, text = bench_tables.fig1_epochs(times, seconds)
        assert epochs == math.floor((bench_tables.SAFETY * seconds - fixed_s) / epoch_s) >= 1
        assert "469 steps an epoch" in text
    with pytest.raises(SystemExit, match="bench_train.py --fused --grid fig1"):
        bench_tables.fig1_epochs(bench_tables.StepTimes(_paper_records()[:2]), 200)


def _fig1_calibration(bn_ms: float, none_ms: float, nf_ms: float) -> list[dict]:
    """fig1's groups (bn x3, none x3, nf x2) at these group step times, as --grid fig1 records them."""
    return [
        fused("resnet110", norm, 128, n, 1.0, n / (ms / 1e3)) for norm, n, ms in (("bn", 3, bn_ms), ("none", 3, none_ms), ("nf", 2, nf_ms))
    ]


# The first GPU session's calibration (H200): one epoch of Fashion-MNIST took ~190 s of steps,
# the run's limit was 217 s, and it was killed during the NF group with 6 of 8 series done.
H200 = _fig1_calibration(141.9, 71.7, 169.5)


def test_not_one_epoch_is_zero_epochs_not_one():
    """The bug the GPU session showed: 1 epoch was planned (at least 1) where none fitted,
    and the run was killed at its limit. A run of 217 s fits no epoch of all the series."""
    epochs, text = bench_tables.fig1_epochs(bench_tables.StepTimes(H200), 217)
    assert epochs == 0 and "not one epoch fits" in text
    # the same arithmetic with room: one epoch needs ~240 s of run, over 0.85
    assert bench_tables.fig1_epochs(bench_tables.StepTimes(H200), 300)[0] == 1


def test_the_plan_takes_the_groups_that_fit_or_nothing():
    times = bench_tables.StepTimes(H200)
    # the session's run (217 s): BN x3 and no BN x3 fit one epoch (what finished), NF x2 does not
    epochs, series, text = bench_tables.fig1_plan(times, 217)
    assert epochs == 1 and series == ["bn@0.1", "bn@0.003", "bn@0.0001", "none@0.0001", "none@0.1", "none+agc@0.1"]
    assert "a subset" in text
    # a group that does not fit is skipped and a later one that does is taken: NF slow, no BN fast
    slow_nf = bench_tables.StepTimes(_fig1_calibration(100.0, 100.0, 2000.0))
    assert bench_tables.fig1_plan(slow_nf, 200)[1] == ["bn@0.1", "bn@0.003", "bn@0.0001", "none@0.0001", "none@0.1", "none+agc@0.1"]
    slow_bn = bench_tables.StepTimes(_fig1_calibration(2000.0, 100.0, 100.0))
    assert bench_tables.fig1_plan(slow_bn, 200)[1] == ["none@0.0001", "nf@0.1", "none@0.1", "none+agc@0.1", "nf+agc@0.1"]
    # everything fits: all the series (None), as many epochs as fit: (0.85 x 1000 - 50) / 190.5 s
    assert bench_tables.fig1_plan(times, 1000)[:2] == (4, None)
    # nothing fits, not even the fastest group: no run
    epochs, series, text = bench_tables.fig1_plan(times, 60)
    assert (epochs, series) == (0, None) and "no run" in text


def _fake_python(tmp_path):
    """A PYTHON for tools/gpu_session.sh that records a figure run's arguments instead of
    running it, and is this interpreter for everything else."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1 $2 $3" = "-m nfstudy run" ]; then printf "%s\\n" "$@" > "$FIG1_ARGS"; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    return fake


def _session_fig1(tmp_path, calibration: list[dict], seconds: int):
    jsonl = tmp_path / "calibration.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in calibration))
    env = {
        **__import__("os").environ,
        "PYTHON": str(_fake_python(tmp_path)),
        "CALIBRATION": str(jsonl),
        "FIG1_SECONDS": str(seconds),
        "DEADLINE_S": "900",
        "RESULTS": str(tmp_path / "results"),
        "FIG1_DATASET": "synthetic",
        "FIG1_ARGS": str(tmp_path / "fig1_args.txt"),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_session.sh"), "fig1", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp_path / "out" / "session.log").read_text()
    args = (tmp_path / "fig1_args.txt").read_text().splitlines() if (tmp_path / "fig1_args.txt").exists() else None
    return done, log, args


def test_the_session_starts_no_fig1_run_that_cannot_finish_an_epoch(tmp_path):
    done, log, args = _session_fig1(tmp_path, H200, 60)
    assert done.returncode == 0, done.stderr
    assert args is None  # no run started
    assert "not one epoch of even one group fits in 60s" in log and "fig1: not started" in log


def test_the_session_runs_the_groups_that_fit_when_not_all_do(tmp_path):
    done, log, args = _session_fig1(tmp_path, H200, 217)
    assert done.returncode == 0, done.stderr
    assert "epochs of a subset" in log
    assert args is not None and args[args.index("epochs") - 1 : args.index("epochs") + 2] == ["-p", "epochs", "1"]
    series = args[args.index("series") + 1]
    assert series == "['bn@0.1', 'bn@0.003', 'bn@0.0001', 'none@0.0001', 'none@0.1', 'none+agc@0.1']"
    # and with room for all of them: no series given (the profile's eight), one epoch
    done, log, args = _session_fig1(tmp_path, H200, 300)
    assert "series" not in args and args[args.index("epochs") + 1] == "1"


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


def test_the_landscape_benchmarks_agreement_bound_follows_the_arithmetic():
    """benchmarks/bench_landscape.py: 1e-5 in fp32 (the CPU's bound, unchanged; a GPU with
    TF32 off), TF32's unit roundoff 2^-11 where cuDNN rounds the convolutions' inputs to TF32
    (the H200 measured 5.9e-5, over 1e-5). In a process of its own: the script silences warnings."""
    code = (
        "import sys, torch; sys.path.insert(0, 'benchmarks'); import bench_landscape as b\n"
        "print(b.agreement_bound(torch.device('cpu'))[0])\n"
        "torch.backends.cudnn.allow_tf32 = True; print(b.agreement_bound(torch.device('cuda'))[0])\n"
        "torch.backends.cudnn.allow_tf32 = False; print(b.agreement_bound(torch.device('cuda'))[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [float(x) for x in done.stdout.split()] == [1e-5, 2.0**-11, 1e-5]
