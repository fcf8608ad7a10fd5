"""Every command the README and docs/*.md show in a ```bash block works as written. The cheap
ones run: ``python -m nfstudy list ...``, every ``make`` command as a dry run (``make -n``,
its figure runs' parameters resolved as ``nfstudy run`` resolves them) and one figure for
real, with ``NFSTUDY_RESULTS`` in a temporary folder. The others are listed in
:data:`NOT_RUN`, each with the reason, and are parsed by the command's own parser; a new
command in the docs that is in neither list fails the test."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import nfstudy_experiments
from nfstudy import cli
from nfstudy.params import resolve
from nfstudy.train import _parser as train_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]


def doc_commands(name: str) -> list[str]:
    """The shell commands in a Markdown file's ```bash blocks (also indented ones, in list
    items): continuation lines joined, comments dropped."""
    text = (ROOT / name).read_text()
    found = []
    for indent, block in re.findall(r"^( *)```bash\n(.*?)^\1```", text, flags=re.S | re.M):
        lines = [line.removeprefix(indent) for line in block.splitlines()]
        for line in "\n".join(lines).replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                found.append(shlex.join(words))
    return found


def readme_commands() -> list[str]:
    return doc_commands("README.md")


COMMANDS = readme_commands()
# Every command of the README and the docs, once, in order.
ALL_COMMANDS = list(dict.fromkeys(c for name in DOCS for c in doc_commands(name)))

# Commands that run for real here (cheap; no file of the checkout is written).
RUN = {
    "python -m nfstudy list",
    "python -m nfstudy list fig2",
    "NFSTUDY_RESULTS=/tmp/mine make fig7 PROFILE=quick",  # also `make fig7 PROFILE=quick`, into a temporary folder
}
# The commands that are not run, and why; each is still parsed by its own parser (and every
# `make` command, these included, is dry-run).
NOT_RUN = {
    "make quick": "every figure at small scale, ~25 minutes on 2 cores (CI runs it after make test)",
    "make test": "this test suite",
    "python -m nfstudy run fig2 --profile quick --seeds 0 1 --param depth=56": "two seeds of a ResNet-56, minutes",
    "python -m nfstudy run fig1 --seeds 0-4 --launcher slurm --partition gpu": "needs SLURM and GPUs",
    "python -m nfstudy run fig1 --seeds 0-4 --launcher slurm --partition gpu --gpus-per-job 1 --timeout-min 600": "needs SLURM and GPUs",
    "python -m nfstudy aggregate fig1 --profile paper": "needs fig1's paper-profile seeds (days of GPU training)",
    "python -m nfstudy claims fig2 --profile quick": "rewrites the gallery where claims changed; test_rederive_claims.py runs it",
    "torchrun --nproc_per_node 4 -m nfstudy.train --model resnet110 --norm bn --epochs 165 --lr 0.1 --sync-batchnorm --out runs/bn-4gpu": (
        "needs 4 GPUs and CIFAR-10"
    ),
    "python -m nfstudy.train --model resnet110 --norm bn --dataset cifar10 --epochs 165 --lr 0.1 --out runs/bn": (
        "165 epochs of CIFAR-10, hours on a GPU"
    ),
    "pip install -e '.[cluster]'": "installs from a package index (network)",
    "python3 -m pip install -q --no-index --no-deps --target /tmp/site '.whl/*.whl'": "needs the wheels make gpu-wheels downloads",
    "export 'PYTHONPATH=$PWD:/tmp/site'": "sets the environment of the shell it runs in, for the gpu-check after it",
    "cd /tmp '&&' apt-get download dataset-fashion-mnist '&&' dpkg-deb -x 'dataset-fashion-mnist_*.deb' /tmp/fmnist": (
        "downloads a Debian package (network)"
    ),
    "export NFSTUDY_FASHION_MNIST=/tmp/fmnist/usr/share/datasets/fashion-mnist": "sets the environment of the shell, for the runs after it",
}
# make commands on the reader's own data: dry-run, and their parameters resolve up to the data
# itself, which is not here: the error must name that folder and nothing else.
OWN_DATA = {"make fig2 DATASET=imagefolder:/data/my-images 'PARAMS=-p batch_size 64'": "/data/my-images"}


def _env(command: str) -> dict[str, str]:
    """The leading ``NAME=value`` environment assignments of a command."""
    env = {}
    for word in shlex.split(command):
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", word):
            break
        name, _, value = word.partition("=")
        env[name] = value
    return env


def _words(command: str) -> list[str]:
    """The command without leading ``NAME=value`` environment assignments."""
    return shlex.split(command)[len(_env(command)) :]


# make as a user runs it from a shell: under `make test` the environment carries MAKELEVEL and
# MAKEFLAGS, and a make started with them prints "make[1]: Entering directory" on stdout.
TOP_LEVEL_MAKE = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}


def _make_dry_run(words: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, env=TOP_LEVEL_MAKE, capture_output=True, text=True, timeout=60)


def check_nfstudy(argv: list[str]) -> None:
    """Parse ``python -m nfstudy ARGS`` as ``nfstudy.cli.main`` does; for ``run``, resolve the
    figure's parameters as ``nfstudy run`` does before it starts a kernel."""
    args = cli._parser().parse_args(cli._p_as_param(argv))
    if argv[0] == "run":
        module = nfstudy_experiments.load(args.figure)
        resolve(module.PROFILES, args.profile, cli._overrides(args))


