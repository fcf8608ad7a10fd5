"""Figure 6: output-logit gradients, from the experiment to the notebook."""

import json

import numpy as np
import pandas as pd
import pytest

from nfstudy.cli import main
from nfstudy.probes import dominant_class
from nfstudy_experiments import fig6

# He init (kaiming_fan_out) makes a ResNet-44 without BN explode as the paper's deeper network does
# under its own init: the mechanics below need the saturated no-BN network.
TINY = {"depth": 44, "networks": 2, "batch_size": 16, "epoch": False, "init": "kaiming_fan_out"}


def test_experiment_tables_and_claims_at_tiny_size():
    from nfstudy_experiments import fig6, params_for

    tables = fig6.run(params_for("fig6", "quick", **TINY), seed=0, device="cpu")
    assert set(tables) == {"logit_gradients", "dominant_class"}  # no epoch asked for
    grads, summary = tables["logit_gradients"], tables["dominant_class"]
    assert grads.columns.tolist() == ["series", "network", "image", "label", "class", "gradient"]
    assert len(grads) == 3 * 2 * 16 * 10
    for (series, network), g in grads.groupby(["series", "network"], sort=False):
        matrix = g.pivot(index="image", columns="class", values="gradient").to_numpy()
        labels = g.groupby("image")["label"].first().to_numpy()
        # softmax - onehot: rows sum to 0, the true class is the only negative entry
        np.testing.assert_allclose(matrix.sum(1), 0, atol=1e-5)
        true = matrix[np.arange(16), labels]
        assert (true <= 0).all() and (np.delete(matrix, labels + 10 * np.arange(16)) >= 0).all()
        # the summary is dominant_class of exactly these rows
        row = summary[(summary["series"] == series) & (summary["network"] == network)].iloc[0]
        d = dominant_class(matrix, labels)
        assert (row["dominant_class"], row["dominant_share"], row["n_images"]) == (d.cls, d.share, 16)
    none, bn = (summary[summary["series"] == s] for s in ("none", "bn"))
    assert (none["dominant_share"] == 1.0).all()  # saturated: one class for every image
    assert (none["logit_std"].to_numpy() > 30 * bn["logit_std"].to_numpy()).all()  # because the logits exploded
    claims = fig6.claims({k: v.assign(seed=0) for k, v in tables.items()})
    assert [c.kind for c in claims] == ["sanity", "paper", "paper", "extension"]  # no epoch claim without an epoch
    assert claims[0].value == pytest.approx(np.abs(grads["gradient"]).max() / 16)
    assert claims[1].value == 1.0 and claims[1].passed  # every no-BN network collapsed
    shares = summary.set_index("series")["dominant_share"]
    assert claims[2].value == pytest.approx((shares["bn"] >= 0.9).mean())


def test_the_epoch_runs_on_the_median_network():
    from nfstudy_experiments import fig6, params_for
    from nfstudy_experiments.fig6 import representative_network

    params = params_for("fig6", "quick", depth=8, networks=3, batch_size=32, series=("none", "bn"), epoch=True)
    tables = fig6.run(params, seed=0, device="cpu")
    # the columns and their order are the module's TABLES (the one owner of the schema)
    assert {n: list(t.columns) for n, t in tables.items()} == {n: list(fig6.TABLES[n]) for n in tables}
    assert set(tables) == set(fig6.TABLES)  # the epoch table too
    summary = tables["dominant_class"]
    epoch = summary[summary["scope"] == "epoch"].set_index("series")["network"]
    for series in ("none", "bn"):
        assert epoch[series] == representative_network(summary, series)[1]
        assert set(tables["logit_gradients_epoch"].query("series == @series")["network"]) == {epoch[series]}


def _tables(shares: dict[str, list[float]], batch_size: int = 128, epoch: dict[str, float] | None = None) -> dict[str, pd.DataFrame]:
    """Constructed fig6 tables: per series, one network per dominant share; each
    network's batch has gradients in [-1, 1] (one entry of -1: the scale is 1/B)."""
    summary = [
        {"seed": 0, "series": series, "network": n, "scope": "batch", "dominant_class": 3, "dominant_share": share, "n_images": batch_size}
        for series, values in shares.items()
        for n, share in enumerate(values)
    ]
    summary += [
        {"seed": 0, "series": series, "network": 0, "scope": "epoch", "dominant_class": 3, "dominant_share": share, "n_images": 299}
        for series, share in (epoch or {}).items()
    ]
    grads = pd.DataFrame(
        [
            {"seed": 0, "series": series, "network": n, "image": i, "label": 0, "class": c, "gradient": -1.0 if (i, c) == (0, 0) else 0.01}
            for series, values in shares.items()
            for n in range(len(values))
            for i in range(batch_size)
            for c in range(2)
        ]
    )
    return {"dominant_class": pd.DataFrame(summary), "logit_gradients": grads}


PAPER_LIKE = {"none": [1.0] * 10, "bn": [0.1, 0.2, 0.3, 0.05, 0.4, 0.2, 0.1, 0.3, 0.0, 0.5], "nf": [0.2] * 10}


def _outcomes(tables):
    return [c.outcome for c in fig6.claims(tables)]


