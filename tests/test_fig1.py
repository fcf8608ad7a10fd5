import json

import numpy as np
import pandas as pd
import pytest
from _numerics import FIRST_LOSS_RTOL, FUSED_ACC_IMAGES, FUSED_LOSS_RTOL

from nfstudy.cli import main
from nfstudy_experiments import fig1

# ResNet-8 on 8x8 digits, 2 epochs: a second per series. lr 50 makes the no-BN net explode.
SERIES = ("bn@0.1", "bn@0.001", "none@0.001", "none@50", "nf@0.1")
TINY = {"depth": 8, "epochs": 2, "series": SERIES, "extend_until_plateau": False}


def tiny_run(seed=0, checkpoint_dir=None, **overrides):
    from nfstudy_experiments import fig1, params_for

    return fig1.run(params_for("fig1", "quick", **{**TINY, **overrides}), seed=seed, device="cpu", checkpoint_dir=checkpoint_dir)


def test_tables_of_a_sweep_that_goes_on_after_a_divergence():
    tables = tiny_run()
    history, outcomes = tables["history"], tables["outcomes"]
    # the columns and their order are the module's TABLES (the one owner of the schema)
    assert {n: list(t.columns) for n, t in tables.items()} == {n: list(fig1.TABLES[n]) for n in tables}
    assert outcomes["series"].tolist() == ["bn@lr=0.1", "bn@lr=0.001", "none@lr=0.001", "none@lr=50", "nf@lr=0.1"]
    assert outcomes["status"].tolist() == ["completed"] * 3 + ["diverged", "completed"]  # nf trained after it
    diverged = outcomes.set_index("series").loc["none@lr=50"]
    assert 1 <= diverged["diverged_step"] <= 12 and diverged["diverged_pct"] == pytest.approx(100 * diverged["diverged_step"] / 24)
    assert history.groupby("series", sort=False).size().to_dict() == {s: 2 for s in outcomes["series"] if s != "none@lr=50"}
    assert history.columns.tolist()[:3] == ["series", "norm", "base_lr"]
    assert (history["progress_pct"].unique() == [50.0, 100.0]).all()
    # Every lr of a norm starts from the same weights and sees the same first batch.
    first = outcomes.set_index("series")["initial_loss"]
    assert first["bn@lr=0.1"] == first["bn@lr=0.001"] and first["none@lr=0.001"] == first["none@lr=50"]
    # The outcome row is the history's last epoch.
    last = history.groupby("series").last()
    for series, row in outcomes.set_index("series").drop("none@lr=50").iterrows():
        assert row["final_test_accuracy"] == last.loc[series, "test_accuracy"]
    again = tiny_run()
    pd.testing.assert_frame_equal(again["history"], history)


def test_claims_are_computed_from_the_outcomes():
    tables = {k: v.assign(seed=0) for k, v in tiny_run().items()}
    outcomes = tables["outcomes"].set_index("series")
    o = outcomes["final_test_accuracy"]
    assert {"full_lr_gain", "plateaued"} <= set(outcomes.columns)
    claims = fig1.claims(tables)
    assert [c.kind for c in claims] == ["paper", "paper", "paper", "sanity", "extension"]
    assert claims[0].value == pytest.approx(100 * (o["bn@lr=0.1"] - o["none@lr=0.001"]))
    assert (claims[0].comparison, claims[0].threshold, claims[0].threshold_high) == ("between", 5.0, 20.0)
    assert "0.001" in claims[0].metric
    assert claims[1].value == pytest.approx(abs(100 * (o["bn@lr=0.001"] - o["none@lr=0.001"])))
    assert (claims[1].comparison, claims[1].threshold) == ("<=", 3.0)
    # Two epochs leave the small-lr runs far from converged: the comparisons are not decided.
    assert claims[0].outcome == claims[1].outcome == "not evaluable"
    assert "no BN lr=0.001 ends at" in claims[1].note and "% train accuracy" in claims[1].note
    assert claims[2].passed and claims[2].value < 100  # no BN at lr 50 diverged
    assert claims[3].value == pytest.approx(100 * outcomes.drop(["none@lr=50", "nf@lr=0.1"])["final_train_accuracy"].min())
    assert claims[4].value == pytest.approx(100 * o["nf@lr=0.1"])  # NF trained at 0.1: its test accuracy
    # Without a matched lr there is nothing to compare at equal lr: those claims are absent.
    only = {k: v[~v["series"].str.startswith("none")] for k, v in tables.items()}
    assert [c.kind for c in fig1.claims(only)] == ["sanity", "extension"]


