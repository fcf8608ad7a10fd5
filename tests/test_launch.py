"""Sweeps (nfstudy/launch.py): seed lists, each job's command line, the local launcher
through submitit's LocalExecutor, and a SLURM submission against a stand-in sbatch."""

from __future__ import annotations

import sys

import pytest

from nfstudy import launch
from nfstudy.cli import _p_as_param, _parser, main

pytest.importorskip("submitit")


@pytest.mark.parametrize(
    "specs, seeds",
    [
        (["0-4"], [0, 1, 2, 3, 4]),
        (["0,2,5"], [0, 2, 5]),
        (["0-2,7", "9"], [0, 1, 2, 7, 9]),
        (["3", "1", "3", "1-2"], [3, 1, 2]),  # the order given, each seed once
        ("12", [12]),
    ],
)
def test_seed_lists(specs, seeds):
    assert launch.parse_seeds(specs) == seeds


@pytest.mark.parametrize(
    "word, message",
    [
        ("3-1", "runs backwards: write it low-high, e.g. 1-3"),
        ("-1", "0-9, 0,2,5"),
        ("a", "0-9, 0,2,5"),
        ("1,,2", "got '1,,2'"),
        ("1.5", "got '1.5'"),
    ],
)
def test_bad_seed_lists_name_the_accepted_forms(word, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        launch.parse_seeds([word])


def run_args(*argv):
    return _parser().parse_args(_p_as_param(["run", "fig7", *argv]))


def test_each_job_is_the_single_seed_command_with_the_sweeps_options(tmp_path):
    args = run_args(
        "--profile",
        "quick",
        "--seeds",
        "0-1",
        "--device",
        "cpu",
        "-p",
        "size",
        "50",
        "--param",
        "samples=2",
        "--results",
        str(tmp_path / "r"),
        "--launcher",
        "local",
        "--jobs",
        "2",
    )
    options = launch.forwarded_options(args)
    argv = launch.seed_argv("fig7", 1, options, python="PY")
    assert argv == [
        "PY",
        "-m",
        "nfstudy",
        "run",
        "fig7",
        "--profile",
        "quick",
        "--device",
        "cpu",
        "--param=size=50",
        "--param=samples=2",
        "--results",
        str(tmp_path / "r"),
        "--seed",
        "1",
        "--no-aggregate",
    ]
    # The job's command line parses back to the same run, one seed, no launcher.
    again = _parser().parse_args(argv[3:])
    assert (again.seed, again.launcher, again.no_aggregate, again.param) == (1, None, True, ["size=50", "samples=2"])


def test_a_relative_results_folder_is_made_absolute_for_the_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = launch.forwarded_options(run_args("--results", "out"))
    assert options[options.index("--results") + 1] == str(tmp_path / "out")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "2-0"], "--seeds range '2-0' runs backwards"),
        (["--seeds", "0-1", "--partition", "gpu"], "--partition applies only to a sweep: add --launcher local or --launcher slurm"),
        (["--seeds", "0-1", "--launcher", "pbs"], "unknown launcher 'pbs': choose one of local, slurm"),
        (["--seeds", "0-1", "--launcher", "local", "--partition", "gpu"], "use them with --launcher slurm"),
        (["--seeds", "0-1", "--launcher", "local", "--jobs", "0"], "--jobs must be >= 1"),
        (["--seeds", "0-1", "--launcher", "slurm", "--jobs", "2"], "drop --jobs"),
        (["--seeds", "0-1", "--launcher", "local", "--timeout-min", "0"], "--timeout-min must be > 0"),
        (["--seeds", "0-1", "--launcher", "local", "-p", "nope", "1"], "unknown parameter nope"),
    ],
)
def test_bad_sweeps_stop_with_one_line_before_any_job(argv, message, capsys, results_root):
    assert main(["run", "fig7", "--profile", "quick", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err
    assert not results_root.exists()


def test_slurm_without_sbatch_names_the_fix(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["run", "fig7", "--seeds", "0-1", "--launcher", "slurm"]) == 2
    assert "needs SLURM's sbatch and srun on PATH" in capsys.readouterr().err


def test_without_submitit_the_error_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert main(["run", "fig7", "--profile", "quick", "--seeds", "0-1", "--launcher", "local"]) == 2
    assert capsys.readouterr().err.strip() == "error: --launcher needs submitit: pip install submitit (or pip install -e '.[cluster]')"


def test_local_slots_one_per_visible_gpu_else_bounded_cpu_processes(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert launch.local_slots(5) == [launch.Slot(gpu=2), launch.Slot(gpu=3)]
    assert launch.local_slots(1) == [launch.Slot(gpu=2)]
    assert launch.local_slots(5, gpus="0,1,4") == [launch.Slot(gpu=0), launch.Slot(gpu=1), launch.Slot(gpu=4)]
    assert launch.local_slots(5, device="cpu", cpus=8) == [launch.Slot(threads=2)] * 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.local_slots(10, cpus=16) == [launch.Slot(threads=2)] * 8
    assert launch.local_slots(10, cpus=16, jobs=3) == [launch.Slot(threads=5)] * 3
    assert launch.local_slots(2, cpus=2) == [launch.Slot(threads=2)]


WRITE = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '?')); sys.exit(int(sys.argv[2]))"


def test_local_jobs_run_through_submitits_local_executor_and_failures_are_reported(tmp_path):
    jobs = [[sys.executable, "-c", WRITE, str(tmp_path / f"job{i}"), str(code)] for i, code in enumerate([0, 3, 0])]
    lines = []
    failed = launch.run_local(jobs, [launch.Slot(gpu=5), launch.Slot(threads=1)], tmp_path / "jobs", log=lines.append)
    assert [index for index, _ in failed] == [1]
    # Each job saw only its own slot's GPU (none on a CPU slot), as SLURM would give it.
    seen = sorted((tmp_path / f"job{i}").read_text() for i in range(3))
    assert seen.count("5") >= 1 and set(seen) <= {"5", ""}
    assert sum("started" in line for line in lines) == 3 and sum("FAILED" in line for line in lines) == 1


def test_slurm_sweep_submits_one_array_task_per_seed(tmp_path, monkeypatch, capsys, results_root):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        script = bin_dir / tool
        script.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\necho "Submitted batch job 4242"\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    argv = [
        "run",
        "fig7",
        "--profile",
        "quick",
        "--seeds",
        "0-2,5",
        "--launcher",
        "slurm",
        "--partition",
        "gpu",
        "--account",
        "acme",
        "--timeout-min",
        "90",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"fig7 seed {s}: SLURM job 4242_{i}" for i, s in enumerate([0, 1, 2, 5])]
    assert "python -m nfstudy aggregate fig7 --profile quick" in err
    jobs = results_root / "fig7" / "quick" / ".jobs"
    script = (jobs / "4242_submission.sh").read_text()
    for line in (
        "#SBATCH --array=0-3%4",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=acme",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=90",
    ):
        assert line in script
    assert not list(results_root.glob("fig7/*/seed=*"))  # nothing ran here


@pytest.mark.slow
def test_local_sweep_of_a_figure_writes_each_seed_and_aggregates(results_root, config_dir, capsys):
    """Two seeds of fig7 (tiny matrices) as two local processes, then the cross-seed figure."""
    argv = [
        "run",
        "fig7",
        "--profile",
        "quick",
        "--seeds",
        "0,1",
        "--device",
        "cpu",
        "-p",
        "size",
        "40",
        "-p",
        "samples",
        "2",
        "--launcher",
        "local",
        "--jobs",
        "2",
    ]
    assert main(argv) == 0
    quick = config_dir(argv)  # results/fig7/quick+size=40+samples=2-<hash>/: not the profile's own
    from nfstudy import runs

    assert [runs.read_run(quick / f"seed={s}")["status"] for s in (0, 1)] == ["completed", "completed"]
    assert (quick / "fig7.png").exists() and (quick / "claims.csv").exists()
    assert "n_seeds" in capsys.readouterr().out
