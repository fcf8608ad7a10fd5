"""A paper's claim as a measured number against a stated threshold or band.

Each figure module (``experiments/<figure>.py``) turns one seed's tables into a list of
:class:`Claim`; :func:`claims_table` makes the tidy ``claims.csv`` of that seed and
:func:`across_seeds` the figure-level one. Thresholds come from the papers' statements,
never from our results: where a paper gives a magnitude the claim is a two-sided band
(``comparison="between"``, :func:`near`), where it says "larger" or "lower" a margin.

A claim has one of three outcomes:

* ``passed`` / ``failed``: the measured value against the threshold (NaN never passes);
* ``not evaluable``: the run cannot decide it (say the runs it compares never converged);
  the claim says why in ``note`` and counts neither way.

and one of three kinds:

* ``paper``: a claim of the reproduced paper: it counts toward the reproduction score;
* ``extension``: beyond the paper (NF-ResNets, AGC from the NFNets papers): counted apart;
* ``sanity``: a theorem or a property of the set-up: reported, never counted.

Over seeds a claim passes when it passed in at least :data:`SEED_RULE` of the seeds where
it was evaluable; it is not evaluable when fewer than half of the seeds could decide it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

__all__ = [
    "COLUMNS",
    "KINDS",
    "OUTCOMES",
    "SEED_RULE",
    "SUMMARY_COLUMNS",
    "Claim",
    "across_seeds",
    "claims_table",
    "near",
    "normalize",
    "score",
]

COLUMNS = ["figure", "claim", "kind", "metric", "value", "comparison", "threshold", "threshold_high", "outcome", "passed", "note"]
SUMMARY_COLUMNS = [*COLUMNS, "value_std", "value_min", "value_max", "n_seeds", "n_evaluable", "n_passed"]
KINDS = ("paper", "extension", "sanity")
OUTCOMES = ("passed", "failed", "not evaluable")
# A claim holds over seeds when it held in at least this fraction of the seeds that could
# decide it (4 of 5, 3 of 3, 2 of 2, 1 of 1).
SEED_RULE = 0.8
_COMPARE = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(frozen=True)
class Claim:
    claim: str  # the paper's statement, in words (with its number where it gives one)
    metric: str  # what was measured, with its unit
    value: float
    comparison: str  # one of > >= < <= between
    threshold: float  # the bound; with "between" the lower bound
    threshold_high: float = math.nan  # with "between": the upper bound (inclusive)
    kind: str = "paper"  # paper | extension | sanity
    evaluable: bool = True  # False: the run cannot decide the claim; ``note`` says why
    note: str = ""

    def __post_init__(self):
        if self.comparison not in (*_COMPARE, "between"):
            raise ValueError(f"unknown comparison {self.comparison!r}: choose one of {', '.join(_COMPARE)}, between")
        if self.kind not in KINDS:
            raise ValueError(f"unknown claim kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.comparison == "between" and not self.threshold <= self.threshold_high:
            raise ValueError(f"a 'between' claim needs threshold <= threshold_high, got {self.threshold} and {self.threshold_high}")
        if not self.evaluable and not self.note:
            raise ValueError(f"claim {self.claim!r} is not evaluable: say why in note")

    @property
    def outcome(self) -> str:
        if not self.evaluable:
            return "not evaluable"
        value = float(self.value)
        if math.isnan(value):
            return "failed"
        if self.comparison == "between":
            ok = self.threshold <= value <= self.threshold_high
        else:
            ok = bool(_COMPARE[self.comparison](value, self.threshold))
        return "passed" if ok else "failed"

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


def near(target: float, factor: float) -> dict:
    """A two-sided band around a magnitude the paper gives: ``target / factor .. target * factor``
    (for ``Claim(..., **near(100, 10))``)."""
    if not target > 0 or not factor >= 1:
        raise ValueError(f"near() needs a positive target and a factor >= 1, got {target}, {factor}")
    return {"comparison": "between", "threshold": target / factor, "threshold_high": target * factor}


def claims_table(figure: str, claims: Iterable[Claim]) -> pd.DataFrame:
    """One row per claim, columns :data:`COLUMNS`."""
    rows = [
        {
            "figure": figure,
            "claim": c.claim,
            "kind": c.kind,
            "metric": c.metric,
            "value": float(c.value),
            "comparison": c.comparison,
            "threshold": float(c.threshold),
            "threshold_high": float(c.threshold_high),
            "outcome": c.outcome,
            "passed": c.passed,
            "note": c.note,
        }
        for c in claims
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def normalize(per_seed: pd.DataFrame) -> pd.DataFrame:
    """A claims table written before claims had kinds and outcomes, read as one: every claim
    of kind ``paper``, its outcome from ``passed``."""
    out = per_seed.copy()
    if "kind" not in out:
        out["kind"] = "paper"
    if "threshold_high" not in out:
        out["threshold_high"] = math.nan
    if "note" not in out:
        out["note"] = ""
    if "outcome" not in out:
        out["outcome"] = out["passed"].map(lambda p: "passed" if p is True or str(p) == "True" else "failed")  # NaN never passes
    out["note"] = [n if isinstance(n, str) else "" for n in out["note"]]  # an empty note reads back as NaN
    out["outcome"] = out["outcome"].where(out["outcome"].isin(OUTCOMES), "failed")  # a damaged row never passes
    if "value" in out:  # nor does a NaN value (a cut or edited row)
        out.loc[(out["outcome"] == "passed") & pd.to_numeric(out["value"], errors="coerce").isna(), "outcome"] = "failed"
    out["passed"] = out["outcome"] == "passed"
    return out


def _seed_outcome(n_evaluable: int, n_passed: int, n_seeds: int) -> str:
    if n_evaluable == 0 or 2 * n_evaluable < n_seeds:
        return "not evaluable"
    # 4 of 5 is SEED_RULE to the bit only if 0.8 * 5 rounds to 4: a margin far below one seed
    # and far above float64 rounding decides the tie for the rule, not for the rounding.
    return "passed" if n_passed >= SEED_RULE * n_evaluable - 1e-9 else "failed"


def across_seeds(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Claims over seeds, columns :data:`SUMMARY_COLUMNS`: the value's mean, std, min and
    max over the seeds where the claim was evaluable; ``n_seeds``, ``n_evaluable``,
    ``n_passed``; the outcome by :data:`SEED_RULE`; the notes of the seeds, joined."""
    keys = ["figure", "claim", "kind", "metric", "comparison", "threshold", "threshold_high"]
    if per_seed.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    table = normalize(per_seed)
    table["evaluable"] = table["outcome"] != "not evaluable"
    table["value_evaluable"] = table["value"].where(table["evaluable"])
    grouped = table.groupby(keys, sort=False, dropna=False)
    out = grouped.agg(
        value=("value_evaluable", "mean"),
        value_std=("value_evaluable", "std"),
        value_min=("value_evaluable", "min"),
        value_max=("value_evaluable", "max"),
        n_seeds=("value", "size"),
        n_evaluable=("evaluable", "sum"),
        n_passed=("passed", "sum"),
        note=("note", lambda notes: "; ".join(dict.fromkeys(n for n in notes if n))),
    ).reset_index()
    for column in ("n_evaluable", "n_passed"):
        out[column] = out[column].astype(int)
    out["outcome"] = [_seed_outcome(e, p, n) for e, p, n in zip(out["n_evaluable"], out["n_passed"], out["n_seeds"], strict=True)]
    out["passed"] = out["outcome"] == "passed"
    return out[SUMMARY_COLUMNS]


def score(claims: pd.DataFrame, kind: str = "paper") -> tuple[int, int]:
    """(passed, evaluable) among the claims of ``kind``: sanity checks never count."""
    rows = normalize(claims)
    rows = rows[(rows["kind"] == kind) & (rows["outcome"] != "not evaluable")]
    return int(rows["passed"].sum()), len(rows)