def test_claims_pass_on_the_papers_picture():
    assert _outcomes(_tables(PAPER_LIKE, epoch={"none": 1.0})) == ["passed"] * 5


def test_negative_control_bn_and_no_bn_swapped_fails_every_paper_claim():
    swapped = _tables({"none": PAPER_LIKE["bn"], "bn": PAPER_LIKE["none"], "nf": PAPER_LIKE["none"]}, epoch={"none": 0.3})
    # the scale (a sanity check of the set-up) holds; no BN collapsed in 0 of 10, over the
    # epoch 0.3; BN collapsed in 10 of 10; NF too
    assert _outcomes(swapped) == ["passed", "failed", "failed", "failed", "failed"]


def test_negative_control_some_bn_networks_collapse_though_the_mean_share_is_low():
    # 3 of 10 BN networks predict one class for every image (as 7 of 30 did with kaiming
    # init at quick); their mean share (0.44) is below 0.9, which the old claim accepted
    bn = [1.0, 0.95, 0.92, 0.2, 0.1, 0.3, 0.2, 0.1, 0.2, 0.4]
    claims = fig6.claims(_tables({"none": [1.0] * 10, "bn": bn}))
    assert np.mean(bn) < 0.9 and claims[2].value == pytest.approx(0.3) and claims[2].outcome == "failed"
    # one no-BN network in ten may escape; two may not
    assert _outcomes(_tables({"none": [1.0] * 9 + [0.5]})) == ["passed", "passed"]
    assert _outcomes(_tables({"none": [1.0] * 8 + [0.5] * 2})) == ["passed", "failed"]


def test_negative_control_a_scale_off_the_papers_colour_bar():
    # per-image gradients (not divided by the batch) at batch 1, or a batch of 4096
    assert _outcomes(_tables({"none": [1.0]}, batch_size=1))[0] == "failed"
    assert _outcomes(_tables({"none": [1.0]}, batch_size=128))[0] == "passed"  # 1/128 = 0.0078, paper ~0.004


def test_representative_network_is_the_median_by_dominant_share():
    from nfstudy_experiments.fig6 import representative_network

    summary = _tables({"bn": [0.1, 1.0, 0.95, 0.2, 0.3]})["dominant_class"]
    assert representative_network(summary, "bn") == (0, 4)  # 0.1 0.2 [0.3] 0.95 1.0
    two_seeds = pd.concat([summary, summary.assign(seed=1, dominant_share=summary["dominant_share"] + 0.01)])
    assert representative_network(two_seeds, "bn") == (0, 4)  # 0.1 0.11 0.2 0.21 [0.3] 0.31 ... (the lower median of 10)
    with pytest.raises(ValueError, match="no one-batch rows of series 'nf'"):
        representative_network(summary, "nf")


def test_epoch_average_per_true_class_covers_the_epoch():
    from nfstudy_experiments import fig6, params_for

    params = params_for("fig6", "quick", depth=8, networks=1, batch_size=256, series=("none",), epoch=True)
    tables = fig6.run(params, seed=0, device="cpu")
    epoch = tables["logit_gradients_epoch"]
    per_label = epoch.drop_duplicates("label")["n_images"]
    assert per_label.sum() == 299  # every test image once (the quick profile's epoch_split), in batches of 256 and 43
    means = epoch.pivot(index="label", columns="class", values="gradient").to_numpy()
    np.testing.assert_allclose(means.sum(1), 0, atol=1e-6)  # means of rows that sum to 0
    assert (np.diag(means) < 0).all()
    scopes = tables["dominant_class"].set_index("scope")["n_images"]
    assert scopes["batch"] == 256 and scopes["epoch"] == per_label.sum()


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file(results_root, config_dir):
    args = [x for k, v in TINY.items() for x in ("-p", k, str(v))]
    assert main(["run", "fig6", "--profile", "quick", "--seed", "0", "--device", "cpu", *args]) == 0
    folder = config_dir(["run", "fig6", "--profile", "quick", *args]) / "seed=0"
    assert {p.name for p in folder.iterdir()} == {
        "fig6.ipynb",
        "run.json",
        "logit_gradients.csv",
        "dominant_class.csv",
        "claims.csv",
        "fig6.png",
    }
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    assert len(pd.read_csv(folder / "claims.csv")) == 4
    assert (folder.parent / "fig6.png").stat().st_size > 10_000


def test_the_headline_heatmap_shows_the_median_network_on_the_papers_scale():
    import matplotlib.pyplot as plt

    fig = fig6.plot(_tables({"bn": [0.1, 1.0, 0.95, 0.2, 0.3], "none": [1.0] * 5}))
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "image (sorted by label)\nseed 0, network 4" in labels  # BN: 0.1 0.2 [0.3] 0.95 1.0, not the collapsed network 1
    assert "image (sorted by label)\nseed 0, network 2" in labels  # no BN: all tied, the lower median
    image = next(ax for ax in fig.axes if ax.get_ylabel().endswith("network 4")).images[0]
    assert image.get_clim() == pytest.approx((-0.5 / 128, 0.5 / 128))  # +-0.0039: the paper's +-0.004 at batch 128
    assert np.nanmin(image.get_array()) == pytest.approx(-1 / 128)  # the gradient of the batch-mean loss
    plt.close(fig)
