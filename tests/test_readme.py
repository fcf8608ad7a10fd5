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


# The README's figure sections stay true: each figure of the registry has one, with its
# command, its picture in the gallery, a link to its parameters in the generated reference,
# and its claims table, one row per claim of the gallery's claims.csv with that row's outcome
# and seed counts. Long text goes to docs/; the README stays a short guide.
README_MAX_BYTES = 20480


def test_the_readme_is_a_short_guide():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (at most {README_MAX_BYTES}): move detail into docs/"


def _figure_sections() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    sections = {}
    for part in re.split(r"\n(?=### )", text):
        found = re.match(r"### .*\(`make (\w+)`\)", part)
        if found:
            sections[found.group(1)] = part.split("\n## ")[0]
    return sections


def _claims_rows(section: str) -> list[list[str]]:
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| claim |")]
    return [re.split(r"(?<!\\)\|", line)[1:-1] for line in rows]


@pytest.mark.parametrize("figure", nfstudy_experiments.FIGURES)
def test_the_readme_has_the_figure(figure):
    import pandas as pd

    section = _figure_sections().get(figure)
    assert section is not None, f"README.md has no section '### ... (`make {figure}`)'"
    picture = f"results/{figure}/quick/{figure}.png"
    assert f"({picture})" in section and (ROOT / picture).exists(), picture
    assert f"(docs/reference.md#{figure})" in section
    assert f"make {figure} PROFILE=quick" in section
    claims = pd.read_csv(ROOT / "results" / figure / "quick" / "claims.csv")
    rows = _claims_rows(section)
    assert len(rows) == len(claims), f"{figure}: {len(rows)} claims rows in README.md, {len(claims)} in the gallery"
    for cells, (_, claim) in zip(rows, claims.iterrows()):
        quick = cells[-1]
        assert claim.outcome in quick.replace("**", ""), (figure, claim.claim, quick)
        assert f"{claim.n_passed}/{claim.n_evaluable}" in quick, (figure, claim.claim, quick)
