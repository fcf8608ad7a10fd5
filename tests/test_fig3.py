"""Figure 3 end to end: the experiment at a tiny size, the claims' arithmetic, the notebook."""

import json

import numpy as np
import pandas as pd
import pytest

from nfstudy import figures
from nfstudy.cli import main


TINY = ["-p", "depth", "8", "-p", "batch_size", "16", "-p", "n_step_sizes", "5", "-p", "batches", "[0, 2]"]


def test_experiment_tables_at_tiny_size():
    from experiments import fig3, params_for

    paper = fig3.PROFILES["paper"]  # every series, the two AGC ones included
    params = params_for("fig3", "quick", depth=8, batch_size=16, n_step_sizes=7, batches=(0, 2), series=paper.series,
                        learning_rates=paper.learning_rates)  # fmt: skip
    table = fig3.run(params, seed=0, device="cpu")["relative_loss"]
    assert table.columns.tolist() == [
        "series", "lr", "agc_lambda", "batch", "step_size", "relative_loss", "diverged", "loss_before", "loss_after",
        "update_norm",
    ]  # fmt: skip
    series = ("bn", "none", "nf", "none+agc", "nf+agc")
    assert table.groupby(["series", "batch"], sort=False).size().to_dict() == {(s, b): 7 for s in series for b in (0, 2)}
    assert table.groupby("series", sort=False)["lr"].first().to_dict() == {
        "bn": 0.1, "none": 1e-4, "nf": 0.1, "none+agc": 0.1, "nf+agc": 0.1
    }  # fmt: skip
    lam = table.groupby("series", sort=False)["agc_lambda"].first()
    assert lam.isna().tolist() == [True, True, True, False, False] and (lam.dropna() == 0.08).all()
    # The same network and batch, clipped: at batch 0 (no momentum yet) the same loss before the
    # step, a shorter update (AGC bounds each unit's step by lambda * its weight norm).
    at0 = table[table["batch"] == 0].groupby("series")[["loss_before", "update_norm"]].first()
    assert at0.loc["none+agc", "loss_before"] == at0.loc["none", "loss_before"]
    assert at0.loc["none+agc", "update_norm"] < at0.loc["none", "update_norm"]
    for _, g in table.groupby(["series", "batch"]):
        np.testing.assert_allclose(g["step_size"], np.logspace(-5.5, 0.5, 7))
        assert g["loss_before"].nunique() == 1 and g["update_norm"].nunique() == 1
        np.testing.assert_allclose(g["relative_loss"], g["loss_after"] / g["loss_before"], rtol=1e-12)
    # At batch 0 the update is the plain gradient (+ weight decay): a tiny step lowers the loss.
    first = table[(table["batch"] == 0) & (table["step_size"] == table["step_size"].min())]
    assert (first["relative_loss"] < 1).all()
    again = fig3.run(params, seed=0, device="cpu")["relative_loss"]
    pd.testing.assert_frame_equal(again, table)
    other = fig3.run(params, seed=1, device="cpu")["relative_loss"]
    assert not np.allclose(other["loss_before"], table["loss_before"])


