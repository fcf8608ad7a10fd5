import math
from dataclasses import replace

import pandas as pd
import pytest

from nfstudy_experiments import _init_survey as survey


def test_scaled_layers_keep_the_paper_s_layers_at_depth_110():
    assert survey.scaled_layers(survey.FIG5_LAYERS, 110) == survey.FIG5_LAYERS
    assert survey.scaled_layers((55,), 20) == (10,)
    assert survey.scaled_layers((6, 110), 8) == (1, 8)


@pytest.mark.parametrize(
    "magnitude, value, paper, factor",
    [
        ("max |g| layer 55", 0.4, 4.0, 10.0),
        ("max |g| layer 55", 40.0, 4.0, 10.0),
        ("min channel mean layer 8", 0.3, -0.6, math.inf),  # the wrong sign misses entirely
        ("log10 avg channel |mean| layer 110", 2.5, 3.5, 10.0),
        ("ln avg channel |mean| layer 110", 2.5, 3.5, math.e),
        ("min over layers log10 channel |mean|, std", -3.5, -1.5, 100.0),
        ("diverged at lr 0.1 (1 = yes)", 0.0, 1.0, math.inf),
        ("diverged at lr 0.1 (1 = yes)", 1.0, 1.0, 1.0),
        ("top-1 share of the commonest class", 0.5, 1.0, math.inf),
    ],
)
def test_miss_factor(magnitude, value, paper, factor):
    assert survey.miss_factor(magnitude, value, paper) == pytest.approx(factor)


def test_miss_factor_of_a_non_finite_measurement_is_infinite():
    assert survey.miss_factor("max channel variance layer 80", math.inf, 5e16) == math.inf
    assert math.isnan(survey.miss_factor("logit std", 3.0, math.nan))


def _table(values: dict[str, dict[tuple, float]]) -> pd.DataFrame:
    rows = [
        dict(init=init, network=n, figure=f, magnitude=m, value=v, data="constructed")
        for init, found in values.items()
        for (f, n, m), v in found.items()
    ]
    return survey.with_paper_values(pd.DataFrame(rows))


def test_ranking_puts_the_init_on_the_paper_s_numbers_first():
    on_paper = dict(survey.PAPER)
    off = {k: (v * 1e3 if v > 0 else v) for k, v in survey.PAPER.items()}  # every positive scale 1000x off
    ranked = survey.ranking(survey.comparison(_table({"off": off, "on": on_paper})))
    assert list(ranked["init"])[:2] == ["on", "on"]
    on = ranked[ranked["init"] == "on"]
    assert (on["matched"] == on["of"]).all() and (on["geomean_factor"] == 1.0).all()
    off_rows = ranked[ranked["init"] == "off"]
    assert (off_rows["matched"] < off_rows["of"]).all()


def test_ranking_scores_each_fig5_base_without_the_other():
    """The paper's 3.5 read as log10 and as ln cannot both be met: each base is scored alone."""
    key10 = ("fig5", "none", "log10 avg channel |mean| layer 110")
    key_e = ("fig5", "none", "ln avg channel |mean| layer 110")
    value = 3.5  # on the paper's number in base 10, and so 3.5 * ln(10) = 8.06 in base e
    table = _table({"x": {key10: value, key_e: value * math.log(10)}})
    ranked = survey.ranking(survey.comparison(table)).set_index("fig5_base")
    assert ranked.loc["log10", "matched"] == 1 and ranked.loc["log10", "of"] == 1
    assert ranked.loc["ln", "matched"] == 0  # e ** 4.56 = 96 off


@pytest.mark.slow
def test_every_paper_magnitude_is_measured_and_the_report_lists_every_init(tmp_path):
    """A tiny survey (ResNet-14, the paper's layers rescaled) emits every magnitude the paper gives."""
    s = replace(
        survey.PRESETS["cpu"],
        inits=("xavier_uniform", "pytorch_default"),
        depth=14,
        batch_size=16,
        fig4_fractions=2,
        train_epochs=1,
        train_epochs_fast=1,
    )
    table = survey.measure(s, "cpu")
    measured = set(zip(table["figure"], table["network"], table["magnitude"]))
    assert set(survey.PAPER) <= measured
    assert table.loc[table["paper_value"].notna()].groupby("init").size().eq(len(survey.PAPER)).all()
    text = survey.report(table, s, "cpu")
    assert "| paper | xavier_uniform | pytorch_default |" in text


def test_last_finite_fraction_stops_at_the_first_overflow():
    nan, inf = math.nan, math.inf
    x = pd.DataFrame({"fraction": [0, 0, 0.5, 0.5, 1, 1], "variance": [1, 2, 3, nan, 4, 5]})
    assert survey._last_finite_fraction(x) == 0.0  # 0.5 overflowed, so 1.0 (finite again) does not count
    x = pd.DataFrame({"fraction": [0, 0.5, 1], "variance": [1, 2, inf]})
    assert survey._last_finite_fraction(x) == 0.5
    x = pd.DataFrame({"fraction": [0, 0.5, 1], "variance": [1, 2, 3]})
    assert survey._last_finite_fraction(x) == 1.0
