"""Figure 5: channel statistics vs depth, from the experiment to the notebook."""

import json

import numpy as np
import pandas as pd
import pytest

from nfstudy.cli import main
from nfstudy_experiments import fig5

# ResNet-44: 20 residual blocks, enough for no-BN growth of orders of magnitude.
TINY = {"depth": 44, "layers": (1, 6, 18, 30, 42), "networks": 2, "batch_size": 8}


def test_experiment_tables_and_claims_at_tiny_size():
    from nfstudy_experiments import fig5, params_for

    params = params_for("fig5", "quick", **TINY)
    table = fig5.run(params, seed=0, device="cpu")["activation_stats"]
    # the columns and their order are the module's TABLES (the one owner of the schema)
    assert {n: list(t.columns) for n, t in {"activation_stats": table}.items()} == {
        n: list(fig5.TABLES[n]) for n in {"activation_stats": table}
    }
    assert table.columns.tolist() == ["series", "network", "depth", "layer_name", "statistic", "value"]
    assert len(table) == 3 * 2 * 5 * 4  # series x networks x layers x statistics
    names = table.drop_duplicates("depth").set_index("depth")["layer_name"]
    assert names[1] == "conv1" and names[6] == "layer1.2.branch.conv1" and names[42] == "layer3.6.branch.conv1"
    wide = table.pivot_table(index=["series", "network", "depth"], columns="statistic", values="value")
    # Jensen: the mean of the channel stds squared never exceeds the mean channel variance.
    assert (wide["avg_channel_std"] ** 2 <= wide["avg_channel_var"] * (1 + 1e-9)).all()
    # Network i of every series starts from the same conv weights and sees the same batch:
    # the stem conv's output (layer 1) is the same with and without BN.
    stem = wide.xs(1, level="depth")
    np.testing.assert_allclose(stem.loc["bn"].to_numpy(), stem.loc["none"].to_numpy(), rtol=1e-6)
    # ... and different networks differ.
    assert not np.allclose(stem.loc[("bn", 0)], stem.loc[("bn", 1)])
    # Claims from layer 6 on, as in the paper: the stem conv sees normalised images, so its
    # channel means are ~0 and any later layer is "orders of magnitude" above them.
    claims = fig5.claims({"activation_stats": table[table["depth"] > 1].assign(seed=0)})
    # Outcomes depend on the init (see the constructed tables below); the claims read the table.
    assert [c.kind for c in claims] == ["paper"] * 8 + ["extension"]
    assert all(np.isfinite(c.value) for c in claims)
    pd.testing.assert_frame_equal(fig5.run(params, seed=0, device="cpu")["activation_stats"], table)


def test_growth_and_exponential_fit_on_a_known_table():
    from nfstudy_experiments.fig5 import _log_linear_r2, growth

    depths = np.array([6, 18, 30, 42])
    rows = [
        {"seed": 0, "series": "none", "network": n, "depth": d, "statistic": "avg_channel_std", "value": 10 ** (d / 12) * (1 + n)}
        for n in (0, 1)
        for d in depths
    ]
    table = pd.DataFrame(rows)
    assert growth(table, "none", "avg_channel_std") == pytest.approx(3.0)  # 10^(36/12)
    assert _log_linear_r2(table, "none", "avg_channel_std") == pytest.approx(1.0)


LAYERS = np.arange(6, 103, 12)  # the paper's x-axis


def _table(profiles: dict[str, np.ndarray], networks: int = 3) -> dict[str, pd.DataFrame]:
    """A constructed activation_stats: per series, ln(statistic) per sampled layer (the same
    for means and stds), networks scattered by +-0.1 in ln around it."""
    rows = [
        {"seed": 0, "series": series, "network": n, "depth": d, "statistic": statistic, "value": float(np.exp(ln + 0.1 * (n - 1)))}
        for series, profile in profiles.items()
        for n in range(networks)
        for d, ln in zip(LAYERS, profile)
        for statistic in ("avg_channel_abs_mean", "avg_channel_std")
    ]
    return {"activation_stats": pd.DataFrame(rows)}


