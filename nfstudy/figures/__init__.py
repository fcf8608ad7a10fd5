"""What each figure draws and what it claims, from its result tables alone.

One module per figure, ``nfstudy.figures.<figure>``, with

* ``plot(tables) -> matplotlib.figure.Figure``: the figure for one seed's tables or for
  several seeds' tables concatenated (then with mean +- band across seeds);
* ``claims(tables) -> list[nfstudy.claims.Claim]``: the paper's claims, measured on one
  seed's tables.

``tables`` maps a table name (the CSV's stem) to a DataFrame with a ``seed`` column.
Being built from the CSVs alone, both work on results copied from another machine.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ..params import check_choice

__all__ = ["available", "load"]


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(figure: str) -> ModuleType:
    check_choice("figure", figure, available())
    return importlib.import_module(f"{__name__}.{figure}")
