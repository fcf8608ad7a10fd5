import json

import numpy as np
import pandas as pd
import pytest

from nfstudy import figures
from nfstudy.cli import main

# ResNet-8 on 8x8 digits, 2 epochs: a second per series. lr 50 makes the no-BN net explode.
SERIES = ("bn@0.1", "bn@0.001", "none@0.001", "none@50", "nf@0.1")
TINY = {"depth": 8, "epochs": 2, "series": SERIES}


def tiny_run(seed=0, checkpoint_dir=None, **overrides):
    from experiments import fig1, params_for

    return fig1.run(params_for("fig1", "quick", **{**TINY, **overrides}), seed=seed, device="cpu", checkpoint_dir=checkpoint_dir)


def test_tables_of_a_sweep_that_goes_on_after_a_divergence():
    tables = tiny_run()
    history, outcomes = tables["history"], tables["outcomes"]
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
    o = tables["outcomes"].set_index("series")["final_test_accuracy"]
    claims = figures.load("fig1").claims(tables)
    assert len(claims) == 4
    assert claims[0].value == pytest.approx(100 * (o["bn@lr=0.1"] - o["none@lr=0.001"]))
    assert claims[0].comparison == ">=" and claims[0].threshold == 5.0 and "0.001" in claims[0].metric
    assert claims[1].value == pytest.approx(abs(100 * (o["bn@lr=0.001"] - o["none@lr=0.001"])))
    assert (claims[1].comparison, claims[1].threshold) == ("<=", 3.0)
    assert claims[2].passed and claims[2].value < 100  # no BN at lr 50 diverged
    assert claims[3].passed and claims[3].value == 100.0  # NF at 0.1 did not
    # Without a matched lr there is nothing to compare at equal lr: those claims are absent.
    only = {k: v[~v["series"].str.startswith("none")] for k, v in tables.items()}
    assert [c.metric.split(" ")[0] for c in figures.load("fig1").claims(only)] == ["%"]


def test_agc_series_train_with_clipping():
    # The same network, weights and batches, clipped and not: a threshold of 1e9 never clips and
    # gives the unclipped run bit for bit; 0.01 changes every step after the first.
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


def _outcomes(rows):
    return {
        "outcomes": pd.DataFrame(
            [
                {"seed": 0, "series": f"{n}{'+agc' if lam else ''}@lr={lr:g}", "norm": n, "base_lr": lr,
                 "agc_lambda": lam or np.nan, "status": "diverged" if acc is None else "completed",
                 "diverged_pct": 1.0 if acc is None else np.nan, "final_test_accuracy": np.nan if acc is None else acc}
                for n, lr, lam, acc in rows
            ]
        )
    }  # fmt: skip


def test_agc_claims_compare_the_clipped_networks_with_bn_and_leave_the_paper_claims_alone():
    rows = [("bn", 0.1, None, 0.98), ("bn", 1e-4, None, 0.64), ("none", 1e-4, None, 0.45), ("none", 0.1, None, None),
            ("nf", 0.1, None, 0.97), ("none", 0.1, 0.08, 0.93), ("nf", 0.1, 0.08, 0.96)]  # fmt: skip
    found = figures.load("fig1").claims(_outcomes(rows))
    paper = figures.load("fig1").claims(_outcomes(rows[:5]))
    assert [c.value for c in found[:4]] == pytest.approx([c.value for c in paper])  # the clipped runs change nothing
    assert paper[2].passed  # no BN at 0.1 diverged: the clipped no-BN run at 0.1 is not mistaken for it
    agc = found[4:]
    assert [c.value for c in agc] == pytest.approx([100.0, 100 * (0.93 - 0.45), 100 * (0.98 - 0.93), 100 * (0.98 - 0.96)])
    assert [c.passed for c in agc] == [True, True, False, True]
    assert all(c.claim.startswith("(beyond the papers) With AGC (λ=0.08)") for c in agc)
    # A clipped no-BN run that diverges fails its claims, counted at chance (10%).
    diverged = figures.load("fig1").claims(_outcomes(rows[:5] + [("none", 0.1, 0.08, None)]))
    assert diverged[4].value == 1.0 and not diverged[4].passed
    assert diverged[5].value == pytest.approx(100 * (0.1 - 0.45)) and not diverged[5].passed


def test_an_interrupted_sweep_resumes_and_ends_with_the_same_tables(tmp_path, monkeypatch):
    from experiments import fig1

    whole = tiny_run(checkpoint_dir=tmp_path / "whole")
    real_train, calls = fig1.train, []

    def interrupted_in_the_third_series(*args, **kwargs):
        calls.append(kwargs["desc"])
        if len(calls) == 3:
            def stop(row):
                raise KeyboardInterrupt

            kwargs["on_epoch"] = stop
        return real_train(*args, **kwargs)

    monkeypatch.setattr(fig1, "train", interrupted_in_the_third_series)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(checkpoint_dir=tmp_path / "cut")
    monkeypatch.setattr(fig1, "train", real_train)
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
    fig = figures.load("fig1").plot(tables)
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


def test_bad_parameters_name_the_fix():
    from experiments import params_for

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


@pytest.mark.slow
def test_papermill_run_writes_the_contract_files_and_resumes(results_root, monkeypatch):
    args = ["run", "fig1", "--profile", "quick", "--seed", "0", "--device", "cpu", "--param", "depth=8",
            "--param", "epochs=2", "--param", "series=bn@0.1,bn@0.001,none@0.001,none@50"]  # fmt: skip
    assert main(args) == 0
    base = results_root / "fig1" / "quick"
    folder = base / "seed=0"
    names = {p.name for p in folder.iterdir()}
    assert names == {"fig1.ipynb", "run.json", "history.csv", "outcomes.csv", "claims.csv", "fig1.png", "checkpoints"}
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["bn_lr0.001", "bn_lr0.1", "none_lr0.001", "none_lr50"]
    meta = json.loads((folder / "run.json").read_text())
    assert meta["status"] == "completed" and meta["params"]["series"] == ["bn@0.1", "bn@0.001", "none@0.001", "none@50"]
    claims = pd.read_csv(folder / "claims.csv")
    assert len(claims) == 3 and claims["metric"].str.contains("diverged").sum() == 1
    assert claims.loc[claims["metric"].str.contains("diverged"), "passed"].all()
    assert (base / "fig1.png").stat().st_size > 10_000 and (base / "claims.csv").is_file()
    before = {p.name: p.read_bytes() for p in folder.glob("*.csv")}
    assert main(args) == 0  # everything is in the checkpoints: the same tables
    assert {p.name: p.read_bytes() for p in folder.glob("*.csv")} == before
