"""The AGC ablation (NFNets Fig. 2): the lr scaling rule, the sweep's bookkeeping, the claims'
arithmetic on hand-made tables, the plot, and one papermill run at a tiny size."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from _numerics import FIRST_LOSS_RTOL, FUSED_ACC_IMAGES, FUSED_LOSS_RTOL

from nfstudy.cli import main
from nfstudy_experiments import agc

# ResNet-8 on 8x8 digits, 2 epochs at batches 64 and 512 (lr 0.1 at 64, no warmup): about a
# second per run. A threshold of 1e9 never clips, so that run must equal the unclipped one bit
# for bit.
TINY = {"depth": 8, "epochs": 2, "batch_sizes": (64, 512), "agc_lambdas": (0.01, 1e9), "reference_batch_size": 64, "warmup_epochs": 0.0}


def tiny_run(seed=0, **overrides):
    from nfstudy_experiments import agc, params_for

    return agc.run(params_for("agc", "quick", **{**TINY, **overrides}), seed=seed, device="cpu")


def test_learning_rate_scales_linearly_with_the_batch():
    from nfstudy_experiments import agc, params_for

    paper = params_for("agc", "paper")
    assert paper.batch_sizes == (256, 512, 1024, 2048, 4096)
    assert [paper.lr(b) for b in paper.batch_sizes] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])  # 0.1 * B / 256
    quick = params_for("agc", "quick")
    assert [quick.lr(b) for b in quick.batch_sizes] == pytest.approx([0.1, 0.4, 1.6])  # the paper's lrs at 1/8 the batch
    assert paper.agc_lambdas == (0.01, 0.02, 0.04, 0.08, 0.16)
    assert set(quick.agc_lambdas) <= set(paper.agc_lambdas) and {0.01, 0.16} <= set(quick.agc_lambdas)  # the sweep's ends
    # The large-batch regime: every batch size, the largest too, takes >= 100 steps at the full rate's budget.
    assert len(quick.batch_sizes) >= 3 and max(quick.batch_sizes) / min(quick.batch_sizes) == 16  # the paper's range
    assert quick.epochs * -(-1498 // max(quick.batch_sizes)) >= 100
    assert 0 < quick.warmup_epochs <= quick.epochs / 2
    assert params_for("agc", "quick", reference_lr=0.2, reference_batch_size=128).lr(512) == pytest.approx(0.8)
    assert agc.scaled_lr(4096, 0.1, 256) == pytest.approx(1.6)
    assert paper.train_config(2048).lr == pytest.approx(0.8) and paper.train_config(2048).batch_size == 2048


def test_the_sweep_runs_every_series_at_every_batch_and_threshold():
    tables = tiny_run()
    summary, history = tables["summary"], tables["history"]
    # the columns and their order are the module's TABLES (the one owner of the schema)
    assert {n: list(t.columns) for n, t in tables.items()} == {n: list(agc.TABLES[n]) for n in tables}
    runs = list(zip(summary["series"], summary["agc_lambda"].fillna(0), summary["batch_size"]))
    assert runs == [
        ("bn", 0, 64),
        ("bn", 0, 512),
        ("nf", 0, 64),
        ("nf", 0, 512),
        ("nf+agc", 0.01, 64),
        ("nf+agc", 1e9, 64),
        ("nf+agc", 0.01, 512),
        ("nf+agc", 1e9, 512),
    ]
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
    # Every run of a norm starts from the same weights and sees the same batches, one run at a
    # time on a CPU (the same kernels): a threshold that never clips (a factor of exactly 1)
    # gives the unclipped run bit for bit; a small one really clips.
    by = summary.fillna({"agc_lambda": 0}).set_index(keys)
    for b in (64, 512):
        never, unclipped, clipped = by.loc[("nf+agc", 1e9, b)], by.loc[("nf", 0, b)], by.loc[("nf+agc", 0.01, b)]
        assert never["initial_loss"] == unclipped["initial_loss"] == clipped["initial_loss"]
        assert never["final_train_loss"] == unclipped["final_train_loss"]
        assert clipped["final_train_loss"] != unclipped["final_train_loss"]


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
            elif "accuracy" in col and col != "chance_accuracy":
                np.testing.assert_allclose(other[col], table[col], atol=(FUSED_ACC_IMAGES + 0.01) / 299, rtol=0, err_msg=f"{name}.{col}")
            else:  # series, lambda, batch, status, steps, lr, ...
                pd.testing.assert_series_equal(other[col], table[col], check_exact=True, obj=f"{name}.{col}")


@pytest.mark.numerics
def test_fuse_trains_a_norms_runs_at_one_batch_as_one_network_and_gives_the_same_tables():
    # Groups by (norm, batch): bn alone at each batch (train), nf with its two thresholds fused.
    smaller = {"batch_sizes": (128, 512)}  # 12 and 3 steps per epoch
    alone = tiny_run(fuse="off", **smaller)
    fused = tiny_run(fuse="on", **smaller)
    assert_tables_agree(fused, alone)
    auto = tiny_run(fuse="auto", **smaller)  # on a CPU: one at a time, bit for bit
    for name, table in alone.items():
        pd.testing.assert_frame_equal(auto[name], table, check_exact=True)


def _summary(rows, seed=0):
    """A summary table from (series, lambda, batch, test accuracy or None for diverged)."""
    frame = pd.DataFrame(
        [
            {
                "seed": seed,
                "series": s,
                "norm": s.split("+")[0],
                "agc_lambda": np.nan if lam is None else lam,
                "batch_size": b,
                "base_lr": 0.1 * b / 64,
                "status": "diverged" if acc is None else "completed",
                "diverged": acc is None,
                "final_test_accuracy": np.nan if acc is None else acc,
                "chance_accuracy": 0.1,
            }
            for s, lam, b, acc in rows
        ]
    )
    return {"summary": frame}


PAPER_LIKE = [
    ("bn", None, 64, 0.98),
    ("bn", None, 1024, 0.90),
    ("nf", None, 64, 0.97),
    ("nf", None, 1024, None),  # unclipped NF diverges at the largest batch
    ("nf+agc", 0.01, 64, 0.90),
    ("nf+agc", 0.04, 64, 0.95),
    ("nf+agc", 0.16, 64, 0.95),  # a tie: 0.16 wins
    ("nf+agc", 0.01, 1024, 0.85),
    ("nf+agc", 0.04, 1024, 0.70),
    ("nf+agc", 0.16, 1024, None),
]


# NFNets Fig. 2 in miniature: BN flat, NF unclipped diverges at the largest batch, NF + AGC
# within a point of BN everywhere, the loosest good lambda 0.16 at batch 32 and 0.01 at 512.
FIG2_LIKE = [
    ("bn", None, 32, 0.98),
    ("bn", None, 128, 0.975),
    ("bn", None, 512, 0.97),
    ("nf", None, 32, 0.97),
    ("nf", None, 128, 0.96),
    ("nf", None, 512, None),
    ("nf+agc", 0.01, 32, 0.95),
    ("nf+agc", 0.04, 32, 0.96),
    ("nf+agc", 0.16, 32, 0.975),
    ("nf+agc", 0.01, 128, 0.95),
    ("nf+agc", 0.04, 128, 0.965),
    ("nf+agc", 0.16, 128, 0.97),
    ("nf+agc", 0.01, 512, 0.96),
    ("nf+agc", 0.04, 512, 0.90),
    ("nf+agc", 0.16, 512, None),
]


def _claims(rows):
    """The claims of a constructed table, by a short name."""
    found = agc.claims(_summary(rows))
    names = ["bn trained", "bn flat", "parity", "collapse", "lambda"]
    assert len(found) == len(names), [c.claim for c in found]
    return dict(zip(names, found, strict=True))


def _replace(rows, series, batch, accuracy, lam=None):
    return [(s, lr, b, accuracy if (s, lr, b) == (series, lam, batch) else a) for s, lr, b, a in rows]


def test_claims_of_the_paper_pass_on_a_paper_like_table():
    module = agc
    tables = _summary(FIG2_LIKE)
    assert module.lambda_spread(tables["summary"], "nf+agc").to_dict() == pytest.approx({32: 2.5, 128: 2.0, 512: 86.0})
    assert module.loosest_good_lambda(tables["summary"], "nf+agc").to_dict() == {32: 0.16, 128: 0.16, 512: 0.01}
    c = _claims(FIG2_LIKE)
    assert all(claim.outcome == "passed" for claim in c.values()), {k: v.outcome for k, v in c.items()}
    assert all(claim.kind == "paper" for claim in c.values())
    assert c["bn trained"].value == pytest.approx(97.0) and c["bn trained"].threshold == pytest.approx(55.0)
    assert c["bn flat"].value == pytest.approx(-1.0) and "B=512" in c["bn flat"].note
    assert (c["bn flat"].threshold, c["bn flat"].threshold_high) == (-3.0, 3.0)  # the paper's 0.5 + noise 2.5
    assert c["parity"].value == pytest.approx(-1.0) and (c["parity"].threshold, c["parity"].threshold_high) == (-3.0, 3.0)
    assert c["collapse"].value == pytest.approx(97 - 10) and c["collapse"].threshold == 10.0  # diverged = chance
    assert c["lambda"].value == pytest.approx(0.01 / 0.16) and c["lambda"].comparison == "<"
    # The metric texts do not depend on the seed's numbers: claims.across_seeds groups by them.
    other = _claims(_replace(FIG2_LIKE, "bn", 128, 0.90))
    assert [x.metric for x in other.values()] == [x.metric for x in c.values()]


def _swap_bn_nf(rows):
    swap = {"bn": "nf", "nf": "bn"}
    return [(swap.get(s, s), lam, b, acc) for s, lam, b, acc in rows]


def test_negative_control_bn_and_nf_swapped_fail():
    c = _claims(_swap_bn_nf(FIG2_LIKE))  # "BN" now diverges at the largest batch, "NF" is flat
    for name in ("bn trained", "bn flat", "parity", "collapse"):
        assert c[name].outcome == "failed", name
    assert c["collapse"].value == pytest.approx(0.0 + 1.0)
    assert c["bn trained"].value == pytest.approx(10.0)  # chance


def test_negative_control_a_collapsed_bn_fails():
    collapsed = _replace(FIG2_LIKE, "bn", 512, 0.18)  # the old quick profile's BN at batch 1024
    c = _claims(collapsed)
    assert c["bn trained"].outcome == c["bn flat"].outcome == c["parity"].outcome == "failed"
    assert c["bn flat"].value == pytest.approx(18 - 98) and c["parity"].value == pytest.approx(96 - 18)
    # BN equally poor everywhere is flat, but not trained.
    everywhere = [(s, lam, b, 0.3 if s == "bn" else a) for s, lam, b, a in FIG2_LIKE]
    c = _claims(everywhere)
    assert c["bn flat"].outcome == "passed" and c["bn trained"].outcome == "failed"


def test_negative_control_parity_is_two_sided_and_holds_at_every_batch():
    below = _replace(FIG2_LIKE, "nf+agc", 128, 0.93, lam=0.16)  # best lambda at 128 now 0.04: 96.5 vs BN 97.5
    assert _claims(below)["parity"].outcome == "passed"
    below = _replace(below, "nf+agc", 128, 0.93, lam=0.04)  # best 95.0: 2.5 below BN, still within noise
    assert _claims(below)["parity"].value == pytest.approx(-2.5) and _claims(below)["parity"].passed
    below = _replace(below, "nf+agc", 128, 0.93, lam=0.01)  # 4.5 below at one batch: fails
    assert _claims(below)["parity"].value == pytest.approx(-4.5) and not _claims(below)["parity"].passed
    weak_bn = [(s, lam, b, a - 0.1 if s == "bn" else a) for s, lam, b, a in FIG2_LIKE]
    assert _claims(weak_bn)["parity"].value == pytest.approx(9.5) and not _claims(weak_bn)["parity"].passed


def test_negative_control_nf_that_does_not_collapse_fails():
    stable = _replace(FIG2_LIKE, "nf", 512, 0.95)
    assert _claims(stable)["collapse"].value == pytest.approx(2.0) and _claims(stable)["collapse"].outcome == "failed"
    # NF poor at every batch is no collapse at the largest either.
    poor = [(s, lam, b, 0.2 if s == "nf" else a) for s, lam, b, a in FIG2_LIKE]
    assert _claims(poor)["collapse"].outcome == "failed"


def test_negative_control_lambda_that_does_not_matter_is_not_evaluable():
    flat = [(s, lam, b, 0.96 + (lam or 0) / 100 if s == "nf+agc" else a) for s, lam, b, a in FIG2_LIKE]
    c = _claims(flat)  # every lambda within 0.15 points at every batch
    assert c["lambda"].outcome == "not evaluable" and not c["lambda"].passed
    assert "within the noise" in c["lambda"].note and "B=512: 0.2" in c["lambda"].note
    # Equal optima at both ends decide nothing either, whatever the tie rule would say.
    assert c["lambda"].value == pytest.approx(1.0)


def test_negative_control_larger_lambda_at_larger_batch_fails():
    opposite = [
        ("bn", None, 32, 0.98),
        ("bn", None, 512, 0.97),
        ("nf", None, 32, 0.97),
        ("nf", None, 512, None),
        ("nf+agc", 0.01, 32, 0.97),
        ("nf+agc", 0.16, 32, 0.90),
        ("nf+agc", 0.01, 512, 0.80),
        ("nf+agc", 0.16, 512, 0.96),
    ]
    c = _claims(opposite)
    assert c["lambda"].value == pytest.approx(16.0) and c["lambda"].outcome == "failed"
    # The same loosest good lambda at both ends (lambda matters at the largest batch) is no "smaller".
    same = _replace(_replace(opposite, "nf+agc", 32, 0.85, lam=0.01), "nf+agc", 32, 0.97, lam=0.16)
    assert _claims(same)["lambda"].value == pytest.approx(1.0) and _claims(same)["lambda"].outcome == "failed"


def test_claims_leave_out_what_the_run_lacks():
    module = agc
    no_bn = [r for r in FIG2_LIKE if r[0] != "bn"]
    assert [c.claim.split(" (")[0] for c in module.claims(_summary(no_bn))] == [
        "Without AGC the NF-ResNet collapses at the largest batch",
        "Larger batches need a smaller clipping threshold",
    ]
    assert len(module.claims(_summary([r for r in FIG2_LIKE if r[0] != "nf"]))) == 4
    assert module.claims(_summary([r for r in FIG2_LIKE if r[2] == 32])) == []


def test_plot_has_both_panels_bands_over_seeds_and_marks_divergence():
    tables = {"summary": pd.concat([_summary(PAPER_LIKE, seed)["summary"] for seed in (0, 1)], ignore_index=True)}
    fig = agc.plot(tables)
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
    from nfstudy_experiments import params_for

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
    with pytest.raises(ValueError, match="unknown fuse 'true': choose one of auto, on, off"):
        params_for("agc", "quick", fuse="true")
    runs = params_for("agc", "quick", series=["bn"], agc_lambdas=[]).runs()  # nothing clips: no thresholds needed
    assert [(s, b) for s, _, _, b in runs] == [("bn", 32), ("bn", 128), ("bn", 512)]
    assert all(math.isnan(lam) for _, _, lam, _ in runs)


@pytest.mark.slow
def test_papermill_run_writes_the_contract_files_and_resumes(results_root, config_dir):
    args = [
        "run",
        "agc",
        "--profile",
        "quick",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--param",
        "depth=8",
        "--param",
        "epochs=1",
        "--param",
        "batch_sizes=64,512",
        "--param",
        "agc_lambdas=0.01,0.16",
        "--param",
        "warmup_epochs=0",
    ]
    assert main(args) == 0
    base = config_dir(args)  # a configuration of its own: results/agc/quick+depth=8+...-<hash>/
    folder = base / "seed=0"
    assert {p.name for p in folder.iterdir()} == {
        "agc.ipynb",
        "run.json",
        "history.csv",
        "summary.csv",
        "claims.csv",
        "agc.png",
        "checkpoints",
    }
    assert len(list((folder / "checkpoints").iterdir())) == 8
    assert (folder / "checkpoints" / "nf+agc_batch512_lambda0.16").is_dir()
    meta = json.loads((folder / "run.json").read_text())
    assert meta["status"] == "completed" and meta["params"]["batch_sizes"] == [64, 512]
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == 8 and summary.columns[0] == "seed"
    claims = pd.read_csv(folder / "claims.csv")
    assert len(claims) == 5  # BN trained, BN flat, parity, NF collapse, smaller lambda
    # claims.csv is what the figure module computes from the saved tables.
    recomputed = agc.claims({"summary": summary, "history": pd.read_csv(folder / "history.csv")})
    np.testing.assert_allclose(claims["value"], [c.value for c in recomputed])
    assert (base / "agc.png").stat().st_size > 10_000 and (base / "claims.csv").is_file()
    before = {p.name: p.read_bytes() for p in folder.glob("*.csv")}
    assert main(args) == 0  # every run is in its checkpoint: the same tables
    assert {p.name: p.read_bytes() for p in folder.glob("*.csv")} == before
