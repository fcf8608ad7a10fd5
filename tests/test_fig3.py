"""Figure 3 end to end: the experiment at a tiny size, the claims' arithmetic, the notebook."""

import json

import numpy as np
import pandas as pd
import pytest

from nfstudy.cli import main
from nfstudy_experiments import fig3

TINY = ["-p", "depth", "8", "-p", "batch_size", "16", "-p", "n_step_sizes", "5", "-p", "batches", "[0, 2]"]


def test_experiment_tables_at_tiny_size():
    from nfstudy_experiments import fig3, params_for

    paper = fig3.PROFILES["paper"]  # every series, the two AGC ones included
    params = params_for(
        "fig3", "quick", depth=8, batch_size=16, n_step_sizes=7, batches=(0, 2), series=paper.series, learning_rates=paper.learning_rates
    )
    table = fig3.run(params, seed=0, device="cpu")["relative_loss"]
    # the columns and their order are the module's TABLES (the one owner of the schema)
    assert {n: list(t.columns) for n, t in {"relative_loss": table}.items()} == {n: list(fig3.TABLES[n]) for n in {"relative_loss": table}}
    assert table.columns.tolist() == [
        "series",
        "lr",
        "agc_lambda",
        "batch",
        "step_size",
        "relative_loss",
        "diverged",
        "loss_before",
        "loss_after",
        "update_norm",
    ]
    series = ("bn", "none", "nf", "none+agc", "nf+agc")
    assert table.groupby(["series", "batch"], sort=False).size().to_dict() == {(s, b): 7 for s in series for b in (0, 2)}
    assert table.groupby("series", sort=False)["lr"].first().to_dict() == {
        "bn": 0.1,
        "none": 1e-4,
        "nf": 0.1,
        "none+agc": 0.1,
        "nf+agc": 0.1,
    }
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


STEPS = 10 ** np.arange(-5.5, 0.51, 0.5)  # 3.2e-6 ... 3.2, half a decade apart
# Curves shaped like the paper's Fig. 3 (docs/papers.md#bjorck-fig-3), one value per step in STEPS.
PAPER_BN = [1.0, 0.999, 0.99, 0.97, 0.93, 0.88, 0.8, 0.75, 0.7, 0.72, 1.5, 4.0, 20.0]  # minimum 0.7 near 0.03
PAPER_NO_BN = [0.95, 0.8, 0.4, 0.15, 0.1, 50.0, 1e7, np.inf, np.inf, np.inf, np.inf, np.inf, np.inf]  # 0.1 at 3e-4
FLAT = [0.99999] * len(STEPS)  # a network that does not move


def _table(rows, steps=STEPS, batches=(1,)):
    frames = []
    for series, relative in rows.items():
        r = np.array(relative, dtype=float)
        for b in batches:
            frames.append(
                pd.DataFrame(
                    {
                        "seed": 0,
                        "series": series,
                        "lr": 0.1,
                        "batch": b,
                        "step_size": steps,
                        "relative_loss": r,
                        "diverged": ~np.isfinite(r) | (r > 1e3),
                        "loss_before": 2.0,
                        "loss_after": 2 * r,
                        "update_norm": 1.0,
                    }
                )
            )
    return {"relative_loss": pd.concat(frames, ignore_index=True)}


def _outcomes(tables):
    return {c.claim: c.outcome for c in fig3.claims(tables)}


def _paper_claims(found):
    return [c for c in found if c.kind == "paper"]


