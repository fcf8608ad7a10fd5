"""One module per figure: its parameters, profiles and ``run(...)`` returning tidy tables.

Every module ``experiments.<figure>`` defines

* ``Params``: a frozen dataclass of the figure's parameters (checked on creation);
* ``PROFILES = {"paper": Params(...), "quick": Params(...)}``;
* ``run(params, *, seed, device) -> dict[str, pandas.DataFrame]``: tidy tables, no
  plotting and no files (the notebook saves them through ``nfstudy.runs``).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from nfstudy.params import check_choice, resolve

__all__ = ["available", "load", "params_for"]


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(figure: str) -> ModuleType:
    check_choice("figure", figure, available())
    return importlib.import_module(f"{__name__}.{figure}")


def params_for(figure: str, profile: str, **overrides: Any):
    """The parameters of ``figure`` under ``profile`` with ``overrides`` (None = profile's)."""
    return resolve(load(figure).PROFILES, profile, overrides)
