"""Every command the README shows is one that works: make targets exist, figure parameters
exist and have the right types, and command-line flags are the commands' own. Nothing is
run; the commands are expanded (``make -n``) and parsed, and their parameters checked."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

import nfstudy_experiments
from nfstudy import cli
from nfstudy.params import resolve
from nfstudy.train import _parser as train_parser

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The shell commands in README.md's ```bash blocks: continuation lines joined,
    comments dropped."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                found.append(shlex.join(words))
    return found


COMMANDS = readme_commands()


def _words(command: str) -> list[str]:
    """The command without leading ``NAME=value`` environment assignments."""
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words.pop(0)
    return words


def check_nfstudy(argv: list[str]) -> None:
    """Parse ``python -m nfstudy ARGS``; for ``run``, resolve the figure's parameters as
    ``nfstudy run`` does before it starts a kernel."""
    args = cli._parser().parse_args(argv)
    if argv[0] == "run":
        module = nfstudy_experiments.load(args.figure)
        resolve(module.PROFILES, args.profile, cli._overrides(args))


def test_the_readme_shows_commands_of_every_kind():
    kinds = {_words(c)[0] for c in COMMANDS}
    assert {"make", "python", "torchrun"} <= kinds, kinds
    assert any(_words(c)[:2] == ["make", "quick"] for c in COMMANDS)
    assert any(_words(c)[:2] == ["make", "test"] for c in COMMANDS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if _words(c)[0] == "make"])
def test_make_command(command):
    words = _words(command)
    done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    for line in done.stdout.splitlines():  # every figure run it would start
        argv = shlex.split(line)
        if "nfstudy" in argv and "run" in argv:
            check_nfstudy(argv[argv.index("nfstudy") + 1 :])


@pytest.mark.parametrize("command", [c for c in COMMANDS if _words(c)[0] in ("python", "torchrun")])
def test_python_command(command):
    words = _words(command)
    module = words[words.index("-m") + 1]
    argv = words[words.index("-m") + 2 :]
    if module == "nfstudy":
        check_nfstudy(argv)
    elif module == "nfstudy.train":
        train_parser().parse_args(argv)
    else:
        pytest.fail(f"README runs a module the test does not know: {module}")


def test_a_wrong_parameter_would_be_caught():
    with pytest.raises(Exception, match="agc_lambda"):
        check_nfstudy(["run", "fig1", "--profile", "quick", "-p", "agc_lambda", "-1"])
    with pytest.raises(Exception, match="nosuch"):
        check_nfstudy(["run", "fig1", "--profile", "quick", "-p", "nosuch", "1"])
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--out", "x", "--epochs", "1", "--nosuch"])
