"""The generated reference (docs/reference.md) is current, and field comments are read back
from the source as written: '#' or quotes inside a comment or a string, fields without a
comment, defaults written over several lines, fields inherited from a base."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from nfstudy import cli
from nfstudy.cli import figure_modules
from nfstudy.reference import REGENERATE, field_docs, markdown

ROOT = Path(__file__).resolve().parents[1]


def test_docs_reference_is_current():
    expected = markdown(figure_modules())
    found = (ROOT / "docs" / "reference.md").read_text()
    assert found == expected, f"docs/reference.md is out of date: regenerate it with `{REGENERATE}`"


def test_the_command_prints_the_reference(capsys):
    assert cli.main(["list", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown(figure_modules())


@dataclasses.dataclass(frozen=True)
class _Base:
    depth: int = 110  # ResNet depth, 6n+2
    init: str = "xavier_uniform"  # the base's words


@dataclasses.dataclass(frozen=True)
class _Example(_Base):
    label: str = "a # b"  # not '#' in the string: this one, with "quotes" and a # inside
    plain: int = 3
    spread: tuple[int, ...] = (
        1,
        2,
    )  # a default over three lines
    # The comment block above a field that has no trailing comment,
    # over two lines.
    above: float = 0.5
    init: str = "kaiming_fan_out"


def test_field_docs_reads_trailing_comments():
    docs = field_docs(_Example)
    assert list(docs) == ["depth", "init", "label", "plain", "spread", "above"]
    assert docs["label"] == "not '#' in the string: this one, with \"quotes\" and a # inside"
    assert docs["plain"] == ""
    assert docs["spread"] == "a default over three lines"
    assert docs["above"] == "The comment block above a field that has no trailing comment, over two lines."
    assert docs["depth"] == "ResNet depth, 6n+2"  # inherited
    assert docs["init"] == "the base's words"  # redeclared without a comment: the base's is kept


def test_markdown_renders_parameters_and_tables():
    module = SimpleNamespace(
        TITLE="A test figure",
        Params=_Example,
        PROFILES={"paper": _Example(), "quick": _Example(depth=20, spread=(3,))},
        TABLES={"things": {"seed": "the seed", "value": "|x| in nats"}},
    )
    page = markdown({"figx": module})
    assert "## figx\n\nA test figure\n" in page
    assert "| `depth` | `int` | `110` | `20` | ResNet depth, 6n+2 |" in page
    assert "| `spread` | `tuple[int, ...]` | `1, 2` | `3` | a default over three lines |" in page
    assert "| `plain` | `int` | `3` | same |  |" in page
    assert "| `things.csv` | `value` | \\|x\\| in nats |" in page
    undeclared = markdown({"figx": SimpleNamespace(**{**vars(module), "TABLES": None})})
    assert "(schema not declared)" in undeclared