def test_plateau_at_full_lr_judges_the_epochs_before_the_first_drop():
    from nfstudy_experiments.fig1 import plateau_at_full_lr

    acc = [0.2, 0.4, 0.6, 0.7, 0.71, 0.9, 0.95]  # the rate drops after the fifth epoch
    history = pd.DataFrame({"lr": [0.1] * 5 + [0.01] * 2, "train_accuracy": acc})
    rising = plateau_at_full_lr(history, window=2, tol=0.01)
    assert rising["full_lr_gain"] == pytest.approx(0.71 - 0.6) and rising["plateaued"] == 0.0
    flat = plateau_at_full_lr(history.assign(train_accuracy=[0.2, 0.6, 0.7, 0.702, 0.705, 0.9, 0.95]), window=2, tol=0.01)
    assert flat["full_lr_gain"] == pytest.approx(0.005) and flat["plateaued"] == 1.0
    assert np.isnan(plateau_at_full_lr(history.iloc[:2], window=2, tol=0.01)["plateaued"])  # too few epochs to judge


def test_the_plateau_rule_on_the_train_accuracy():
    from nfstudy.train import TrainConfig, accuracy_has_plateaued, describe

    assert not accuracy_has_plateaued([0.1, 0.3, 0.5, 0.6], window=2, tol=0.01)  # still rising
    assert accuracy_has_plateaued([0.1, 0.1, 0.104, 0.1], window=2, tol=0.01)  # stuck (at chance): no progress
    assert accuracy_has_plateaued([0.5, 0.9, 0.95, 0.991], window=2, tol=0.01)  # no more than tol left to gain
    with pytest.raises(ValueError, match="need more than 2 epochs"):
        accuracy_has_plateaued([0.5, 0.6], window=2, tol=0.01)
    with pytest.raises(ValueError, match="unknown plateau_metric 'accuracy'"):
        TrainConfig(epochs=4, plateau_metric="accuracy")
    # The default metric stays out of the checkpoint fingerprint: checkpoints from before the option resume.
    from nfstudy.data import load_dataset
    from nfstudy_experiments import fig1, params_for
    from nfstudy_experiments._common import make_resnet

    params = params_for("fig1", "quick", depth=8)
    data = load_dataset("digits", image_size=8)
    model = make_resnet(params, "bn", 10)
    assert "plateau_metric" not in describe(model, data, TrainConfig(epochs=4), 0, 1)
    assert describe(model, data, fig1.PROFILES["quick"].train_config(0.1), 0, 1)["plateau_metric"] == "train_accuracy"


def test_the_quick_profile_extends_a_run_that_is_still_rising_and_not_one_that_has_plateaued():
    from nfstudy.data import load_dataset
    from nfstudy.train import TrainConfig, train
    from nfstudy_experiments import params_for
    from nfstudy_experiments._common import make_resnet

    params = params_for("fig1", "quick", depth=8)
    data = load_dataset("digits", image_size=8)
    config = TrainConfig(
        epochs=6,
        lr=0.01,
        augment=False,
        extend_until_plateau=True,
        plateau_metric="train_accuracy",
        plateau_window=2,
        plateau_tol=0.01,
        max_extensions=1,
    )
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    slow = train(make_resnet(params, "bn", 10), data, config, device="cpu")
    assert slow.budget == 12 and slow.epochs == 12  # still rising at epoch 3: twice the epochs
    torch.manual_seed(0)
    done = train(make_resnet(params, "bn", 10), data, TrainConfig(**{**config.__dict__, "plateau_tol": 1.0}), device="cpu")
    assert done.budget == 6  # a tolerance of 100 points: nothing counts as progress


