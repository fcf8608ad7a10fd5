"""`make gpu-check` (nfstudy/gpu_check.py) on a CPU: the plan, the reduced parameters of
every figure, the step runner (ok, failed, timeout) and the summary's schema."""

from __future__ import annotations

import json
import sys

import pytest

from nfstudy import gpu_check
from nfstudy.cli import _experiment, _overrides, _parser, figures_available
from nfstudy.params import resolve
from nfstudy.runs import project_root

ROOT = project_root()


def test_the_plan_covers_every_figure_in_order_within_eight_minutes(tmp_path):
    steps = gpu_check.plan(ROOT, tmp_path, "cuda", python="PY")
    names = [s.name for s in steps]
    assert names == ["environment", "cuda-tests", *[f"figure:{f}" for f in figures_available()], "bench-train"]
    # The longest the check can take at the default 4 jobs: the exclusive steps one after another,
    # plus a list schedule of the others on 4 slots (at most their sum / 4 + the longest one).
    shared = [s.budget_s for s in steps if s.command is not None and not s.exclusive]
    alone = sum(s.budget_s for s in steps if s.command is None or s.exclusive)
    assert alone + sum(shared) / 4 + max(shared) <= gpu_check.TOTAL_BUDGET_S == 480
    assert alone + sum(shared) > gpu_check.TOTAL_BUDGET_S  # one at a time (--jobs 1) they would not fit: --budget-scale
    figure = steps[2].command
    assert figure[:6] == ["PY", "-m", "nfstudy", "run", figures_available()[0], "--profile"] and figure[6] == "paper"
    assert ["--dataset", "synthetic"] == figure[figure.index("--dataset") : figure.index("--dataset") + 2]
    assert steps[1].command[:6] == ["PY", "-m", "pytest", "-q", "-m", "cuda"]
    assert steps[-1].command[1].endswith("benchmarks/bench_train.py") and "--device" in steps[-1].command


@pytest.mark.parametrize("figure", figures_available())
def test_each_figures_reduced_paper_profile_is_valid_parameters(figure):
    """The overrides go through the command line's own parsing and the figure's checks, as
    in the GPU run; the result is smaller than the paper profile where it matters."""
    assert figure in gpu_check.REDUCED, f"add reduced parameters for {figure} to nfstudy.gpu_check.REDUCED"
    argv = ["run", figure, "--dataset", "synthetic", *gpu_check._param_args(gpu_check.REDUCED[figure])]
    args = _parser().parse_args(argv)
    module = _experiment(figure)
    params = resolve(module.PROFILES, "paper", _overrides(args))
    paper = module.PROFILES["paper"]
    for name in ("depth", "epochs", "size", "networks", "n_step_sizes"):
        if hasattr(paper, name):
            assert getattr(params, name) <= getattr(paper, name)
    if hasattr(paper, "dataset"):
        assert params.dataset == "synthetic"


def test_the_step_runner_reports_ok_failed_and_timeout(tmp_path):
    py = sys.executable
    ok = gpu_check.Step("ok", [py, "-c", "print('engine  12.5 img/s'); print('engine / baseline = 3.25x')"], 30, gpu_check._bench_numbers)
    failed = gpu_check.Step("failed", [py, "-c", "import sys; print('a'); sys.exit('the reason')"], 30)
    slow = gpu_check.Step("slow", [py, "-c", "import time; time.sleep(60)"], 30)
    rows = {s.name: gpu_check.run_step(s, tmp_path / f"{s.name}.log", 2 if s.name == "slow" else 30) for s in (ok, failed, slow)}
    assert rows["ok"]["status"] == "ok" and rows["ok"]["numbers"] == {"engine_images_per_s": 12.5, "engine_over_baseline": 3.25}
    assert rows["failed"]["status"] == "failed" and rows["failed"]["error"] == "the reason"
    assert rows["slow"]["status"] == "timeout" and rows["slow"]["seconds"] < 30


