"""Figure 6: output-logit gradients, from the experiment to the notebook."""

import json

import numpy as np
import pandas as pd
import pytest

from nfstudy import figures
from nfstudy.cli import main
from nfstudy.probes import dominant_class

TINY = {"depth": 44, "networks": 2, "batch_size": 16, "epoch": False}


def test_experiment_tables_and_claims_at_tiny_size():
    from experiments import fig6, params_for

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
    claims = figures.load("fig6").claims({k: v.assign(seed=0) for k, v in tables.items()})
    assert [c.passed for c in claims] == [True, True, True]  # no epoch claim without an epoch


def test_epoch_average_per_true_class_covers_the_epoch():
    from experiments import fig6, params_for

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
def test_papermill_run_writes_every_contract_file(results_root):
    args = [x for k, v in TINY.items() for x in ("-p", k, str(v))]
    assert main(["run", "fig6", "--profile", "quick", "--seed", "0", "--device", "cpu", *args]) == 0
    folder = results_root / "fig6" / "quick" / "seed=0"
    assert {p.name for p in folder.iterdir()} == {"fig6.ipynb", "run.json", "logit_gradients.csv", "dominant_class.csv", "claims.csv", "fig6.png"}
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    assert pd.read_csv(folder / "claims.csv")["passed"].all()
    assert (results_root / "fig6" / "quick" / "fig6.png").stat().st_size > 10_000