def test_agc_series_train_with_clipping():
    # The same network, weights and batches, clipped and not, one run at a time (the same kernels):
    # a threshold of 1e9 never clips (a factor of exactly 1) and gives the unclipped run bit for
    # bit; 0.01 changes every step after the first.
    series = ("nf@0.1", "nf+agc@0.1")
    loose = tiny_run(series=series, agc_lambda=1e9)
    tight = tiny_run(series=series, agc_lambda=0.01)
    assert tight["outcomes"]["series"].tolist() == ["nf@lr=0.1", "nf+agc@lr=0.1"]
    assert tight["outcomes"]["agc_lambda"].isna().tolist() == [True, False]
    assert tight["outcomes"]["agc_lambda"].iloc[1] == 0.01 and (tight["history"]["agc_lambda"].dropna() == 0.01).all()
    plain = loose["history"].query("series == 'nf@lr=0.1'")[["train_loss", "test_loss"]].to_numpy()
    unclipped = loose["history"].query("series == 'nf+agc@lr=0.1'")[["train_loss", "test_loss"]].to_numpy()
    clipped = tight["history"].query("series == 'nf+agc@lr=0.1'")[["train_loss", "test_loss"]].to_numpy()
    assert (plain == unclipped).all()
    assert (np.abs(clipped - plain) > 1e-4).all()
    first = tight["outcomes"].set_index("series")["initial_loss"]
    assert first["nf@lr=0.1"] == first["nf+agc@lr=0.1"]  # the same start: the difference is the clipping


def assert_tables_agree(fused: dict, alone: dict):
    """Fused vs one at a time, to tests/_numerics.py's tolerances: the first loss to FIRST_LOSS_RTOL,
    the other losses to FUSED_LOSS_RTOL, accuracies to FUSED_ACC_IMAGES of the 299 test digits;
    everything else exact."""
    for name, table in alone.items():
        other = fused[name]
        assert list(other.columns) == list(table.columns) and len(other) == len(table) > 0, name
        for col in table.columns:
            if col == "initial_loss":  # one forward pass, batched by vmap or not
                np.testing.assert_allclose(other[col], table[col], rtol=FIRST_LOSS_RTOL, atol=0, err_msg=f"{name}.{col}")
            elif "loss" in col:
                np.testing.assert_allclose(
                    other[col].astype(float), table[col].astype(float), rtol=FUSED_LOSS_RTOL, err_msg=f"{name}.{col}"
                )
            elif "accuracy" in col or col in ("full_lr_gain", "plateaued"):
                np.testing.assert_allclose(other[col], table[col], atol=(FUSED_ACC_IMAGES + 0.01) / 299, rtol=0, err_msg=f"{name}.{col}")
            else:  # series, status, epochs, steps, lr, the diverged step, ...
                pd.testing.assert_series_equal(other[col], table[col], check_exact=True, obj=f"{name}.{col}")


@pytest.mark.numerics
def test_fuse_trains_each_norms_series_as_one_network_and_gives_the_same_tables():
    # Groups by norm: bn x 2, none x 2 (one diverges and leaves the stack), nf x 2 (one clipped).
    series = ("bn@0.1", "bn@0.001", "none@0.001", "none@50", "nf@0.1", "nf+agc@0.1")
    alone = tiny_run(series=series, fuse="off")
    fused = tiny_run(series=series, fuse="on")
    assert fused["outcomes"]["status"].tolist() == ["completed"] * 3 + ["diverged", "completed", "completed"]
    assert_tables_agree(fused, alone)
    auto = tiny_run(series=series, fuse="auto")  # on a CPU: one at a time, bit for bit
    for name, table in alone.items():
        pd.testing.assert_frame_equal(auto[name], table, check_exact=True)


def _outcomes(rows):
    """Constructed outcomes: (norm, lr, AGC lambda or None, final test accuracy or None for diverged,
    final train accuracy, plateaued at the full lr)."""
    return {
        "outcomes": pd.DataFrame(
            [
                {
                    "seed": 0,
                    "series": f"{n}{'+agc' if lam else ''}@lr={lr:g}",
                    "norm": n,
                    "base_lr": lr,
                    "agc_lambda": lam or np.nan,
                    "status": "diverged" if acc is None else "completed",
                    "diverged_pct": 1.0 if acc is None else np.nan,
                    "final_test_accuracy": np.nan if acc is None else acc,
                    "final_train_accuracy": np.nan if acc is None else train_acc,
                    "full_lr_gain": np.nan if acc is None else (0.0 if plateaued else 0.2),
                    "plateaued": np.nan if acc is None else float(plateaued),
                }
                for n, lr, lam, acc, train_acc, plateaued in rows
            ]
        )
    }


# The paper's Figure 1 as numbers: every run converged (~100% train accuracy), no BN at 0.1 diverged.
PAPER = [
    ("bn", 0.1, None, 0.93, 1.0, True),
    ("bn", 0.003, None, 0.905, 1.0, True),
    ("bn", 1e-4, None, 0.82, 1.0, True),
    ("none", 1e-4, None, 0.81, 1.0, True),
    ("none", 0.1, None, None, None, None),
    ("nf", 0.1, None, 0.92, 1.0, True),
]