# The paper's Fig. 5 in ln units: no BN -1.5 -> 3.5 in a straight line, BN flat near 0 (a
# zigzag of +-0.2, no trend), NF flat.
EXPONENTIAL = np.linspace(-1.5, 3.5, len(LAYERS))
FLAT = 0.2 * (-1.0) ** np.arange(len(LAYERS))
PAPER_LIKE = {"bn": FLAT, "none": EXPONENTIAL, "nf": FLAT - 1.0}


def _outcomes(tables):
    return [c.outcome for c in fig5.claims(tables)]


def test_claims_pass_on_the_papers_magnitudes():
    claims = fig5.claims(_table(PAPER_LIKE))
    assert [c.outcome for c in claims] == ["passed"] * 9
    assert claims[0].value == pytest.approx(5.0)  # -1.5 -> 3.5


def test_negative_control_bn_and_no_bn_swapped_fails_every_claim():
    swapped = _table({"bn": EXPONENTIAL, "none": FLAT, "nf": EXPONENTIAL})
    # growth of means and stds, the two straight lines, BN flatness and BN level (3.5 is
    # outside -1.5..1 widened tenfold), twice each, and NF flatness
    assert _outcomes(swapped) == ["failed"] * 9


def test_negative_control_growth_of_the_wrong_size_or_shape():
    # 10^5 (the base-10 reading of the paper's axis, ln 11.5) and e^18 (kaiming at quick) are not e^5
    for rise in (5 * np.log(10), 18.0):
        too_much = _table({"none": np.linspace(-1.5, -1.5 + rise, len(LAYERS))})
        assert _outcomes(too_much) == ["failed", "passed", "passed", "passed"]
    # tenfold is not e^5 either, and the std growth needs at least tenfold
    assert _outcomes(_table({"none": np.linspace(0, np.log(5), len(LAYERS))})) == ["failed", "failed", "passed", "passed"]
    # linear growth (statistic ~ depth) by e^3 is not a straight line on a log axis
    linear = np.log(LAYERS / LAYERS[0]) * 3 / np.log(LAYERS[-1] / LAYERS[0])
    assert _outcomes(_table({"none": linear})) == ["passed", "passed", "failed", "failed"]
    # BN drifting by e^3 is not flat, and BN at e^4 is off the paper's level
    assert _outcomes(_table({"bn": np.linspace(-1, 2, len(LAYERS))})) == ["failed", "passed", "failed", "passed"]
    assert _outcomes(_table({"bn": FLAT + 4.0})) == ["passed", "failed", "passed", "failed"]


def test_bad_parameters_name_the_fix():
    from nfstudy_experiments import params_for

    with pytest.raises(ValueError, match=r"layers must be weight layers 1\.\.20 of a ResNet-20, got \[30\]"):
        params_for("fig5", "quick", depth=20, layers=(6, 30))
    with pytest.raises(ValueError, match="networks=12 needs as many mini-batches of 128"):
        from nfstudy_experiments import fig5

        fig5.run(params_for("fig5", "quick", depth=8, layers=(2, 8), networks=12, batch_size=128), device="cpu")


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file(results_root, config_dir):
    tiny = {**TINY, "layers": "6,18,30,42"}  # from layer 6 on, as in the paper
    args = [x for k, v in tiny.items() for x in ("-p", k, str(v))]
    assert main(["run", "fig5", "--profile", "quick", "--seed", "0", "--device", "cpu", *args]) == 0
    folder = config_dir(["run", "fig5", "--profile", "quick", *args]) / "seed=0"
    assert {p.name for p in folder.iterdir()} == {"fig5.ipynb", "run.json", "activation_stats.csv", "claims.csv", "fig5.png"}
    assert json.loads((folder / "run.json").read_text())["params"]["layers"] == [6, 18, 30, 42]
    claims = pd.read_csv(folder / "claims.csv")
    assert len(claims) == 9 and claims["outcome"].isin(["passed", "failed"]).all()
    assert (folder.parent / "fig5.png").stat().st_size > 10_000
