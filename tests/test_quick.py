"""`make quick`: figures side by side, each line marked with its figure, a failure fails it."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nfstudy.cli import PREFIX_ENV, PrefixedLines, figures_available, main

ROOT = Path(__file__).resolve().parent.parent

# Stands in for `python -m nfstudy` in the Makefile: logs each call (figure, command, start,
# end, the environment make gave it), takes a while, and fails the run of $FAIL_FIGURE.
FAKE_NF = textwrap.dedent(
    """
    import json, os, sys, time
    command, figure = sys.argv[1], sys.argv[2]
    start = time.time()
    time.sleep(0.4)
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NFSTUDY_OUTPUT_PREFIX", "NFSTUDY_PROGRESS")}
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps({"command": command, "figure": figure, "start": start, "end": time.time(), "env": env}) + "\\n")
    sys.exit(1 if command == "run" and figure == os.environ.get("FAIL_FIGURE") else 0)
    """
)


def make_quick(tmp_path, fail=""):
    fake = tmp_path / "fake_nf.py"
    fake.write_text(FAKE_NF)
    stamp = tmp_path / "stamp"  # newer than requirements.lock: setup is not run
    stamp.touch()
    log = tmp_path / "calls.jsonl"
    env = {"PATH": "/usr/bin:/bin", "FAKE_LOG": str(log), "FAIL_FIGURE": fail, "HOME": str(tmp_path)}
    done = subprocess.run(
        ["make", "quick", f"NF={sys.executable} {fake}", f"STAMP={stamp}", "QUICK_JOBS=2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


@pytest.mark.slow
def test_make_quick_runs_every_figure_two_at_a_time_in_one_thread_processes(tmp_path):
    done, calls = make_quick(tmp_path)
    assert done.returncode == 0, done.stderr
    figures = list(figures_available())
    runs = [c for c in calls if c["command"] == "run"]
    assert sorted(c["figure"] for c in runs) == sorted(figures)
    assert sorted(c["figure"] for c in calls if c["command"] == "aggregate") == sorted(figures)
    for c in calls:
        assert c["env"] == {"OMP_NUM_THREADS": "1", "NFSTUDY_OUTPUT_PREFIX": "1", "NFSTUDY_PROGRESS": "0"}
    # Two at a time: some runs overlap, never three.
    events = sorted([(c["start"], 1) for c in calls] + [(c["end"], -1) for c in calls])
    level, most = 0, 0
    for _, step in events:
        level += step
        most = max(most, level)
    assert most == 2
    # The longest first: fig1 and fig3 start together, agc next (QUICK_FIRST), then the rest. In the
    # order make launches them (the command lines it echoes): the fake's own start times are taken
    # after Python's start-up, which can swap two runs launched a moment apart on a loaded machine.
    started = re.findall(r"fake_nf\.py run (\S+) ", done.stdout)
    assert sorted(started) == sorted(figures), done.stdout
    assert set(started[:2]) == {"fig1", "fig3"} and started[2] == "agc", started
    # Each figure is aggregated after its run.
    for figure in figures:
        (run,) = [c for c in runs if c["figure"] == figure]
        (agg,) = [c for c in calls if c["command"] == "aggregate" and c["figure"] == figure]
        assert agg["start"] >= run["end"]


@pytest.mark.slow
def test_a_failing_figure_fails_make_quick_and_the_others_still_run(tmp_path):
    done, calls = make_quick(tmp_path, fail="fig2")
    assert done.returncode != 0
    assert "fig2-seed0" in done.stderr  # make names the target that failed
    ran = {c["figure"] for c in calls if c["command"] == "run"}
    aggregated = {c["figure"] for c in calls if c["command"] == "aggregate"}
    assert ran == set(figures_available())  # -k: the others went on
    assert aggregated == set(figures_available()) - {"fig2"}  # not aggregated without its run
    # Negative control: the same fake without a failure succeeds (above), so the failure is fig2's.


def test_prefixed_lines_write_whole_lines_each_with_the_prefix():
    class Sink:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass

    sink = Sink()
    out = PrefixedLines(sink, "[fig1] ")
    out.write("first li")
    assert sink.writes == []  # nothing until the line is whole
    out.write("ne\nsecond\nthi")
    out.write("rd 10%\r")  # a progress bar redrawn in place: its own line
    out.write("last words")
    out.close()  # an unfinished line is finished
    assert sink.writes == ["[fig1] first line\n[fig1] second\n", "[fig1] third 10%\r", "[fig1] last words\n"]


def test_run_and_aggregate_prefix_their_lines_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PREFIX_ENV, "1")
    assert main(["aggregate", "fig2", "--profile", "quick", "--results", str(tmp_path)]) == 2  # nothing to aggregate there
    err = capsys.readouterr().err
    assert err.startswith("[fig2] error: ") and err.endswith("\n")
    monkeypatch.setenv(PREFIX_ENV, "0")  # negative control: off, no prefix
    assert main(["aggregate", "fig2", "--profile", "quick", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