def _by_kind(claims):
    return {(c.kind, c.metric.split(" (")[0]): c for c in claims}


def _paper_claims(rows):
    claims = fig1.claims(_outcomes(rows))
    return [c for c in claims if c.kind == "paper"], claims


def test_the_paper_figure_passes_every_claim():
    paper, everything = _paper_claims(PAPER)
    assert [c.outcome for c in paper] == ["passed"] * 3
    assert paper[0].value == pytest.approx(12.0) and paper[1].value == pytest.approx(1.0)
    assert all(c.passed for c in everything)


def test_negative_control_bn_and_no_bn_swapped():
    swap = {"bn": "none", "none": "bn"}
    paper, _ = _paper_claims([(swap.get(n, n), *rest) for n, *rest in PAPER])
    gap, equal, diverges = paper
    assert not gap.passed and gap.outcome == "failed"  # "BN" at 0.1 is the diverged run: at chance
    assert not diverges.passed  # "no BN" at 0.1 trained
    # Equal lr is symmetric; its control is BN far above no BN at the same lr.
    paper, _ = _paper_claims([r if r[:2] != ("bn", 1e-4) else ("bn", 1e-4, None, 0.93, 1.0, True) for r in PAPER])
    assert paper[1].value == pytest.approx(12.0) and paper[1].outcome == "failed"


def test_negative_control_an_undertrained_small_lr_run_is_not_decided_by_the_budget():
    # The old quick profile: the 1e-4 runs stopped while rising (43% / 79% train accuracy).
    rows = [r for r in PAPER if r[:2] not in (("bn", 1e-4), ("none", 1e-4))]
    rows += [("bn", 1e-4, None, 0.64, 0.79, False), ("none", 1e-4, None, 0.45, 0.43, False)]
    paper, everything = _paper_claims(rows)
    assert [c.outcome for c in paper] == ["not evaluable", "not evaluable", "passed"]
    assert "no BN lr=0.0001 ends at 43.0% train accuracy, +20.0 pts over the last plateau window" in paper[0].note
    assert "BN lr=0.0001 ends at 79.0%" in paper[1].note
    sanity = [c for c in everything if c.kind == "sanity"]
    assert sanity[0].value == pytest.approx(43.0) and not sanity[0].passed  # not the paper's ~100%
    # Had the same runs plateaued there, the gap (53 points) would be far outside the paper's ~11.
    plateaued = [(*r[:5], True) if r[:2] in (("bn", 1e-4), ("none", 1e-4)) else r for r in rows]
    paper, _ = _paper_claims(plateaued)
    assert paper[0].value == pytest.approx(48.0) and paper[0].outcome == "failed"
    assert paper[1].outcome == "failed"
    # A run at >= 99% train accuracy has converged, plateau judged or not (tables without the column).
    converged = [(*r[:4], 0.995, False) if r[:2] == ("none", 1e-4) else r for r in PAPER]
    assert _paper_claims(converged)[0][0].outcome == "passed"
    table = _outcomes(converged)["outcomes"].drop(columns=["plateaued", "full_lr_gain"])
    assert [c.outcome for c in fig1.claims({"outcomes": table}) if c.kind == "paper"] == ["passed"] * 3


def test_negative_control_runs_collapsed_to_chance_do_not_count_as_trained():
    collapsed = ("none", 1e-4, None, 0.084, 0.104, True)  # a flat line at chance: plateaued, not trained
    paper, _ = _paper_claims([collapsed if r[:2] == ("none", 1e-4) else r for r in PAPER])
    assert paper[0].outcome == paper[1].outcome == "failed"
    nf = ("nf", 0.1, None, 0.084, 0.104, True)
    claims = fig1.claims(_outcomes([nf if r[0] == "nf" else r for r in PAPER]))
    assert [c.outcome for c in claims if c.kind == "extension"] == ["failed"]  # completed, but at chance
    diverged = fig1.claims(_outcomes([("nf", 0.1, None, None, None, None) if r[0] == "nf" else r for r in PAPER]))
    assert [c.value for c in diverged if c.kind == "extension"] == [10.0]


