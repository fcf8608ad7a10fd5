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
    assert sum(s.budget_s for s in steps) <= gpu_check.TOTAL_BUDGET_S == 480
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
    assert set(summary) == set(gpu_check.SUMMARY_SCHEMA)
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
