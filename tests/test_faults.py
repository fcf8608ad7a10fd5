"""Fault injection: every way a run or a result file can go wrong, done on purpose.

Each test asserts that nothing completed is lost (the seed's completed files are byte for
byte as they were) and that the user is told what happened and the fix, in one line.
Tiny sizes: fig7 (no network) through the Run API, fig7/fig1 through the CLI where a
kernel is the point (marked slow).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from nfstudy import cli, runs
from nfstudy.claims import across_seeds, claims_table, normalize
from nfstudy.cli import main
from nfstudy.params import to_dict
from nfstudy_experiments import fig7

# fig7's quick profile as it is (about a second): a run with other parameters is another
# configuration, in a folder of its own (results/fig7/quick+size=40+samples=2-.../).
FIG7: list[str] = []
ROOT = Path(__file__).resolve().parent.parent


def fig7_run(root, seed=0, fail: BaseException | None = None, checkpoint: bytes | None = None) -> runs.Run:
    """One seed of a tiny fig7 through the Run API (as its notebook does); ``fail`` is
    raised after the tables were written, before the claims."""
    from nfstudy_experiments import params_for

    params = params_for("fig7", "quick")
    with runs.Run.start("fig7", "quick", seed, to_dict(params), device="cpu", root=root) as run:
        tables = run.save_tables(fig7.run(params, seed=seed, device="cpu"))
        if checkpoint is not None:  # a training figure's checkpoint, for the resume tests
            runs.atomic_write(run.dir / "checkpoints" / "series" / "checkpoint.pt", checkpoint)
        if fail is not None:
            raise fail
        run.save_claims(claims_table("fig7", fig7.claims(tables)))
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- failed re-runs


@pytest.mark.parametrize("fault, status", [(ValueError("disk full"), "failed"), (KeyboardInterrupt(), "interrupted")])
def test_a_failed_rerun_of_a_completed_seed_keeps_the_completed_result(tmp_path, fault, status):
    done = fig7_run(tmp_path).dir
    before = snapshot(done)
    with pytest.raises(type(fault)):
        fig7_run(tmp_path, fail=fault)
    assert snapshot(done) == before  # the completed run, run.json included, untouched
    attempt = tmp_path / "fig7" / "quick" / "seed=0.attempt"
    meta = runs.read_run(attempt)
    assert meta["status"] == status and (attempt / "singular_values.csv").is_file()  # inspectable
    with pytest.warns(UserWarning, match=rf"seed=0.attempt.*{status}.*completed run in seed=0 is used"):
        table = runs.load_table("fig7", "singular_value_summary", "quick", tmp_path)
    assert table.equals(pd.read_csv(done / "singular_value_summary.csv"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image, claims = figures_aggregate(tmp_path)
    assert claims["n_seeds"].eq(1).all()
    # The next run resumes the attempt, then replaces the completed run as a whole.
    again = fig7_run(tmp_path)
    assert again.dir == done and not attempt.exists()
    assert [a["status"] for a in runs.read_run(done)["earlier_attempts"]] == [status]


def figures_aggregate(root):
    from nfstudy.report import aggregate

    return aggregate("fig7", "quick", root)


def test_a_rerun_starts_from_the_completed_runs_checkpoints_without_changing_them(tmp_path):
    done = fig7_run(tmp_path, checkpoint=b"epoch 10").dir
    saved = done / "checkpoints" / "series" / "checkpoint.pt"
    with pytest.raises(ValueError):
        fig7_run(tmp_path, fail=ValueError("CheckpointMismatch"), checkpoint=b"epoch 11")
    attempt = tmp_path / "fig7" / "quick" / "seed=0.attempt"
    assert (attempt / "checkpoints" / "series" / "checkpoint.pt").read_bytes() == b"epoch 11"
    assert saved.read_bytes() == b"epoch 10"  # linked, never written through


def test_without_an_atomic_exchange_the_swap_still_replaces_the_whole_run(tmp_path, monkeypatch):
    fig7_run(tmp_path, checkpoint=b"old")
    monkeypatch.setattr(runs, "_exchange", lambda a, b: False)  # not Linux, or a filesystem without it
    done = fig7_run(tmp_path, checkpoint=b"new").dir
    assert (done / "checkpoints" / "series" / "checkpoint.pt").read_bytes() == b"new"
    assert sorted(p.name for p in done.parent.iterdir()) == ["seed=0"]  # nothing left beside it


def test_a_swap_cut_short_is_finished_by_the_next_run(tmp_path):
    done = fig7_run(tmp_path).dir
    attempt = runs.attempt_dir(done)
    os.rename(done, attempt)  # completed in its attempt folder, killed before the rename
    assert runs.prepare_attempt(done) == attempt and runs.read_run(done)["status"] == "completed"


# --------------------------------------------------------------------------- damaged files


def test_a_truncated_table_is_refused_by_loaders_aggregate_and_report(tmp_path, capsys):
    for seed in (0, 1):
        fig7_run(tmp_path, seed)
    main(["aggregate", "fig7", "--profile", "quick", "--results", str(tmp_path)])
    gallery = (tmp_path / "fig7" / "quick" / "claims.csv").read_bytes()
    claims = tmp_path / "fig7" / "quick" / "seed=1" / "claims.csv"
    claims.write_bytes(claims.read_bytes()[:-40])  # a cut copy: the last claim half gone
    with pytest.raises(runs.CorruptResultError, match=r"seed=1/claims.csv does not match its run.json \(\d+ rows recorded"):
        runs.load_table("fig7", "claims", "quick", tmp_path)
    assert main(["aggregate", "fig7", "--profile", "quick", "--results", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "seed=1/claims.csv" in line and "python -m nfstudy run fig7 --profile quick --seed 1" in line
    assert (tmp_path / "fig7" / "quick" / "claims.csv").read_bytes() == gallery  # the gallery is not overwritten
    with pytest.warns(UserWarning, match="seed=1/claims.csv"):
        assert main(["report", "--results", str(tmp_path)]) == 0
    page = (tmp_path / "README.md").read_text()
    assert "Could not be redrawn from its files" in page and "seed=1/claims.csv does not match" in page


def test_a_table_changed_in_place_or_deleted_is_refused(tmp_path):
    done = fig7_run(tmp_path).dir
    table = done / "singular_value_summary.csv"
    table.write_text(table.read_text().replace("0.", "9.", 1))  # same rows, other numbers
    with pytest.raises(runs.CorruptResultError, match="checksum differs"):
        runs.load_table("fig7", "singular_value_summary", "quick", tmp_path)
    table.unlink()
    with pytest.raises(runs.CorruptResultError, match="is missing .its run.json lists it.; restore it or re-run"):
        runs.verify_tables(done)


def test_a_nan_or_cut_claim_never_counts_as_passed():
    table = claims_table("f", [])
    rows = pd.DataFrame(
        [
            {
                "figure": "f",
                "claim": "nan value",
                "kind": "paper",
                "metric": "m",
                "value": float("nan"),
                "comparison": ">",
                "threshold": 0.0,
                "threshold_high": float("nan"),
                "outcome": "passed",
                "passed": True,
                "note": "",
            },
            {
                "figure": "f",
                "claim": "cut row",
                "kind": "paper",
                "metric": "m",
                "value": 1.0,
                "comparison": ">",
                "threshold": 0.0,
                "threshold_high": float("nan"),
                "outcome": float("nan"),
                "passed": float("nan"),
                "note": "",
            },
        ],
        columns=table.columns,
    )
    assert normalize(rows)["outcome"].tolist() == ["failed", "failed"]
    assert across_seeds(rows.assign(seed=0))["outcome"].tolist() == ["failed", "failed"]


@pytest.mark.parametrize(
    "content, why",
    [
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not valid JSON"),
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b'{"status": "compl', "is not valid JSON"),
    ],
)
def test_odd_run_json_files_are_named_not_crashed_on(tmp_path, capsys, content, why):
    fig7_run(tmp_path, 0)
    odd = tmp_path / "fig7" / "quick" / "seed=5"
    odd.mkdir()
    (odd / "run.json").write_bytes(content)
    assert runs.read_run(odd) is None and why in runs.run_problem(odd)
    with pytest.warns(UserWarning, match=rf"seed=5.*{why}"):
        assert len(runs.load_table("fig7", "claims", "quick", tmp_path)) > 0
    with pytest.warns(UserWarning, match="seed=5"):
        assert main(["report", "--results", str(tmp_path)]) == 0
    page = (tmp_path / "README.md").read_text()
    assert f"`fig7/quick/seed=5`: run.json {why}" in page and "delete the folder or run the seed again" in page
    with pytest.warns(UserWarning):
        assert main(["aggregate", "fig7", "--profile", "quick", "--results", str(tmp_path)]) == 0


# --------------------------------------------------------------------------- folders that cannot be written


def test_a_results_folder_that_cannot_be_written_is_one_line_with_the_fix(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")  # stops root too, unlike chmod
    assert main(["run", "fig7", "--profile", "quick", "--device", "cpu", "--results", str(blocker), *FIG7]) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and "--results DIR" in line
    assert main(["report", "--results", str(blocker)]) == 2
    assert "--results DIR" in one_error_line(capsys)

    def read_only(path, data):
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(runs, "atomic_write", read_only)
    fine = tmp_path / "fine"
    fine.mkdir()
    assert main(["report", "--results", str(fine)]) == 2
    line = one_error_line(capsys)
    assert f"cannot use {fine / 'README.md'}: Read-only file system" in line and "writable" in line


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("nfstudy.report.build_report", bug)
    with pytest.raises(KeyError):
        main(["report", "--results", str(tmp_path)])
    monkeypatch.setattr("nfstudy.report.build_report", lambda root: (_ for _ in ()).throw(ValueError("expected")))
    assert main(["report", "--results", str(tmp_path)]) == 2
    with pytest.raises(ValueError):
        main(["--debug", "report", "--results", str(tmp_path)])


# --------------------------------------------------------------------------- parameters, before any folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["fig2", "-p", "series", ""], "series is empty"),
        (["fig2", "-p", "depth", "30"], "depth must be 6n+2 (a stem, 3 stages of n two-conv blocks, the classifier), got 30: try 26 or 32"),
        (["fig2", "-p", "batch_size", "4096"], "batch size 4096 exceeds the 1498 training images of digits: use at most 1498"),
        (["agc", "-p", "batch_sizes", "64,4096"], "batch size 4096 exceeds the 1498 training images of digits"),
        (["fig2", "--seed", "-1"], "seed must be an integer >= 0"),
        (["fig2", "-p", "depth", "-20"], "depth must be > 0"),
    ],
)
def test_bad_parameters_stop_before_the_seed_folder_is_touched(results_root, capsys, args, message):
    assert main(["run", *args[:1], "--profile", "quick", "--device", "cpu", *args[1:]]) == 2
    assert message in one_error_line(capsys)
    assert not results_root.exists()


def test_a_list_value_starting_with_a_dash_is_a_value(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(cli, "run_figure", lambda figure, profile, seed, device, overrides, root: seen.update(overrides))
    assert main(["run", "fig3", "--profile", "quick", "--no-aggregate", "-p", "learning_rates", "-1e-3,0.1", "-p", "momentum", "0"]) == 0
    assert seen == {"learning_rates": (-0.001, 0.1), "momentum": 0}


def test_a_figure_without_data_ignores_dataset_and_says_so(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(cli, "run_figure", lambda figure, profile, seed, device, overrides, root: seen.update(overrides))
    assert main(["run", "fig7", "--profile", "quick", "--no-aggregate", "--dataset", "synthetic", "-p", "size", "40"]) == 0
    assert seen == {"size": 40}
    assert "fig7 takes no data: --dataset synthetic is ignored" in capsys.readouterr().err
    assert main(["run", "fig2", "--profile", "quick", "--no-aggregate", "--dataset", "synthetic"]) == 0
    assert seen["dataset"] == "synthetic"


def test_the_report_offers_no_make_target_for_a_folder_that_is_not_a_figure(tmp_path):
    from nfstudy.report import build_report

    (tmp_path / "scratch" / "old").mkdir(parents=True)
    page = build_report(tmp_path).read_text()
    assert "make scratch" not in page and "`make fig7 PROFILE=quick`" in page


# --------------------------------------------------------------------------- offline CIFAR-10


def tiny_tarball(tmp_path) -> tuple[Path, dict[str, str]]:
    """A CIFAR-10 tarball in the genuine format (tests/test_data.py's tiny batches)."""
    from test_data import write_tiny_cifar10

    _, md5 = write_tiny_cifar10(tmp_path / "src")
    tarball = tmp_path / "data" / "cifar-10-python.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5["cifar-10-python.tar.gz"] = hashlib.md5(tarball.read_bytes()).hexdigest()
    return tarball, md5


def test_offline_a_valid_tarball_is_verified_and_extracted(tmp_path, monkeypatch):
    from nfstudy.compat import import_torchvision
    from nfstudy.data import load_cifar10

    tarball, md5 = tiny_tarball(tmp_path)
    monkeypatch.setenv("NFSTUDY_OFFLINE", "1")
    monkeypatch.setenv("NFSTUDY_DATA", str(tarball.parent))

    def no_network(*args, **kwargs):
        raise AssertionError("offline: no download")

    monkeypatch.setattr(import_torchvision().datasets.utils, "_urlretrieve", no_network)
    data = load_cifar10(checksums=md5)
    assert len(data.train_labels) == 30 and len(data.test_labels) == 6
    assert sorted(p.name for p in tarball.parent.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no scratch left


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_offline_a_corrupt_tarball_is_named_with_its_md5(tmp_path, monkeypatch, capsys, results_root, damage):
    from nfstudy.data import DatasetNotFoundError, load_cifar10

    tarball, md5 = tiny_tarball(tmp_path)
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) // 2] if damage == "truncated" else gzip.decompress(data)[:5000])
    found = hashlib.md5(tarball.read_bytes()).hexdigest()
    monkeypatch.setenv("NFSTUDY_OFFLINE", "1")
    monkeypatch.setenv("NFSTUDY_DATA", str(tarball.parent))
    with pytest.raises(DatasetNotFoundError, match=rf"cifar-10-python.tar.gz is corrupt: its md5 is {found}.*Delete it"):
        load_cifar10()  # torchvision's md5
    md5["cifar-10-python.tar.gz"] = found  # a mirror's md5 that matches a damaged archive: the archive itself is named
    with pytest.raises(DatasetNotFoundError, match=rf"cifar-10-python.tar.gz is corrupt \(.*md5 {found}\): delete it"):
        load_cifar10(checksums=md5)
    assert sorted(p.name for p in tarball.parent.iterdir()) == ["cifar-10-python.tar.gz"]
    assert main(["run", "fig2", "--profile", "quick", "--device", "cpu", "--dataset", "cifar10"]) == 2
    line = one_error_line(capsys)
    assert f"{tarball} is corrupt: its md5 is {found}" in line and "Delete it" in line
    assert not results_root.exists()


# --------------------------------------------------------------------------- concurrent runs, killed runs

HOLD = textwrap.dedent(
    """
    import sys, time
    from nfstudy import runs
    from nfstudy.cli import load_figure
    from nfstudy.params import to_dict
    params = to_dict(load_figure("fig7").PROFILES["quick"])  # the quick profile's own configuration: quick/seed=0
    run = runs.Run.start("fig7", "quick", 0, params, root=sys.argv[1])
    print("holding", flush=True)
    time.sleep(300)
    """
)


def hold_seed(root) -> subprocess.Popen:
    """Another process running seed 0 of fig7 (a Run that never ends)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "holding"
    return proc


@pytest.mark.slow
def test_a_second_run_of_a_running_seed_stops_and_a_killed_ones_lock_is_cleared(tmp_path, capsys):
    done = fig7_run(tmp_path).dir
    before = snapshot(done)
    other = hold_seed(tmp_path)
    try:
        with pytest.raises(runs.SeedBusyError, match=rf"fig7 seed 0 \(quick\) is already being run by pid {other.pid} on .* \(started "):
            fig7_run(tmp_path)
        assert main(["run", "fig7", "--profile", "quick", "--device", "cpu", "--results", str(tmp_path), *FIG7]) == 2
        line = one_error_line(capsys)
        assert f"pid {other.pid}" in line and f"kill {other.pid}" in line
        attempt = runs.attempt_dir(done)
        assert runs.attempt_status(attempt) == "running"  # the live run is not taken for a dead one
    finally:
        other.kill()
        other.wait()
    assert snapshot(done) == before
    assert runs.attempt_status(attempt) == "killed"
    with pytest.warns(UserWarning, match="seed=0.attempt.*'killed'"):
        runs.load_table("fig7", "claims", "quick", tmp_path)
    lock = runs.acquire_lock(done)
    assert lock.stale["pid"] == other.pid  # detected and cleared
    lock.release()
    again = fig7_run(tmp_path)
    assert [a["status"] for a in runs.read_run(again.dir)["earlier_attempts"]] == ["killed"]


@pytest.mark.slow
def test_a_notebook_that_fails_on_rerun_leaves_the_completed_seed_and_its_own_notebook(results_root, capsys):
    args = ["run", "fig7", "--profile", "quick", "--device", "cpu", "--no-aggregate", *FIG7]
    assert main(args) == 0
    done = results_root / "fig7" / "quick" / "seed=0"
    before = snapshot(done)
    attempt = runs.attempt_dir(done)
    (attempt / "claims.csv" / "x").mkdir(parents=True)  # the claims cannot be written: a late failure in the kernel
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "fig7 seed 0 (quick) failed" in err and f"the completed run of this seed is unchanged in {done}" in err
    assert snapshot(done) == before
    meta = runs.read_run(attempt)
    assert meta["status"] == "failed" and "claims.csv" in meta["error"]
    assert (attempt / "fig7.ipynb").is_file() and (attempt / "singular_values.csv").is_file()


def _start_fig1(root) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NFSTUDY_PROGRESS": "0"}
    args = [
        sys.executable,
        "-m",
        "nfstudy",
        "run",
        "fig1",
        "--profile",
        "quick",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--results",
        str(root),
        "--no-aggregate",
        "-p",
        "depth",
        "8",
        "-p",
        "epochs",
        "6",
        "-p",
        "extend_until_plateau",
        "False",
        "-p",
        "checkpoint_every",
        "1",
        "-p",
        "series",
        "bn@0.1,none@0.001",
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _wait_for_training(attempt: Path, proc: subprocess.Popen, since: float) -> None:
    """Until this process's run has written a checkpoint (it is mid-training)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        meta = runs.read_run(attempt) or {}
        written = [p.stat().st_mtime for p in attempt.glob("checkpoints/*/checkpoint.pt")]
        if meta.get("status") == "running" and any(t > since for t in written):
            return
        time.sleep(0.2)
    raise AssertionError(f"no training seen in {attempt}: {proc.communicate()}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.slow
def test_ctrl_c_and_sigkill_mid_training_then_a_resume(results_root):
    # A tiny fig1 (depth 8, 6 epochs, two series): not the quick profile's own, so its configuration's folder.
    overrides = {"depth": 8, "epochs": 6, "extend_until_plateau": False, "series": ("bn@0.1", "none@0.001")}
    config = runs.config_folder("fig1", "quick", overrides, results_root)
    assert config.name != "quick"
    attempt = config / "seed=0.attempt"
    started = time.time()
    proc = _start_fig1(results_root)
    _wait_for_training(attempt, proc, started)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and "ZMQError" not in err, err
    last = err.strip().splitlines()[-1]
    assert last == f"[nfstudy] fig1 seed 0 ({config.name}) interrupted: the attempt is kept in {attempt} (run the same command to resume)"
    assert runs.read_run(attempt)["status"] == "interrupted"

    started = time.time()
    proc = _start_fig1(results_root)
    _wait_for_training(attempt, proc, started)
    kernel = runs.read_run(attempt)["pid"]
    os.killpg(proc.pid, signal.SIGKILL)  # the run and (after its parent is gone) its kernel
    proc.communicate(timeout=60)
    deadline = time.time() + 60
    while not _gone(kernel) and time.time() < deadline:
        time.sleep(0.2)
    assert runs.read_run(attempt)["status"] == "running" and runs.attempt_status(attempt) == "killed"
    assert not (config / "seed=0").exists()

    proc = _start_fig1(results_root)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "cleared the stale lock" in err
    meta = runs.read_run(config / "seed=0")
    assert meta["status"] == "completed" and [a["status"] for a in meta["earlier_attempts"]] == ["interrupted", "killed"]
    assert not attempt.exists() and not (results_root / "fig1" / "quick").exists()