def test_agc_claims_compare_the_clipped_networks_with_bn_and_leave_the_paper_claims_alone():
    rows = [
        ("bn", 0.1, None, 0.98, 1.0, True),
        ("bn", 1e-4, None, 0.84, 1.0, True),
        ("none", 1e-4, None, 0.85, 1.0, True),
        ("none", 0.1, None, None, None, None),
        ("nf", 0.1, None, 0.97, 1.0, True),
        ("none", 0.1, 0.08, 0.93, 0.99, True),
        ("nf", 0.1, 0.08, 0.96, 1.0, True),
    ]
    found = fig1.claims(_outcomes(rows))
    paper = fig1.claims(_outcomes(rows[:5]))
    assert [c.value for c in found[:5]] == pytest.approx([c.value for c in paper])  # the clipped runs change nothing
    assert paper[2].passed  # no BN at 0.1 diverged: the clipped no-BN run at 0.1 is not mistaken for it
    agc = found[5:]
    assert [c.value for c in agc] == pytest.approx([93.0, 100 * (0.93 - 0.85), 100 * (0.98 - 0.93), 100 * (0.98 - 0.96)])
    assert [c.outcome for c in agc] == ["passed", "passed", "failed", "passed"]
    assert all(c.kind == "extension" and c.claim.startswith("(beyond the papers) With AGC (λ=0.08)") for c in agc)
    # Negative control: a clipped no-BN run that collapsed to chance (8.4%, as seed 1 once did) fails
    # every claim, though it did not diverge.
    collapsed = fig1.claims(_outcomes(rows[:5] + [("none", 0.1, 0.08, 0.084, 0.104, True)]))[5:]
    assert [c.outcome for c in collapsed] == ["failed"] * 3
    # ... and so does one that diverged, counted at chance (10%).
    diverged = fig1.claims(_outcomes(rows[:5] + [("none", 0.1, 0.08, None, None, None)]))[5:]
    assert diverged[0].value == 10.0 and [c.outcome for c in diverged] == ["failed"] * 3
    # A clipped run still rising when training ended cannot be compared; one that is trained still is.
    rising = fig1.claims(_outcomes(rows[:5] + [("none", 0.1, 0.08, 0.70, 0.72, False)]))[5:]
    assert [c.outcome for c in rising] == ["passed", "not evaluable", "not evaluable"]
    # BN that did not train at 0.1 is no reference: "comparable to BN" is not decided.
    no_bn_ref = fig1.claims(_outcomes([("bn", 0.1, None, 0.11, 0.11, True)] + rows[1:]))
    assert [c.outcome for c in no_bn_ref[-2:]] == ["not evaluable"] * 2 and "did not train" in no_bn_ref[-1].note


def test_an_interrupted_sweep_resumes_and_ends_with_the_same_tables(tmp_path, monkeypatch):
    import nfstudy.train.pool as pool  # with NFSTUDY_WORKERS=1 (conftest) it trains each series here

    whole = tiny_run(checkpoint_dir=tmp_path / "whole")
    real_train, calls = pool.train, []

    def interrupted_in_the_third_series(*args, **kwargs):
        calls.append(kwargs["desc"])
        if len(calls) == 3:

            def stop(row):
                raise KeyboardInterrupt

            kwargs["on_epoch"] = stop
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pool, "train", interrupted_in_the_third_series)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(checkpoint_dir=tmp_path / "cut")
    monkeypatch.setattr(pool, "train", real_train)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["bn_lr0.001", "bn_lr0.1", "none_lr0.001"]
    resumed = tiny_run(checkpoint_dir=tmp_path / "cut")
    for name in ("history", "outcomes"):
        pd.testing.assert_frame_equal(resumed[name], whole[name], check_exact=True)
    with pytest.raises(ValueError, match="another configuration .*epochs: 2 there, 3 here"):
        tiny_run(checkpoint_dir=tmp_path / "cut", epochs=3)


