"""Every figure's claims and plot work from the tables a seed folder holds.

On the committed gallery's seed 0 of each figure (the real tables, as a clone has them):
with any one table removed, or any one series removed (from every table, or from one
table only), ``claims`` returns claims and never raises; without a table, a claim keeps
its value or is "not evaluable" saying which table it needs. ``plot`` draws what it can and names what it left out.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from nfstudy import runs
from nfstudy.claims import OUTCOMES, Claim
from nfstudy_experiments import FIGURES, load

GALLERY = Path(__file__).resolve().parent.parent / "results"
# Series-like columns: what a "series" of each figure is (fig7 compares numbers of factors).
SERIES_COLUMN = {"fig7": "factors"}


def _gallery_tables(figure: str) -> dict[str, pd.DataFrame]:
    folder = GALLERY / figure / "quick" / "seed=0"
    if not folder.is_dir():
        pytest.fail(f"the committed gallery has no {folder}: the tests read its tables")
    return runs.read_tables(folder)


def _tiny_fig4_tables() -> dict[str, pd.DataFrame]:
    """fig4's two tables from a tiny run (the gallery's fig4 seeds lack channel_moments for now)."""
    from nfstudy_experiments import params_for

    params = params_for("fig4", "quick", depth=20, layers=(2, 10, 18), batch_size=16, n_fractions=3)
    return {name: t.assign(seed=0) for name, t in load("fig4").run(params, seed=0, device="cpu").items()}


@pytest.fixture(scope="module", params=[*FIGURES, "fig4-tiny"])
def gallery(request):
    figure = request.param
    tables = _tiny_fig4_tables() if figure == "fig4-tiny" else _gallery_tables(figure)
    module = load(figure.removesuffix("-tiny"))
    return figure, module, tables, module.claims(tables)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _check(found, full: list[Claim], removed: str, same_values: bool = True) -> None:
    """Every claim is a Claim with an outcome, a not-evaluable one says why; with
    ``same_values``, an evaluable claim with the full run's statement and metric keeps its
    value (a table a claim does not need cannot change it; a series can: "every run" is
    then fewer runs)."""
    assert isinstance(found, list) and all(isinstance(c, Claim) for c in found)
    by_statement = {c.claim: c for c in full}
    for c in found:
        assert c.outcome in OUTCOMES
        before = by_statement.get(c.claim)
        if c.outcome == "not evaluable":
            assert c.note, f"{c.claim!r} is not evaluable without {removed} but does not say why"
            continue
        if before is not None and not math.isnan(float(before.value)):  # a series or table gone is not evaluable, not failed
            assert not math.isnan(float(c.value)), f"{c.claim!r} is {c.outcome} with no value without {removed}: not evaluable, saying why"
        if same_values and before is not None and before.metric == c.metric:
            assert _same(float(c.value), float(before.value)), f"{c.claim!r}: {before.value} with every table, {c.value} without {removed}"


# Figures whose committed seeds do not yet hold every table (strict: once they do, this
# test fails until the entry is removed).
INCOMPLETE: dict[str, str] = {}


@pytest.mark.parametrize(
    "figure", [pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=INCOMPLETE[f])) if f in INCOMPLETE else f for f in FIGURES]
)
def test_the_gallery_holds_every_table_and_rederives_every_claim(figure):
    """Seeds 0-4 hold every table their run wrote, and the claims worked out from them
    are the committed ones (same statements and outcomes; values equal to float64
    round-off: the tables went through CSV, the committed claims did not)."""
    folders = runs.seed_dirs(figure, "quick", GALLERY)
    assert [f.name for f in folders] == [f"seed={s}" for s in range(5)]
    assert runs.missing_tables(folders, exclude=()) == {}
    module = load(figure)
    for folder in folders:
        derived = module.claims(runs.read_tables(folder))
        committed = runs.read_table(folder, "claims")
        assert [c.claim for c in derived] == committed["claim"].tolist(), folder
        assert [c.outcome for c in derived] == committed["outcome"].tolist(), folder
        assert [float(c.value) for c in derived] == pytest.approx(committed["value"].tolist(), rel=1e-12, nan_ok=True), folder


def test_claims_without_any_one_table_are_returned_not_evaluable_where_needed(gallery):
    figure, module, tables, full = gallery
    for name in tables:
        rest = {k: v for k, v in tables.items() if k != name}
        found = module.claims(rest)
        _check(found, full, name)
        if full:
            assert found, f"{figure}: no claims at all without {name}"
        before = {c.claim: c.outcome for c in full}
        changed = [c for c in found if c.outcome == "not evaluable" and before.get(c.claim) != "not evaluable"]
        assert all(name in c.note for c in changed), [c.note for c in changed]
        if not changed:  # a table the claims do not use: the same claims
            assert [(c.claim, c.outcome) for c in found] == [(c.claim, c.outcome) for c in full], f"{figure} without {name}"
    found = module.claims({})
    assert found and all(c.outcome == "not evaluable" for c in found), f"{figure}: claims of no tables at all"


def _series(figure: str, tables: dict[str, pd.DataFrame]) -> tuple[str, list]:
    column = SERIES_COLUMN.get(figure, "series")
    values = [v for t in tables.values() if column in t for v in t[column].unique()]
    return column, list(dict.fromkeys(values))


def test_claims_without_any_one_series_never_raise(gallery):
    figure, module, tables, full = gallery
    column, series = _series(figure, tables)
    assert len(series) >= 2, f"{figure}: the gallery's tables name no series in {column!r}"
    for s in series:
        everywhere = {k: (t[t[column] != s] if column in t else t) for k, t in tables.items()}
        _check(module.claims(everywhere), full, f"series {s}", same_values=False)
        for name, t in tables.items():  # one table lacking a series the others have
            if column in t:
                _check(module.claims({**tables, name: t[t[column] != s]}), full, f"series {s} of {name}", same_values=False)


def _texts(fig) -> str:
    return " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def test_plots_draw_what_they_can_and_name_the_absent_table(gallery, capsys):
    figure, module, tables, full = gallery
    for name in tables:
        fig = module.plot({k: v for k, v in tables.items() if k != name})
        text = _texts(fig)
        plt.close(fig)
        said = capsys.readouterr().err
        assert name in text and name in said or not said, f"{figure} without {name}: {said!r}"
    fig = module.plot({})
    assert "not drawn" in _texts(fig)
    plt.close(fig)


def test_the_readmes_pandas_snippet_reads_the_committed_gallery(monkeypatch):
    import re

    root = GALLERY.parent
    blocks = re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), flags=re.S)
    snippet = next(b for b in blocks if "load_table" in b)
    monkeypatch.chdir(root)
    monkeypatch.delenv("NFSTUDY_RESULTS", raising=False)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the README's own lines, as a user pastes them
    frames = [v for v in scope.values() if isinstance(v, pd.DataFrame)]
    assert frames and all(len(f) for f in frames)
    assert sorted(frames[0]["seed"].unique()) == [0, 1, 2, 3, 4]
