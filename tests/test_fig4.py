"""Figure 4 end to end: the experiment at a tiny size, the claims' arithmetic, the notebook."""

import json

import numpy as np
import pandas as pd
import pytest

from nfstudy import figures
from nfstudy.cli import main


TINY = ["-p", "depth", "20", "-p", "layers", "[2, 10, 18]", "-p", "batch_size", "16", "-p", "n_fractions", "3"]


def test_experiment_tables_at_tiny_size():
    from experiments import fig4, params_for

    # ResNet-20: stem 1, stage 1 = layers 2..7 (16 channels), stage 2 = 8..13 (32), stage 3 = 14..19 (64)
    params = params_for("fig4", "quick", depth=20, layers=(2, 10, 18), batch_size=16, n_fractions=5, lr=0.05)
    tables = fig4.run(params, seed=0, device="cpu")
    moments, losses = tables["channel_moments"], tables["update_loss"]
    sizes = moments.groupby(["series", "layer"], sort=False)["channel"].nunique().to_dict()
    assert sizes == {(s, k): c for s in ("none", "nf") for k, c in ((2, 16), (10, 32), (18, 64))}
    assert len(moments) == 2 * 5 * (16 + 32 + 64)
    assert moments.groupby("layer")["layer_name"].first().to_dict() == {
        2: "layer1.0.branch.conv1", 10: "layer2.1.branch.conv1", 18: "layer3.2.branch.conv1"
    }
    assert (moments["variance"] >= 0).all() and np.isfinite(moments["mean"]).all()
    assert losses.groupby("series").size().to_dict() == {"none": 5, "nf": 5}
    np.testing.assert_allclose(losses["step_size"], losses["fraction"] * 0.05)
    assert (losses.loc[losses["fraction"] == 0, "relative_loss"] == 1.0).all()
    # The activations move along the update: the no-BN network's deep layer changes the most.
    lv = figures.load("fig4").layer_variance(moments.assign(seed=0))
    none = lv[lv["series"] == "none"].pivot_table(index="fraction", columns="layer", values="variance")
    growth = none.iloc[-1] / none.iloc[0]
    assert (growth != 1.0).all()


def _tables(variances_none, relative_none, relative_nf=(1.0, 0.99)):
    """Two fractions (0, 1), layers 8 and 80, one channel each."""
    rows, losses = [], []
    for series, variances, relative in (("none", variances_none, relative_none), ("nf", [(1.0, 1.0), (1.0, 1.0)], relative_nf)):
        for layer, (v0, v1) in zip((8, 80), variances):
            for fraction, v in ((0.0, v0), (1.0, v1)):
                rows.append({"seed": 0, "series": series, "lr": 0.003, "update": 0, "layer": layer, "layer_name": "x",
                             "fraction": fraction, "channel": 0, "mean": 0.0, "variance": v})
        for fraction, r in zip((0.0, 1.0), relative):
            losses.append({"seed": 0, "series": series, "lr": 0.003, "update": 0, "fraction": fraction,
                           "step_size": 0.003 * fraction, "loss": 2 * r, "relative_loss": r, "diverged": r > 1e3})
    return {"channel_moments": pd.DataFrame(rows), "update_loss": pd.DataFrame(losses)}


def test_claims_measure_the_blow_up():
    found = figures.load("fig4").claims(_tables([(0.2, 2.0), (700.0, 1e16)], (1.0, np.inf)))
    assert [c.value for c in found] == pytest.approx([np.inf, 1e16 / 2.0, 1e16 / 700.0, 0.99])
    assert all(c.passed for c in found)
    calm = figures.load("fig4").claims(_tables([(0.2, 0.3), (700.0, 900.0)], (1.0, 0.9), relative_nf=(1.0, 1e5)))
    assert [c.passed for c in calm] == [False, True, False, False]  # depth growth at init alone passes only the 2nd


def test_bad_parameters_name_the_fix():
    from experiments import fig4, params_for

    with pytest.raises(ValueError, match=r"layer 80 does not exist in a ResNet-56: choose weight layers 1\.\.56 .*: 4, 22, 41\)"):
        params_for("fig4", "quick", depth=56)
    with pytest.raises(ValueError, match="n_fractions must be an int >= 2"):
        params_for("fig4", "quick", n_fractions=1)
    with pytest.raises(IndexError, match=r"update 40 is beyond the first epoch: digits has 23 mini-batches of 64"):
        fig4.run(params_for("fig4", "quick", depth=20, layers=(2, 10, 18), update=40), seed=0, device="cpu")


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file(results_root):
    assert main(["run", "fig4", "--profile", "quick", "--seed", "0", "--device", "cpu", *TINY]) == 0
    folder = results_root / "fig4" / "quick" / "seed=0"
    names = {p.name for p in folder.iterdir()}
    assert names == {"fig4.ipynb", "run.json", "channel_moments.csv", "update_loss.csv", "claims.csv", "fig4.png"}
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    tables = {name: pd.read_csv(folder / f"{name}.csv") for name in ("channel_moments", "update_loss")}
    assert len(tables["channel_moments"]) == 2 * 3 * (16 + 32 + 64)
    claims = pd.read_csv(folder / "claims.csv")
    np.testing.assert_allclose(claims["value"], [c.value for c in figures.load("fig4").claims(tables)])
    assert (results_root / "fig4" / "quick" / "fig4.png").stat().st_size > 10_000