def test_step_size_summary_reads_the_curves():
    old_steps = np.array([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    tables = _table(
        {
            "bn": [0.9, 0.8, 0.7, 0.9, 2.0],  # lowers the loss up to 1e-1, never diverges
            "none": [0.85, 5.0, 2e3, np.inf, 0.5],  # up to 1e-4; diverges from 1e-2; a wrecked net at 1
            "nf": [0.99] * 5,  # lowers it everywhere, by 1%: no range worth the name
            "noisy": [1.0000001, 0.95, 0.8, 0.9, 2.0],  # float noise at the smallest step is no change
        },
        steps=old_steps,
    )
    summary = fig3.step_size_summary(tables["relative_loss"]).set_index("series")
    assert summary.loc["none", "lowering_up_to"] == 1e-4  # the 0.5 at step 1 is past divergence, not counted
    assert summary.loc["none", "lowest"] == 0.85 and summary.loc["none", "highest"] == np.inf
    assert summary.loc["none", "diverging_from"] == 1e-2 and summary.loc["none", "exploding_from"] == 1e-1
    assert summary.loc["bn", "diverging_from"] == np.inf and summary.loc["bn", "lowering_up_to"] == 1e-1
    assert summary.loc["bn", "lowest"] == 0.7 and summary.loc["bn", "highest"] == 0.9
    assert np.isnan(summary.loc["nf", "lowering_up_to"]) and summary.loc["nf", "lowest"] == 0.99
    assert summary.loc["noisy", "lowering_up_to"] == 1e-1 and summary.loc["noisy", "lowest"] == 0.8


def test_the_papers_step_window_does_not_hang_on_float_rounding():
    # 10 ** np.arange(-5.5, ...) gives 9.999999999999999e-06 for the paper's 1e-5, and another
    # grid may land just above 1e-1: a step one float64 rounding off an end is inside
    # (fig3.STEP_RTOL); one a grid spacing off is not.
    assert STEPS[1] < 1e-5  # the rounding this test is about
    for ends in ([1e-5 * (1 - 1e-15), 1e-1 * (1 + 1e-15)], [1e-5, 1e-1]):
        steps = np.array([1e-5 / 2, ends[0], 1e-3, ends[1], 2e-1])
        tables = _table({"bn": [0.5, 0.8, 0.9, 2.0, 0.1]}, steps=steps)
        summary = fig3.step_size_summary(tables["relative_loss"]).set_index("series")
        # The lowest before the first rise (at 1e-1) within the window: 0.8 at its left end, not
        # 0.5 (left of it); the highest within the window: 2.0 at its right end, not 0.1 (right of it).
        assert summary.loc["bn", "lowest"] == 0.8 and summary.loc["bn", "highest"] == 2.0
    outside = np.array([1e-5 * (1 - 1e-6), 1e-3, 1e-1 * (1 + 1e-6)])  # a millionth off: outside
    summary = fig3.step_size_summary(_table({"bn": [0.5, 0.9, 2.0]}, steps=outside)["relative_loss"]).iloc[0]
    assert summary["lowest"] == 0.9 and summary["highest"] == 0.9


def test_paper_like_curves_pass_every_claim():
    tables = _table({"bn": PAPER_BN, "none": PAPER_NO_BN, "nf": PAPER_BN, "none+agc": PAPER_BN})
    tables["relative_loss"]["agc_lambda"] = np.where(tables["relative_loss"]["series"] == "none+agc", 0.08, np.nan)
    found = fig3.claims(tables)
    assert [c.kind for c in found] == ["sanity"] + ["paper"] * 7 + ["extension"] * 5
    assert [c.value for c in found] == pytest.approx(
        [1.0, 0.7, 0.7, 0.999, 0.1, 10**-2.5, 10**-2.5, 1e-1 / 10**-3.5, 0.7, 1e-1 / 10**-3.5, 1.0, 0.7, 1e-1 / 10**-3.5]
    )
    assert all(c.passed for c in found)
    assert found[11].claim.startswith("(beyond the papers) For the no-BN network trained with AGC (λ=0.08)")
    # Between: the two-sided bands come from the paper's magnitudes.
    bands = sorted({(round(c.threshold, 12), round(c.threshold_high, 12)) for c in found if c.comparison == "between"})
    assert np.allclose(bands, [(2e-4, 5e-3), (8e-4, 2e-2), (0.1 / 3, 0.3), (0.35, 0.9), (10.0, 1000.0)])


def test_negative_control_bn_and_no_bn_swapped_fail_every_contrast():
    found = fig3.claims(_table({"bn": PAPER_NO_BN, "none": PAPER_BN}))
    outcomes = [c.outcome for c in _paper_claims(found)]
    # Only "BN lowers the loss" holds: no BN lowers it too (to 0.1). Everything the paper
    # contrasts, and every magnitude, fails.
    assert outcomes == ["passed"] + ["failed"] * 6
    assert [c.value for c in _paper_claims(found)][1:] == pytest.approx([0.1, np.inf, 0.7, np.inf, np.inf, 10**-3.5 / 1e-1])


def test_negative_control_flat_curves_do_not_lower_the_loss():
    # BN, NF and no BN + AGC barely move: a relative loss of 0.99999 at every step.
    tables = _table({"bn": FLAT, "none": PAPER_NO_BN, "nf": FLAT, "none+agc": FLAT})
    tables["relative_loss"]["agc_lambda"] = np.where(tables["relative_loss"]["series"] == "none+agc", 0.08, np.nan)
    found = {c.claim.split(" (")[0] if not c.claim.startswith("(") else c.claim: c for c in fig3.claims(tables)}
    lowers = [c for c in found.values() if "lowers the loss (relative loss below 0.9)" in c.claim]
    ranges = [c for c in found.values() if "far larger range of step sizes" in c.claim]
    assert len(lowers) == 3 and all(c.value == pytest.approx(0.99999) and not c.passed for c in lowers)
    assert len(ranges) == 3 and all(c.value == 0 and not c.passed for c in ranges)
    minimum = [c for c in found.values() if c.claim.startswith("With BN the relative loss reaches a minimum")]
    assert len(minimum) == 1 and not minimum[0].passed


def test_negative_control_magnitudes_far_from_the_paper_fail_both_ways():
    # BN lowering the loss 10x (not ~0.7) and everywhere; no BN lowering only at its smallest
    # step and exploding already there: each passes the one-sided claims, fails the bands.
    deep_bn = [1.0, 0.99, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    early = [0.5, 1e7] + [np.inf] * 11
    found = _paper_claims(fig3.claims(_table({"bn": deep_bn, "none": early})))
    assert [c.outcome for c in found] == ["passed", "failed", "passed", "failed", "failed", "failed", "failed"]
    assert found[-1].value == pytest.approx(10**0.5 / 10**-5.5)  # a ratio of 1e6 is not ~100
    # No BN that never diverges and lowers the loss as far as BN: its claims and the contrast fail.
    found = _paper_claims(fig3.claims(_table({"bn": PAPER_BN, "none": PAPER_BN})))
    assert [c.outcome for c in found] == ["passed"] * 3 + ["failed"] * 4


def test_bad_parameters_name_the_fix():
    from nfstudy_experiments import fig3, params_for

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
    with pytest.raises(IndexError, match=r"batch 50 is beyond the epoch: it has 11 mini-batches \(0\.\.10\)"):
        fig3.run(params_for("fig3", "quick", depth=8, batches=(1, 50)), seed=0, device="cpu")


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file(results_root, config_dir):
    assert main(["run", "fig3", "--profile", "quick", "--seed", "0", "--device", "cpu", *TINY]) == 0
    folder = config_dir(["run", "fig3", "--profile", "quick", *TINY]) / "seed=0"
    assert {p.name for p in folder.iterdir()} == {"fig3.ipynb", "run.json", "relative_loss.csv", "claims.csv", "fig3.png"}
    meta = json.loads((folder / "run.json").read_text())
    assert meta["status"] == "completed" and meta["params"]["batches"] == [0, 2]
    table = pd.read_csv(folder / "relative_loss.csv")
    assert len(table) == 4 * 2 * 5 and table.columns[0] == "seed"  # bn, none, nf, none+agc
    claims = pd.read_csv(folder / "claims.csv")
    assert len(claims) == 13
    # Mini-batch 1 was not probed: no BN's minimum there cannot be decided.
    assert (claims["outcome"] == "not evaluable").sum() == 1
    # claims.csv is what the figure module computes from the saved table.
    recomputed = [c.value for c in fig3.claims({"relative_loss": table})]
    np.testing.assert_allclose(claims["value"], recomputed)
    assert (folder.parent / "fig3.png").stat().st_size > 10_000


def test_probes_of_a_network_that_already_diverged_are_left_out_and_counted():
    tables = _table({"bn": PAPER_BN, "none": PAPER_NO_BN})
    gone = (
        tables["relative_loss"]
        .query("series == 'none'")
        .assign(batch=4, loss_before=np.nan, loss_after=np.nan, relative_loss=np.nan, diverged=True)
    )
    bn4 = tables["relative_loss"].query("series == 'bn'").assign(batch=4)
    found = fig3.claims({"relative_loss": pd.concat([tables["relative_loss"], gone, bn4])})
    assert found[0].value == 0.5 and not found[0].passed  # no BN had diverged by batch 4 in training
    # The other claims see batch 1 only, as if batch 4 had not been probed.
    alone = fig3.claims(tables)
    assert [c.value for c in found[1:]] == [c.value for c in alone[1:]]
    fig = fig3.plot({"relative_loss": pd.concat([tables["relative_loss"], gone, bn4])})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "left out, training diverged\nbefore this batch: seed 0" in texts
    # No probe left at all: the no-BN claims cannot be decided, and say why.
    never = fig3.claims({"relative_loss": pd.concat([tables["relative_loss"].query("series == 'bn'"), gone.assign(batch=1)])})
    undecided = [c for c in never if c.outcome == "not evaluable"]
    assert [c.claim.split(":")[0][:40] for c in undecided] == [
        "Without BN a small step lowers the loss ",
        "Without BN every curve explodes past a s",
        "Without BN the relative loss reaches 1e+",
        "With BN the loss decreases over a far la",
    ]
    assert all("diverged before every probed mini-batch" in c.note or "not probed" in c.note or "no probed" in c.note for c in undecided)
    assert never[0].value == 0 and not never[0].passed
