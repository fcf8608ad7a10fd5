"""The figures: one module per figure, each holding the figure's whole definition.

Installed under the import name ``nfstudy_experiments`` (pyproject.toml maps it to this
folder, so that installing nfstudy adds no generic top-level name ``experiments``). Every
module ``nfstudy_experiments.<figure>`` defines

* its docstring: the paper and the protocol;
* ``TITLE``: the figure's title, as the report prints it;
* ``Params``: a frozen dataclass of the figure's parameters (checked on creation), and
  ``PROFILES = {"paper": Params(...), "quick": Params(...)}``;
* ``TABLES``: the tables ``run`` returns, ``{table: {column: description}}``, the columns
  in order (a saved table has a leading ``seed`` column besides);
* ``run(params, *, seed, device) -> dict[str, pandas.DataFrame]``: those tables, tidy, no
  plotting and no files (the notebook saves them through ``nfstudy.runs``);
* ``plot(tables) -> matplotlib.figure.Figure``: the figure for one seed's tables or for
  several seeds' tables concatenated (then with mean +- band across seeds);
* ``claims(tables) -> list[nfstudy.claims.Claim]``: the paper's claims, measured on one
  seed's tables.

``plot`` and ``claims`` take the tables as saved (with ``seed``): being built from the CSVs
alone, they work on results copied from another machine.

:data:`FIGURES` is the one list of figures, in the report's order: Bjorck et al.'s, then
the NF papers'. Each has its papermill template ``notebooks/<figure>.ipynb`` (a test keeps
the two lists equal).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from nfstudy.params import check_choice, resolve

__all__ = ["FIGURES", "execution_only", "load", "params_for"]

FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "agc", "spp")


def load(figure: str) -> ModuleType:
    """The module of ``figure`` (one of :data:`FIGURES`)."""
    check_choice("figure", figure, FIGURES)
    return importlib.import_module(f"{__name__}.{figure}")


def execution_only() -> tuple[str, ...]:
    """The parameters that say how a run executes, not what it measures
    (``_common.EXECUTION_ONLY``): no part of a run's configuration (nfstudy.identity)."""
    from ._common import EXECUTION_ONLY

    return EXECUTION_ONLY


def params_for(figure: str, profile: str, **overrides: Any):
    """The parameters of ``figure`` under ``profile`` with ``overrides`` (None = profile's)."""
    return resolve(load(figure).PROFILES, profile, overrides)
