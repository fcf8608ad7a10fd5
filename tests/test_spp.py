"""Signal propagation plots: the analytic NF variance, the measured statistics, the notebook."""

import numpy as np
import pandas as pd
import pytest

from nfstudy import figures
from nfstudy.cli import main
from nfstudy.models import cifar_resnet

# ResNet-32 (15 blocks): deep enough for the no-BN explosion the claims measure.
TINY = {"depth": 32, "batch_size": 32}


def test_expected_nf_variance_follows_the_recursion():
    from experiments.spp import expected_nf_variance

    a2 = 0.2**2
    stage = [1 + a2, 1 + 2 * a2, 1 + 3 * a2]
    assert expected_nf_variance(cifar_resnet(20, "nf", skip_gain_init=1.0)) == pytest.approx([1.0, *stage * 3])
    assert expected_nf_variance(cifar_resnet(20, "nf")) == pytest.approx([1.0] * 10)  # SkipInit: branches off
    with pytest.raises(TypeError, match="expected an NF-ResNet"):
        expected_nf_variance(cifar_resnet(20, "bn"))


def test_experiment_tables_and_claims_at_tiny_size():
    from experiments import params_for, spp

    table = spp.run(params_for("spp", "quick", **TINY), seed=0, device="cpu")["signal_propagation"]
    assert table.columns.tolist() == ["series", "input", "block", "block_name", "stage", "statistic", "value"]
    per = table.groupby(["series", "input", "statistic"]).size()
    assert (per.xs("avg_channel_var", level="statistic") == 16).all()  # stem + 15 blocks
    assert (per.xs("branch_avg_channel_var", level="statistic") == 15).all()  # no branch at the stem
    assert set(table[table["statistic"] == "expected_var"]["series"]) == {"nf"}
    stages = table.drop_duplicates("block").set_index("block")["stage"]
    assert stages.tolist() == [0, *[1] * 5, *[2] * 5, *[3] * 5]
    bn_branch = table[(table["series"] == "bn") & (table["statistic"] == "branch_avg_channel_var")]["value"]
    np.testing.assert_allclose(bn_branch, 1.0, atol=5e-3)  # BatchNorm's output, train mode
    # NF on unit-Gaussian input: the measured variance follows the analytic one.
    nf = table[(table["series"] == "nf") & (table["input"] == "gaussian")].pivot(index="block", columns="statistic", values="value")
    np.testing.assert_allclose(nf["avg_channel_var"], nf["expected_var"], rtol=0.35)
    claims = figures.load("spp").claims({"signal_propagation": table.assign(seed=0)})
    assert len(claims) == 5
    assert all(c.passed for c in claims), [(c.claim, c.value) for c in claims]


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file(results_root):
    args = [x for k, v in TINY.items() for x in ("-p", k, str(v))]
    assert main(["run", "spp", "--profile", "quick", "--seed", "0", "--device", "cpu", *args]) == 0
    folder = results_root / "spp" / "quick" / "seed=0"
    assert {p.name for p in folder.iterdir()} == {"spp.ipynb", "run.json", "signal_propagation.csv", "claims.csv", "spp.png"}
    assert pd.read_csv(folder / "claims.csv")["passed"].all()
