"""The per-figure parameter and table reference (docs/reference.md), generated from the code.

A figure declares each parameter once, as a field of its ``Params`` dataclass with a
trailing ``# comment``; :func:`field_docs` reads those comments back from the source, and
:func:`markdown` renders, per figure, its parameters (type, paper and quick values,
description) and the columns of its output tables. ``python -m nfstudy list --markdown``
prints it; tests/test_reference.py keeps docs/reference.md equal to it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from collections.abc import Mapping
from typing import Any

__all__ = ["REGENERATE", "field_docs", "markdown"]

REGENERATE = "python -m nfstudy list --markdown > docs/reference.md"


def _class_field_docs(cls: type) -> dict[str, str]:
    """The comments of the annotated fields written in ``cls``'s own body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (built in a REPL, or a C type)
        return {}
    # Comments from the tokenizer, so that a '#' inside a string is not taken for one.
    comments: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string[1:].strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    tree = ast.parse(source)
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        # Comments on the field's own lines (several, for a default spread over lines) ...
        found = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        if not found:  # ... or else the block of comment lines right above it
            n = node.lineno - 1
            while n in comments and n not in code_lines:
                found.insert(0, comments[n])
                n -= 1
        docs[node.target.id] = " ".join(found)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Each field of dataclass ``cls`` -> its comment in the source ("" where it has none).

    The comment is the field's trailing ``# comment`` (joined, for a default written over
    several lines); a field without one takes the comment lines directly above it. Fields
    inherited from a base dataclass take the base's comments unless ``cls`` redeclares them.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update({k: v for k, v in _class_field_docs(klass).items() if v or k not in docs})
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def _value(value: Any) -> str:
    """A parameter value as one would pass it (``-p name value``)."""
    if isinstance(value, tuple | list):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, str):
        return value
    return repr(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _type(field: dataclasses.Field) -> str:
    return field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))


def _figure_section(name: str, module: Any) -> list[str]:
    lines = [f"## {name}", "", f"{module.TITLE}", "", f"`make {name}` · `python -m nfstudy run {name} --profile quick`", ""]
    paper, quick = module.PROFILES["paper"], module.PROFILES["quick"]
    docs = field_docs(module.Params)
    lines += ["| parameter | type | paper | quick | description |", "|---|---|---|---|---|"]
    for field in dataclasses.fields(module.Params):
        p, q = _value(getattr(paper, field.name)), _value(getattr(quick, field.name))
        quick_cell = "same" if q == p else f"`{_cell(q)}`"
        lines.append(f"| `{field.name}` | `{_cell(_type(field))}` | `{_cell(p)}` | {quick_cell} | {_cell(docs[field.name])} |")
    lines += [""]
    tables = getattr(module, "TABLES", None)
    if not tables:
        lines += ["Tables: (schema not declared)", ""]
        return lines
    lines += ["| table | column | description |", "|---|---|---|"]
    for table, columns in tables.items():
        for column, description in columns.items():
            lines.append(f"| `{table}.csv` | `{column}` | {_cell(description)} |")
    lines += [""]
    return lines


def markdown(figures: Mapping[str, Any]) -> str:
    """The reference page for ``figures`` (figure name -> its module: ``TITLE``, ``Params``,
    ``PROFILES`` with "paper" and "quick", ``TABLES`` = {table: {column: description}})."""
    lines = [
        "# Figure reference",
        "",
        f"Generated from the figure modules by `{REGENERATE}`; do not edit by hand",
        "(tests/test_reference.py fails when it is out of date). A parameter is set with",
        '`make <figure> PARAMS="-p name value"` or `python -m nfstudy run <figure> -p name value`;',
        '"same": the quick profile keeps the paper\'s value.',
        "",
        " · ".join(f"[{name}](#{name})" for name in figures),
        "",
    ]
    for name, module in figures.items():
        lines += _figure_section(name, module)
    return "\n".join(lines).rstrip("\n") + "\n"