def _table(rows):
    steps = np.array([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    frames = []
    for series, relative in rows.items():
        r = np.array(relative, dtype=float)
        frames.append(
            pd.DataFrame(
                {"seed": 0, "series": series, "lr": 0.1, "batch": 1, "step_size": steps, "relative_loss": r,
                 "diverged": ~np.isfinite(r) | (r > 1e3), "loss_before": 2.0, "loss_after": 2 * r, "update_norm": 1.0}
            )
        )
    return {"relative_loss": pd.concat(frames, ignore_index=True)}


def test_claims_measure_the_step_size_ranges():
    tables = _table(
        {
            "bn": [0.9, 0.8, 0.7, 0.9, 2.0],  # lowers the loss up to 1e-1, never diverges
            "none": [0.9, 5.0, 2e3, np.inf, 0.5],  # up to 1e-4; diverges from 1e-2; a wrecked net at 1
            "nf": [0.99] * 5,  # lowers it everywhere
        }
    )
    summary = figures.load("fig3").step_size_summary(tables["relative_loss"]).set_index("series")
    assert summary.loc["none", "lowering_up_to"] == 1e-4  # the 0.5 at step 1 is past divergence, not counted
    assert summary.loc["none", "diverging_from"] == 1e-2 and summary.loc["bn", "diverging_from"] == np.inf
    found = figures.load("fig3").claims(tables)
    assert [c.value for c in found] == pytest.approx([1.0, 1e3, 1e-2, 1.0 / 1e-2, 1.0 / 1e-4])
    assert all(c.passed for c in found)
    # With a clipped no-BN network, two more claims (beyond the papers); the others are unchanged.
    clipped = _table(
        {
            "bn": [0.9, 0.8, 0.7, 0.9, 2.0],
            "none": [0.9, 5.0, 2e3, np.inf, 0.5],
            "nf": [0.99] * 5,
            "none+agc": [0.9, 0.9, 0.8, 2.0, 4e3],  # lowers the loss up to 1e-2
        }
    )
    clipped["relative_loss"]["agc_lambda"] = np.where(clipped["relative_loss"]["series"] == "none+agc", 0.08, np.nan)
    more = figures.load("fig3").claims(clipped)
    assert [c.value for c in more[:5]] == [c.value for c in found]
    assert [c.value for c in more[5:]] == pytest.approx([1.0, 1e-2 / 1e-4]) and all(c.passed for c in more[5:])
    assert more[5].claim.startswith("(beyond the papers) With AGC (λ=0.08) the network without BN trains at lr 0.1")
    # No BN that never diverges and lowers the loss as far as BN: every claim fails.
    found = figures.load("fig3").claims(_table({"bn": [0.9, 0.8, 0.7, 0.9, 2.0], "none": [0.9, 0.8, 0.7, 0.9, 2.0]}))
    assert [c.passed for c in found] == [True, False, False, False]


def test_bad_parameters_name_the_fix():
    from experiments import fig3, params_for

    with pytest.raises(ValueError, match=r"learning_rates needs one value per series: 3 series \(bn, none, nf\) but 2"):
        params_for("fig3", "quick", series=["bn", "none", "nf"], learning_rates=[0.1, 1e-4])
    with pytest.raises(ValueError, match="unknown series 'none\\+clip': choose one of bn, none, ws, nf, nf_no_ws, bn\\+agc, none\\+agc"):
        params_for("fig3", "quick", series=["none+clip"], learning_rates=[0.1])
    with pytest.raises(ValueError, match="series repeats an entry: none, none"):
        params_for("fig3", "quick", series=["none", "none"], learning_rates=[0.1, 0.1])
    with pytest.raises(ValueError, match="agc_lambda \\(the AGC clipping threshold\\) must be > 0"):
        params_for("fig3", "quick", agc_lambda=-0.01)
    with pytest.raises(ValueError, match="log10_step_min .* must be below log10_step_max"):
        params_for("fig3", "quick", log10_step_min=1.0, log10_step_max=-1.0)
    with pytest.raises(ValueError, match="batches must be mini-batch indices >= 0"):
        params_for("fig3", "quick", batches=[-1, 4])
    with pytest.raises(IndexError, match=r"batch 50 is beyond the epoch: it has 23 mini-batches \(0\.\.22\)"):
        fig3.run(params_for("fig3", "quick", depth=8, batches=(1, 50)), seed=0, device="cpu")


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file(results_root):
    assert main(["run", "fig3", "--profile", "quick", "--seed", "0", "--device", "cpu", *TINY]) == 0
    folder = results_root / "fig3" / "quick" / "seed=0"
    assert {p.name for p in folder.iterdir()} == {"fig3.ipynb", "run.json", "relative_loss.csv", "claims.csv", "fig3.png"}
    meta = json.loads((folder / "run.json").read_text())
    assert meta["status"] == "completed" and meta["params"]["batches"] == [0, 2]
    table = pd.read_csv(folder / "relative_loss.csv")
    assert len(table) == 4 * 2 * 5 and table.columns[0] == "seed"  # bn, none, nf, none+agc
    claims = pd.read_csv(folder / "claims.csv")
    assert len(claims) == 7
    # claims.csv is what the figure module computes from the saved table.
    recomputed = [c.value for c in figures.load("fig3").claims({"relative_loss": table})]
    np.testing.assert_allclose(claims["value"], recomputed)
    assert (results_root / "fig3" / "quick" / "fig3.png").stat().st_size > 10_000


def test_probes_of_a_network_that_already_diverged_are_left_out_and_counted():
    tables = _table({"bn": [0.9, 0.8, 0.7, 0.9, 2.0], "none": [0.9, 5.0, 2e3, np.inf, 0.5]})
    gone = tables["relative_loss"].query("series == 'none'").assign(
        batch=4, loss_before=np.nan, loss_after=np.nan, relative_loss=np.nan, diverged=True
    )
    bn4 = tables["relative_loss"].query("series == 'bn'").assign(batch=4, relative_loss=0.5)
    found = figures.load("fig3").claims({"relative_loss": pd.concat([tables["relative_loss"], gone, bn4])})
    assert found[0].value == 0.5 and not found[0].passed  # no BN had diverged by batch 4 in training
    # The other claims see batch 1 only, as if batch 4 had not been probed.
    alone = figures.load("fig3").claims(tables)
    assert [c.value for c in found[1:]] == [c.value for c in alone[1:]]
    fig = figures.load("fig3").plot({"relative_loss": pd.concat([tables["relative_loss"], gone, bn4])})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "left out, training diverged\nbefore this batch: seed 0" in texts
