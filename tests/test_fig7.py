"""Figure 7: singular values of products of random Gaussian matrices."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from nfstudy.cli import main
from nfstudy.randmat import fuss_catalan_edge, gaussian_product, product_singular_values
from nfstudy_experiments import fig7


def test_fuss_catalan_edges():
    assert fuss_catalan_edge(1) == 2.0  # Marchenko-Pastur, square
    assert fuss_catalan_edge(3) == pytest.approx(math.sqrt(256 / 27))
    assert fuss_catalan_edge(5) == pytest.approx(math.sqrt(6**6 / 5**5))


def test_singular_values_are_those_of_the_explicit_product():
    g = torch.Generator().manual_seed(7)
    product = gaussian_product(40, 3, g)
    g = torch.Generator().manual_seed(7)
    factors = [torch.randn(40, 40, generator=g, dtype=torch.float64) / math.sqrt(40) for _ in range(3)]
    torch.testing.assert_close(product, factors[2] @ factors[1] @ factors[0])
    sv = product_singular_values(40, 3, samples=2, seed=7)
    torch.testing.assert_close(sv[0], torch.linalg.svdvals(product))
    assert (sv[:, :-1] >= sv[:, 1:]).all()  # descending


def test_one_factor_follows_the_quarter_circle_law():
    sv = product_singular_values(300, 1, samples=4, seed=0).numpy()
    assert (sv**2).mean() == pytest.approx(1.0, abs=0.02)  # N(0, 1/n) entries preserve the norm
    # density (1/pi) sqrt(4 - s^2) on [0, 2]: P(s < 0.1) = 0.0637
    below = (sv < 0.1).mean()
    assert below == pytest.approx(0.0637, abs=0.015)
    assert sv.max() == pytest.approx(2.0, rel=0.05)


def test_experiment_numbers_and_claims():
    from nfstudy_experiments import fig7, params_for

    tables = fig7.run(params_for("fig7", "quick", size=200, samples=3), seed=0, device="cpu")
    # the columns and their order are the module's TABLES (the one owner of the schema)
    assert {n: list(t.columns) for n, t in tables.items()} == {n: list(fig7.TABLES[n]) for n in tables}
    values, summary = tables["singular_values"], tables["singular_value_summary"]
    assert len(values) == 3 * 3 * 200 and summary["factors"].tolist() == [1, 3, 5]
    np.testing.assert_allclose(summary["mean_square"], 1.0, atol=0.05)
    assert summary["frac_small"].is_monotonic_increasing and summary["largest"].is_monotonic_increasing
    recount = values.groupby("factors")["singular_value"].apply(lambda s: (s < 0.1).mean()).to_numpy()
    np.testing.assert_allclose(summary["frac_small"], recount)
    claims = fig7.claims({k: v.assign(seed=0) for k, v in tables.items()})
    assert [c.outcome for c in claims] == ["passed"] * 6
    assert {c.kind for c in claims} == {"sanity"}  # theorems: never counted as the paper's
    again = fig7.run(params_for("fig7", "quick", size=200, samples=3), seed=0, device="cpu")
    pd.testing.assert_frame_equal(again["singular_values"], values)


def _summary(largest: list[float], frac_small: list[float], factors=(1, 3, 5)) -> dict[str, pd.DataFrame]:
    rows = [
        {"seed": 0, "factors": k, "largest": big, "frac_small": f, "edge": fuss_catalan_edge(k), "small": 0.1}
        for k, big, f in zip(factors, largest, frac_small)
    ]
    return {"singular_value_summary": pd.DataFrame(rows)}


def _outcomes(tables):
    return [c.outcome for c in fig7.claims(tables)]


def test_claims_pass_on_the_papers_magnitudes():
    assert _outcomes(_summary([2.0, 3.2, 4.0], [0.06, 0.3, 0.45])) == ["passed"] * 6


def test_negative_control_no_growth_with_the_number_of_factors():
    # every product like one matrix: supports 3.2 and 4 missed, no pile-up, no growth, off the edge
    same = _summary([2.0, 2.0, 2.0], [0.06, 0.06, 0.06])
    assert _outcomes(same) == ["passed", "failed", "failed", "failed", "failed", "failed"]
    # the order reversed (5 factors drawn as 1): growth claims fail
    reversed_ = _summary([4.0, 3.2, 2.0], [0.45, 0.3, 0.06])
    assert _outcomes(reversed_) == ["failed", "passed", "failed", "failed", "failed", "failed"]


def test_bad_parameters_name_the_fix():
    from nfstudy_experiments import params_for

    with pytest.raises(ValueError, match="factors must be distinct and increasing"):
        params_for("fig7", "quick", factors=(3, 1))
    with pytest.raises(ValueError, match="size must be > 0"):
        params_for("fig7", "quick", size=0)


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file(results_root, config_dir):
    assert main(["run", "fig7", "--profile", "quick", "--seed", "0", "--device", "cpu", "-p", "size", "200", "-p", "samples", "2"]) == 0
    folder = config_dir(["run", "fig7", "--profile", "quick", "-p", "size", "200", "-p", "samples", "2"]) / "seed=0"
    names = {p.name for p in folder.iterdir()}
    assert names == {"fig7.ipynb", "run.json", "singular_values.csv", "singular_value_summary.csv", "claims.csv", "fig7.png"}
    claims = pd.read_csv(folder / "claims.csv")
    assert claims["passed"].all() and (claims["kind"] == "sanity").all()
