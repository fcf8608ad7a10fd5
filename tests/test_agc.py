"""The AGC ablation (NFNets Fig. 2): the lr scaling rule, the sweep's bookkeeping, the claims'
arithmetic on hand-made tables, the plot, and one papermill run at a tiny size."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from nfstudy import figures
from nfstudy.cli import main

# ResNet-8 on 8x8 digits, 2 epochs at batches 64 and 512: about a second per run. A threshold
# of 1e9 never clips, so that run must equal the unclipped one bit for bit.
TINY = {"depth": 8, "epochs": 2, "batch_sizes": (64, 512), "agc_lambdas": (0.01, 1e9)}


def tiny_run(seed=0, **overrides):
    from experiments import agc, params_for

    return agc.run(params_for("agc", "quick", **{**TINY, **overrides}), seed=seed, device="cpu")


def test_learning_rate_scales_linearly_with_the_batch():
    from experiments import agc, params_for

    paper = params_for("agc", "paper")
    assert paper.batch_sizes == (256, 512, 1024, 2048, 4096)
    assert [paper.lr(b) for b in paper.batch_sizes] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])  # 0.1 * B / 256
    quick = params_for("agc", "quick")
    assert [quick.lr(b) for b in quick.batch_sizes] == pytest.approx([0.1, 0.4, 1.6])  # the paper's lrs at 1/4 the batch
    assert quick.agc_lambdas == paper.agc_lambdas == (0.01, 0.02, 0.04, 0.08, 0.16)
    assert params_for("agc", "quick", reference_lr=0.2, reference_batch_size=128).lr(512) == pytest.approx(0.8)
    assert agc.scaled_lr(4096, 0.1, 256) == pytest.approx(1.6)
    assert paper.train_config(2048).lr == pytest.approx(0.8) and paper.train_config(2048).batch_size == 2048


def test_the_sweep_runs_every_series_at_every_batch_and_threshold():
    tables = tiny_run()
    summary, history = tables["summary"], tables["history"]
    runs = list(zip(summary["series"], summary["agc_lambda"].fillna(0), summary["batch_size"]))
    assert runs == [
        ("bn", 0, 64), ("bn", 0, 512), ("nf", 0, 64), ("nf", 0, 512),
        ("nf+agc", 0.01, 64), ("nf+agc", 1e9, 64), ("nf+agc", 0.01, 512), ("nf+agc", 1e9, 512),
    ]  # fmt: skip
    assert summary["norm"].tolist() == ["bn"] * 2 + ["nf"] * 6
    np.testing.assert_allclose(summary["base_lr"], 0.1 * summary["batch_size"] / 64)
    # A fixed epoch budget: 1498 training images make 24 steps of 64 or 3 of 512 per epoch.
    assert summary.set_index(["series", "batch_size"])["steps"].groupby(level=1).first().to_dict() == {64: 48, 512: 6}
    assert (summary["chance_accuracy"] == 0.1).all() and not summary["diverged"].any()
    # History: one row per run and epoch, keyed like the summary; the epoch's lr is the run's.
    assert history.columns.tolist()[:5] == ["series", "norm", "agc_lambda", "batch_size", "base_lr"]
    assert len(history) == 2 * len(summary)
    # Two epochs: the step schedule's drops (50%, 75%) both fall at the second.
    np.testing.assert_allclose(history["lr"], history["base_lr"] * np.where(history["epoch"] == 1, 1.0, 0.01))
    keys = ["series", "agc_lambda", "batch_size"]
    last = history.fillna({"agc_lambda": 0}).groupby(keys).last()["test_accuracy"]
    for row in summary.fillna({"agc_lambda": 0}).itertuples():
        assert row.final_test_accuracy == last[(row.series, row.agc_lambda, row.batch_size)]
    # Every run of a norm starts from the same weights and sees the same batches: a threshold
    # that never clips gives the unclipped run exactly; a small one really clips.
    by = summary.fillna({"agc_lambda": 0}).set_index(keys)
    for b in (64, 512):
        never, unclipped, clipped = by.loc[("nf+agc", 1e9, b)], by.loc[("nf", 0, b)], by.loc[("nf+agc", 0.01, b)]
        assert never["initial_loss"] == unclipped["initial_loss"] == clipped["initial_loss"]
        assert never["final_train_loss"] == unclipped["final_train_loss"]
        assert clipped["final_train_loss"] != unclipped["final_train_loss"]


def _summary(rows, seed=0):
    """A summary table from (series, lambda, batch, test accuracy or None for diverged)."""
    frame = pd.DataFrame(
        [
            {
                "seed": seed, "series": s, "norm": s.split("+")[0], "agc_lambda": np.nan if lam is None else lam,
                "batch_size": b, "base_lr": 0.1 * b / 64, "status": "diverged" if acc is None else "completed",
                "diverged": acc is None, "final_test_accuracy": np.nan if acc is None else acc, "chance_accuracy": 0.1,
            }
            for s, lam, b, acc in rows
        ]
    )  # fmt: skip
    return {"summary": frame}


PAPER_LIKE = [
    ("bn", None, 64, 0.98), ("bn", None, 1024, 0.90),
    ("nf", None, 64, 0.97), ("nf", None, 1024, None),  # unclipped NF diverges at the largest batch
    ("nf+agc", 0.01, 64, 0.90), ("nf+agc", 0.04, 64, 0.95), ("nf+agc", 0.16, 64, 0.95),  # a tie: 0.16 wins
    ("nf+agc", 0.01, 1024, 0.85), ("nf+agc", 0.04, 1024, 0.70), ("nf+agc", 0.16, 1024, None),
]  # fmt: skip


def test_claims_are_computed_from_the_summary():
    module = figures.load("agc")
    tables = _summary(PAPER_LIKE)
    best = module.best_lambda(tables["summary"]).set_index("batch_size")
    assert best["agc_lambda"].to_dict() == {64: 0.16, 1024: 0.01}  # ties go to the larger threshold
    assert best["accuracy"].to_dict() == pytest.approx({64: 0.95, 1024: 0.85})
    found = module.claims(tables)
    assert len(found) == 2
    # Gain at 1024: 85 - 10 (the diverged NF counts as chance); at 64: 95 - 97.
    assert found[0].value == pytest.approx((85 - 10) - (95 - 97))
    assert (found[0].comparison, found[0].threshold) == (">", 0.0) and found[0].passed
    assert "batch 1024 minus at batch 64" in found[0].metric
    assert found[1].value == pytest.approx(0.01 / 0.16) and found[1].passed and found[1].comparison == "<="

    # The opposite world: AGC helps only at the small batch, and wants a larger lambda at the large one.
    opposite = [
        ("nf", None, 64, 0.80), ("nf", None, 1024, 0.90),
        ("nf+agc", 0.01, 64, 0.95), ("nf+agc", 0.16, 64, 0.90),
        ("nf+agc", 0.01, 1024, 0.80), ("nf+agc", 0.16, 1024, 0.91),
    ]  # fmt: skip
    found = module.claims(_summary(opposite))
    assert found[0].value == pytest.approx((91 - 90) - (95 - 80)) and not found[0].passed
    assert found[1].value == pytest.approx(16.0) and not found[1].passed
    # Without an unclipped NF the first claim has nothing to compare with; one batch size: no claims.
    assert len(module.claims(_summary([r for r in opposite if r[0] != "nf"]))) == 1
    assert module.claims(_summary([r for r in opposite if r[2] == 64])) == []


def test_plot_has_both_panels_bands_over_seeds_and_marks_divergence():
    tables = {"summary": pd.concat([_summary(PAPER_LIKE, seed)["summary"] for seed in (0, 1)], ignore_index=True)}
    fig = figures.load("agc").plot(tables)
    batch_ax, lambda_ax = fig.axes[:2]
    assert [t.get_text() for t in batch_ax.get_xticklabels()] == ["64", "1024"]
    assert [t.get_text() for t in lambda_ax.get_xticklabels()] == ["0.01", "0.04", "0.16"]
    curves = [line for line in batch_ax.lines if line.get_marker() == "o"]  # not the chance level
    assert len(curves) == 3  # bn, nf, nf+agc at its best lambda
    assert list(curves[1].get_ydata()) == pytest.approx([97.0, 10.0])  # NF diverged at 1024: chance
    nf_agc = curves[2].get_ydata()
    assert list(nf_agc) == pytest.approx([95.0, 85.0])
    bands = [c for c in batch_ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
    assert len(bands) == 3
    crosses = [c for c in batch_ax.collections if type(c).__name__ == "PathCollection"]
    assert len(crosses) == 1 and list(crosses[0].get_offsets()[0]) == [1024, 10.0]  # NF diverged: at chance
    assert {t.get_text() for t in batch_ax.texts} == {"λ=0.16", "λ=0.01"}
    lines = [line for line in lambda_ax.lines if line.get_marker() == "o" and len(line.get_xdata()) == 3]
    assert [line.get_label() for line in lines] == ["B=64 (lr 0.1)", "B=1024 (lr 1.6)"]
    assert list(lines[1].get_ydata()) == pytest.approx([85.0, 70.0, 10.0])  # the diverged 0.16 at chance
    rings = [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in lambda_ax.lines if line.get_markersize() == 11]
    assert rings == [(0.16, 95.0), (0.01, 85.0)]  # the best lambda per batch; the tie at B=64 goes to 0.16
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "NF-ResNet: diverged at B=1024" in legend and "mean ± std of 2 seeds" in fig._suptitle.get_text()


def test_bad_parameters_name_the_fix():
    from experiments import params_for

    with pytest.raises(ValueError, match="series must be a norm, optionally with \\+agc"):
        params_for("agc", "quick", series=["nf+clip+agc"])
    with pytest.raises(ValueError, match="unknown norm in series 'batchnorm': choose one of bn, none, ws, nf"):
        params_for("agc", "quick", series=["batchnorm"])
    with pytest.raises(ValueError, match="series repeats"):
        params_for("agc", "quick", series=["nf", "nf"])
    with pytest.raises(ValueError, match="AGC clipping threshold in agc_lambdas must be > 0"):
        params_for("agc", "quick", agc_lambdas=[0.01, 0])
    with pytest.raises(ValueError, match="agc_lambdas is empty but a series clips"):
        params_for("agc", "quick", agc_lambdas=[])
    with pytest.raises(ValueError, match="batch_sizes repeats"):
        params_for("agc", "quick", batch_sizes=[64, 64])
    with pytest.raises(ValueError, match="batch size must be > 0"):
        params_for("agc", "quick", batch_sizes=[0, 64])
    with pytest.raises(ValueError, match="reference_batch_size must be > 0"):
        params_for("agc", "quick", reference_batch_size=0)
    runs = params_for("agc", "quick", series=["bn"], agc_lambdas=[]).runs()  # nothing clips: no thresholds needed
    assert [(s, b) for s, _, _, b in runs] == [("bn", 64), ("bn", 256), ("bn", 1024)]
    assert all(math.isnan(lam) for _, _, lam, _ in runs)


@pytest.mark.slow
def test_papermill_run_writes_the_contract_files_and_resumes(results_root):
    args = ["run", "agc", "--profile", "quick", "--seed", "0", "--device", "cpu", "--param", "depth=8",
            "--param", "epochs=1", "--param", "batch_sizes=64,512", "--param", "agc_lambdas=0.01,0.16"]  # fmt: skip
    assert main(args) == 0
    base = results_root / "agc" / "quick"
    folder = base / "seed=0"
    assert {p.name for p in folder.iterdir()} == {"agc.ipynb", "run.json", "history.csv", "summary.csv", "claims.csv",
                                                   "agc.png", "checkpoints"}  # fmt: skip
    assert len(list((folder / "checkpoints").iterdir())) == 8
    assert (folder / "checkpoints" / "nf+agc_batch512_lambda0.16").is_dir()
    meta = json.loads((folder / "run.json").read_text())
    assert meta["status"] == "completed" and meta["params"]["batch_sizes"] == [64, 512]
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == 8 and summary.columns[0] == "seed"
    claims = pd.read_csv(folder / "claims.csv")
    assert len(claims) == 2
    # claims.csv is what the figure module computes from the saved tables.
    recomputed = figures.load("agc").claims({"summary": summary, "history": pd.read_csv(folder / "history.csv")})
    np.testing.assert_allclose(claims["value"], [c.value for c in recomputed])
    assert (base / "agc.png").stat().st_size > 10_000 and (base / "claims.csv").is_file()
    before = {p.name: p.read_bytes() for p in folder.glob("*.csv")}
    assert main(args) == 0  # every run is in its checkpoint: the same tables
    assert {p.name: p.read_bytes() for p in folder.glob("*.csv")} == before