def check_python(words: list[str]) -> None:
    """Parse a ``python -m MODULE ...`` or ``torchrun ... -m MODULE ...`` command."""
    module = words[words.index("-m") + 1]
    argv = words[words.index("-m") + 2 :]
    if module == "nfstudy":
        check_nfstudy(argv)
    elif module == "nfstudy.train":
        train_parser().parse_args(argv)
    elif module != "pip":
        pytest.fail(f"the docs run a module the test does not know: {module}")


def test_the_readme_shows_commands_of_every_kind():
    kinds = {_words(c)[0] for c in COMMANDS}
    assert {"make", "python", "torchrun"} <= kinds, kinds
    assert any(_words(c)[:2] == ["make", "quick"] for c in COMMANDS)
    assert any(_words(c)[:2] == ["make", "test"] for c in COMMANDS)
    # how to run without rewriting the committed gallery
    assert any(_env(c).get("NFSTUDY_RESULTS") for c in COMMANDS)


def test_every_command_is_run_dry_run_or_listed_with_a_reason():
    for command in ALL_COMMANDS:
        assert command in RUN or command in NOT_RUN or _words(command)[0] == "make", (
            f"{command!r} is shown in the docs but neither run by this test (RUN) nor listed with a reason (NOT_RUN)"
        )
    stale = sorted((set(RUN) | set(NOT_RUN) | set(OWN_DATA)) - set(ALL_COMMANDS))
    assert not stale, f"no longer in the docs: {stale}"
    assert all(reason.strip() for reason in NOT_RUN.values())


@pytest.mark.parametrize("command", [c for c in ALL_COMMANDS if _words(c)[0] == "make"])
def test_make_command(command):
    done = _make_dry_run(_words(command))
    assert done.returncode == 0, f"{command}: {done.stderr}"
    runs = 0
    for line in done.stdout.splitlines():  # every figure run it would start
        if " -m nfstudy run " in line:
            argv = shlex.split(line)
            if command in OWN_DATA:
                from nfstudy.data import DatasetNotFoundError

                with pytest.raises(DatasetNotFoundError, match=re.escape(OWN_DATA[command])):
                    check_nfstudy(argv[argv.index("nfstudy") + 1 :])
            else:
                check_nfstudy(argv[argv.index("nfstudy") + 1 :])
            runs += 1
    target = next(w for w in _words(command)[1:] if not w.startswith("-") and "=" not in w)
    if target in nfstudy_experiments.FIGURES:
        assert runs >= 1, f"{command} would run no figure: {done.stdout}"


@pytest.mark.parametrize("command", [c for c in ALL_COMMANDS if _words(c)[0] in ("python", "python3", "torchrun")])
def test_python_command_parses(command):
    check_python(_words(command))


def _python(words: list[str]) -> list[str]:
    return [sys.executable, *words[1:]] if words[0] in ("python", "python3") else words