def test_plot_draws_bands_over_seeds_and_marks_divergence():
    tables = {}
    for seed in (0, 1):
        for name, df in tiny_run(seed=seed).items():
            tables.setdefault(name, []).append(df.assign(seed=seed))
    tables = {k: pd.concat(v, ignore_index=True) for k, v in tables.items()}
    fig = fig1.plot(tables)
    train_ax, test_ax = fig.axes[:2]
    curves = [line for line in train_ax.lines if len(set(line.get_xdata())) > 1]  # not the lr-drop verticals
    assert len(curves) == 4 and [list(c.get_xdata()) for c in curves] == [[50.0, 100.0]] * 4
    bands = [c for c in test_ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
    assert len(bands) == 4  # one per series that trained, mean +- std over the two seeds
    crosses = [c for c in test_ax.collections if type(c).__name__ == "PathCollection"]
    assert len(crosses) == 1 and len(crosses[0].get_offsets()) == 2  # the diverged series, once per seed
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "no BN, lr=50: diverged at step" in " ".join(labels) and "lr ÷ 10" in labels
    assert "mean ± std of 2 seeds" in fig._suptitle.get_text()


def test_the_mean_over_seeds_whose_budgets_differ_is_taken_on_one_grid():
    from nfstudy_experiments.fig1 import _mean_std

    # Seed 0 trained 2 epochs, seed 1 4 (the plateau rule doubled its budget): 50/100% and 25/50/75/100%.
    history = pd.DataFrame(
        {
            "seed": [0, 0, 1, 1, 1, 1],
            "progress_pct": [50.0, 100.0, 25.0, 50.0, 75.0, 100.0],
            "test_accuracy": [0.6, 1.0, 0.2, 0.4, 0.6, 0.8],
        }
    )
    stats = _mean_std(history, "test_accuracy")
    assert stats["progress_pct"].tolist() == [25.0, 50.0, 75.0, 100.0]
    assert stats["mean"].tolist() == pytest.approx([0.2, 0.5, 0.7, 0.9])  # 75%: seed 0 interpolated to 0.8
    assert stats["size"].tolist() == [1, 2, 2, 2] and stats["std"].iloc[0] == 0.0


def test_bad_parameters_name_the_fix():
    from nfstudy_experiments import params_for

    with pytest.raises(ValueError, match="series must be norm@lr or norm\\+agc@lr, e.g. 'bn@0.1'"):
        params_for("fig1", "quick", series=["bn:0.1"])
    with pytest.raises(ValueError, match="unknown norm in series 'bn\\+clip': choose one of bn, none, ws, nf"):
        params_for("fig1", "quick", series=["bn+clip@0.1"])
    with pytest.raises(ValueError, match="agc_lambda \\(the AGC clipping threshold\\) must be > 0"):
        params_for("fig1", "quick", agc_lambda=0)
    with pytest.raises(ValueError, match="unknown norm in series 'batchnorm': choose one of bn, none, ws, nf"):
        params_for("fig1", "quick", series=["batchnorm@0.1"])
    with pytest.raises(ValueError, match="learning rate of series 'bn@-0.1' must be > 0"):
        params_for("fig1", "quick", series=["bn@-0.1"])
    with pytest.raises(ValueError, match="repeats"):
        params_for("fig1", "quick", series=["bn@0.1", "bn@0.10"])
    with pytest.raises(ValueError, match="epochs must be > 0"):
        params_for("fig1", "quick", epochs=0)
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        params_for("fig1", "quick", batch_size=-128)
    with pytest.raises(ValueError, match="image_size must be 32 with dataset cifar10"):
        params_for("fig1", "paper", image_size=8)
    with pytest.raises(ValueError, match="unknown fuse 'yes': choose one of auto, on, off"):
        params_for("fig1", "quick", fuse="yes")


@pytest.mark.slow
def test_papermill_run_writes_the_contract_files_and_resumes(results_root, config_dir, monkeypatch):
    args = [
        "run",
        "fig1",
        "--profile",
        "quick",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--param",
        "depth=8",
        "--param",
        "epochs=2",
        "--param",
        "extend_until_plateau=False",
        "--param",
        "series=bn@0.1,bn@0.001,none@0.001,none@50",
    ]
    assert main(args) == 0
    base = config_dir(args)  # a configuration of its own: results/fig1/quick+depth=8+...-<hash>/
    folder = base / "seed=0"
    names = {p.name for p in folder.iterdir()}
    assert names == {"fig1.ipynb", "run.json", "history.csv", "outcomes.csv", "claims.csv", "fig1.png", "checkpoints"}
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["bn_lr0.001", "bn_lr0.1", "none_lr0.001", "none_lr50"]
    meta = json.loads((folder / "run.json").read_text())
    assert meta["status"] == "completed" and meta["params"]["series"] == ["bn@0.1", "bn@0.001", "none@0.001", "none@50"]
    claims = pd.read_csv(folder / "claims.csv")
    assert len(claims) == 4 and claims["metric"].str.contains("training done when").sum() == 1
    assert claims.loc[claims["metric"].str.contains("training done when"), "passed"].all()
    assert (base / "fig1.png").stat().st_size > 10_000 and (base / "claims.csv").is_file()
    before = {p.name: p.read_bytes() for p in folder.glob("*.csv")}
    assert main(args) == 0  # everything is in the checkpoints: the same tables
    assert {p.name: p.read_bytes() for p in folder.glob("*.csv")} == before
