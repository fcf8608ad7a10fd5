"""A paper's claim as a measured number against a stated threshold.

Each figure module (``nfstudy.figures.<figure>``) turns one seed's tables into a list
of :class:`Claim`; :func:`claims_table` makes the tidy ``claims.csv`` of that seed and
:func:`across_seeds` the figure-level one (mean, spread, and in how many seeds the
claim held). Thresholds come from the papers' statements, never from our results.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

__all__ = ["COLUMNS", "Claim", "across_seeds", "claims_table"]

COLUMNS = ["figure", "claim", "metric", "value", "comparison", "threshold", "passed"]
_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class Claim:
    claim: str  # the paper's statement, in words
    metric: str  # what was measured, with its unit
    value: float
    comparison: str  # one of > >= < <=
    threshold: float

    def __post_init__(self):
        if self.comparison not in _COMPARE:
            raise ValueError(f"unknown comparison {self.comparison!r}: choose one of {', '.join(_COMPARE)}")

    @property
    def passed(self) -> bool:
        value = float(self.value)
        return not math.isnan(value) and bool(_COMPARE[self.comparison](value, self.threshold))


def claims_table(figure: str, claims: Iterable[Claim]) -> pd.DataFrame:
    """One row per claim: figure, claim, metric, value, comparison, threshold, passed."""
    rows = [
        {
            "figure": figure,
            "claim": c.claim,
            "metric": c.metric,
            "value": float(c.value),
            "comparison": c.comparison,
            "threshold": float(c.threshold),
            "passed": c.passed,
        }
        for c in claims
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def across_seeds(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Claims over seeds: the mean value (and std, min, max), ``n_seeds``, ``n_passed``;
    ``passed`` only when the claim held in every seed."""
    keys = ["figure", "claim", "metric", "comparison", "threshold"]
    if per_seed.empty:
        return pd.DataFrame(columns=[*keys, "value", "value_std", "value_min", "value_max", "n_seeds", "n_passed", "passed"])
    grouped = per_seed.assign(passed=per_seed["passed"].astype(bool)).groupby(keys, sort=False, dropna=False)
    out = grouped.agg(
        value=("value", "mean"),
        value_std=("value", "std"),
        value_min=("value", "min"),
        value_max=("value", "max"),
        n_seeds=("value", "size"),
        n_passed=("passed", "sum"),
    ).reset_index()
    out["n_passed"] = out["n_passed"].astype(int)
    out["passed"] = out["n_passed"] == out["n_seeds"]
    return out[["figure", "claim", "metric", "value", "comparison", "threshold", "passed", "value_std", "value_min", "value_max", "n_seeds", "n_passed"]]