def test_dry_run_writes_the_plan_as_a_summary_of_the_documented_schema(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == set(gpu_check.SUMMARY_SCHEMA) and summary["jobs"] == gpu_check.default_jobs("cuda")
    assert summary["schema"] == "nfstudy.gpu_check/1" and summary["dry_run"] is True and summary["ok"] is False
    assert {s["status"] for s in summary["steps"]} == {"planned"}
    assert set(summary["steps"][0]) == {"name", "status", "seconds", "budget_s", "command", "numbers", "log", "error"}


def test_a_cpu_smoke_run_of_the_environment_step_names_the_versions(tmp_path):
    import torch

    assert gpu_check.main(["--device", "cpu", "--only", "environment", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is True and summary["environment"]["torch"] == torch.__version__
    assert {"gpu", "driver", "cuda", "cudnn", "python", "git_commit"} <= set(summary["environment"])
    # Asked for CUDA where there is none, the environment step fails with the fix.
    if not torch.cuda.is_available():
        assert gpu_check.main(["--only", "environment", "--out", str(tmp_path)]) == 1
        row = json.loads((tmp_path / "summary.json").read_text())["steps"][0]
        assert row["status"] == "failed" and "--device cpu" in row["error"]


def test_only_names_an_unknown_step(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--only", "figure:nope", "--out", str(tmp_path)])
    assert "matches no step: choose from environment, cuda-tests" in capsys.readouterr().err


# A fake step: writes its start time, sleeps, writes its end time (seconds since the epoch).
SLEEPER = (
    "import sys, time; open(sys.argv[1] + '.start', 'w').write(repr(time.time())); "
    "time.sleep(float(sys.argv[2])); open(sys.argv[1] + '.end', 'w').write(repr(time.time()))"
)


def _sleeper(tmp_path, name, seconds, budget=30.0, exclusive=False):
    return gpu_check.Step(name, [sys.executable, "-c", SLEEPER, str(tmp_path / name), str(seconds)], budget, exclusive=exclusive)


def _interval(tmp_path, name):
    return float((tmp_path / f"{name}.start").read_text()), float((tmp_path / f"{name}.end").read_text())


def _run(tmp_path, steps, jobs, budget_s=60.0):
    summary = {"steps": [], "environment": {}}
    return gpu_check.run_steps(steps, tmp_path / "out", summary, budget_s=budget_s, jobs=jobs, device="cpu")


def test_steps_run_jobs_at_a_time_and_an_exclusive_step_alone(tmp_path):
    steps = [_sleeper(tmp_path, n, 3.0) for n in ("a", "b", "c")] + [_sleeper(tmp_path, "bench", 0.2, exclusive=True)]
    summary = _run(tmp_path, steps, jobs=3)
    assert summary["ok"] and [r["name"] for r in summary["steps"]] == ["a", "b", "c", "bench"]
    spans = {n: _interval(tmp_path, n) for n in ("a", "b", "c", "bench")}
    # a, b and c overlap: each started before any of them ended
    assert max(s for s, _ in (spans["a"], spans["b"], spans["c"])) < min(e for _, e in (spans["a"], spans["b"], spans["c"]))
    # the exclusive step started after every step before it had ended
    assert spans["bench"][0] >= max(e for _, e in (spans["a"], spans["b"], spans["c"]))


def test_with_one_job_the_steps_run_one_after_another(tmp_path):
    steps = [_sleeper(tmp_path, n, 0.3) for n in ("a", "b", "c")]
    assert _run(tmp_path, steps, jobs=1)["ok"]
    spans = [_interval(tmp_path, n) for n in ("a", "b", "c")]
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2))


def test_a_step_over_its_budget_is_stopped_alone_and_the_summary_keeps_the_plans_order(tmp_path):
    # "slow" is first in the plan, is stopped at its 2 s budget and ends last of the three
    # started together; "quick" ends first. The summary lists them in the plan's order.
    steps = [_sleeper(tmp_path, "slow", 60, budget=2.0), _sleeper(tmp_path, "middle", 1.0), _sleeper(tmp_path, "quick", 0.1)]
    summary = _run(tmp_path, steps, jobs=3)
    rows = {r["name"]: r for r in summary["steps"]}
    assert [r["name"] for r in summary["steps"]] == ["slow", "middle", "quick"]
    assert rows["slow"]["status"] == "timeout" and rows["slow"]["seconds"] < 30
    assert rows["middle"]["status"] == rows["quick"]["status"] == "ok"
    assert not (tmp_path / "slow.end").exists() and (tmp_path / "middle.end").exists()
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["name"] for r in on_disk["steps"]] == ["slow", "middle", "quick"] and on_disk["ok"] is False


def test_steps_that_would_start_after_the_total_budget_are_skipped(tmp_path):
    steps = [_sleeper(tmp_path, "first", 2.0), _sleeper(tmp_path, "second", 0.1)]
    summary = _run(tmp_path, steps, jobs=1, budget_s=6.0)  # the second starts with < 5 s left
    assert [r["status"] for r in summary["steps"]] == ["ok", "skipped"]


def test_default_jobs_four_on_a_16_core_gpu_machine_one_on_a_cpu():
    assert gpu_check.default_jobs("cuda", cpus=16) == 4 and gpu_check.default_jobs("cuda:1", cpus=64) == 4
    assert gpu_check.default_jobs("cuda", cpus=2) == 1 and gpu_check.default_jobs("cpu", cpus=16) == 1
    steps = gpu_check.plan(ROOT, ROOT / "unused", "cuda", python="PY")
    assert [s.name for s in steps if s.exclusive] == ["bench-train"]


def test_a_stopped_check_kills_its_running_steps(tmp_path):
    """Each step is a session of its own, out of reach of a signal to the check: the check's
    SIGTERM handler kills them (else they would run on beside whatever comes next)."""
    import signal
    import subprocess

    step = subprocess.Popen([sys.executable, "-c", SLEEPER, str(tmp_path / "orphan"), "30"], start_new_session=True)
    gpu_check._RUNNING.add(step)
    try:
        with pytest.raises(SystemExit) as stopped:
            gpu_check.stop_running_steps(signal.SIGTERM)
        assert stopped.value.code == 128 + signal.SIGTERM
        assert step.wait(timeout=10) == -signal.SIGKILL
    finally:
        gpu_check._RUNNING.discard(step)
        if step.poll() is None:
            step.kill()