def _titles(listing: str) -> list[str]:
    return [line.split(":")[0] for line in listing.splitlines() if line and not line.startswith(" ")]


def test_list_runs_as_shown(capsys):
    """``python -m nfstudy list fig2`` as a process (the entry point), the rest through
    ``nfstudy.cli.main`` (a process each would import torch again: ~5-10 s apiece)."""
    one = subprocess.run(_python(_words("python -m nfstudy list fig2")), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    assert _titles(one.stdout) == ["fig2"] and "    layer " in one.stdout  # the figure, with its parameters
    assert cli.main(_words("python -m nfstudy list")[3:]) == 0
    assert _titles(capsys.readouterr().out) == list(nfstudy_experiments.FIGURES)
    assert cli.main(["list", "fig7", "fig2"]) == 0
    assert _titles(capsys.readouterr().out) == ["fig7", "fig2"]
    # a figure that does not exist: one line listing the figures
    assert cli.main(["list", "fig9"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"error: unknown figure 'fig9': choose one of {', '.join(nfstudy_experiments.FIGURES)}\n"


def test_an_unknown_make_target_lists_the_figures():
    done = subprocess.run(["make", "fig9"], cwd=ROOT, env=TOP_LEVEL_MAKE, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and done.stdout == ""
    assert "no target 'fig9'" in done.stderr and "No rule to make target" not in done.stderr
    assert f"Figures: {' '.join(sorted(nfstudy_experiments.FIGURES))}." in done.stderr
    assert "quick test report" in done.stderr
    # The catch-all leaves real targets alone: a seed's target, a file of the checkout.
    seed = _make_dry_run(["make", "fig2-seed3", "PROFILE=quick"])
    assert seed.returncode == 0 and "nfstudy run fig2 --profile quick --seed 3" in seed.stdout, seed.stderr
    readme = subprocess.run(["make", "README.md"], cwd=ROOT, env=TOP_LEVEL_MAKE, capture_output=True, text=True, timeout=60)
    assert readme.returncode == 0 and "is up to date" in readme.stdout, readme.stderr


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_figure_runs_as_shown_without_touching_the_gallery(tmp_path):
    """The docs' `NFSTUDY_RESULTS=/tmp/mine make fig7 PROFILE=quick` (the figure's README
    command with the folder set), its folder a temporary one: the run completes there and
    the committed gallery stays byte for byte as it was."""
    command = "NFSTUDY_RESULTS=/tmp/mine make fig7 PROFILE=quick"
    assert command in COMMANDS and "make fig7 PROFILE=quick" in COMMANDS
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv: make runs figures with .venv/bin/python (make setup)")
    if subprocess.run(["make", "-q", ".venv/.installed"], cwd=ROOT).returncode != 0:
        pytest.skip(".venv is older than requirements.lock or pyproject.toml: make would reinstall it first (make setup)")
    gallery = ROOT / "results" / "fig7"
    before = _snapshot(gallery)
    env = {**os.environ, **_env(command), "NFSTUDY_RESULTS": str(tmp_path / "mine")}
    done = subprocess.run(_words(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import pandas as pd

    claims = pd.read_csv(tmp_path / "mine" / "fig7" / "quick" / "claims.csv")
    assert len(claims) >= 1 and (claims["n_seeds"] == 1).all() and (claims["n_evaluable"] == 1).all()
    assert (tmp_path / "mine" / "fig7" / "quick" / "seed=0" / "run.json").is_file()
    assert _snapshot(gallery) == before


def test_a_wrong_parameter_would_be_caught():
    with pytest.raises(Exception, match="agc_lambda"):
        check_nfstudy(["run", "fig1", "--profile", "quick", "-p", "agc_lambda", "-1"])
    with pytest.raises(Exception, match="nosuch"):
        check_nfstudy(["run", "fig1", "--profile", "quick", "-p", "nosuch", "1"])
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--out", "x", "--epochs", "1", "--nosuch"])
    with pytest.raises(SystemExit):  # a subcommand or option the CLI does not have
        check_nfstudy(["list", "--nosuch"])


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
