"""Signal propagation plots: the analytic NF variance, the measured statistics, the notebook."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nfstudy.cli import main
from nfstudy.models import cifar_resnet
from nfstudy_experiments import spp

# ResNet-32 (15 blocks): deep enough for the no-BN explosion the claims measure.
TINY = {"depth": 32, "batch_size": 32}


def test_expected_nf_variance_follows_the_recursion():
    from nfstudy_experiments.spp import expected_nf_variance

    a2 = 0.2**2
    stage = [1 + a2, 1 + 2 * a2, 1 + 3 * a2]
    assert expected_nf_variance(cifar_resnet(20, "nf", skip_gain_init=1.0)) == pytest.approx([1.0, *stage * 3])
    assert expected_nf_variance(cifar_resnet(20, "nf")) == pytest.approx([1.0] * 10)  # SkipInit: branches off
    with pytest.raises(TypeError, match="expected an NF-ResNet"):
        expected_nf_variance(cifar_resnet(20, "bn"))


@pytest.fixture(scope="module")
def tiny_table():
    from nfstudy_experiments import params_for, spp

    return spp.run(params_for("spp", "quick", **TINY), seed=0, device="cpu")["signal_propagation"].assign(seed=0)


def test_the_table_has_the_columns_of_TABLES(tiny_table):
    assert tiny_table.columns.tolist() == [*spp.TABLES["signal_propagation"], "seed"]


def _claims(table) -> dict[str, object]:
    """The claims keyed by the start of their text (stable under threshold edits)."""
    keys = {
        "NF-ResNets keep the average": "nf_analytic_var",
        "NF-ResNets (scaled WS) show no mean shift": "nf_no_shift",
        "NF-ResNets without scaled WS (He init) show": "no_ws_shift",
        "NF-ResNets without scaled WS: the residual": "no_ws_branch",
        "Unnormalised ReLU ResNets: the average": "none_explodes",
        "Unnormalised ReLU ResNets: the mean shift": "none_shift",
        "BN ResNets": "bn_linear",
    }
    found = {}
    for c in spp.claims({"signal_propagation": table}):
        (key,) = [k for start, k in keys.items() if c.claim.startswith(start)]
        found[key] = c
    return found


def _relabel(table, a: str, b: str):
    return table.assign(series=table["series"].replace({a: b, b: a}))


def test_nf_without_ws_is_the_nf_resnet_with_plain_he_initialised_convs():
    from nfstudy.models import RELU_GAMMA, ScaledReLU, ScaledStdConv2d

    torch.manual_seed(0)
    plain, ws = cifar_resnet(20, "nf_no_ws", "kaiming_fan_in"), cifar_resnet(20, "nf")
    assert [type(b) for _, b in plain.blocks()] == [type(b) for _, b in ws.blocks()]
    assert [b.beta for _, b in plain.blocks()] == [b.beta for _, b in ws.blocks()]  # same analytic design
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 + 2 and not any(isinstance(m, ScaledStdConv2d) for m in convs)  # + 2 transition shortcuts
    assert all(m.bias is not None for m in convs)
    assert {m.gamma for m in plain.modules() if isinstance(m, ScaledReLU)} == {1.0}  # the gain is the init's
    assert {m.gamma for m in ws.modules() if isinstance(m, ScaledReLU)} == {RELU_GAMMA}
    # He init: weight variance 2 / fan_in, and filters with a non-zero empirical mean (WS removes it).
    w = plain.layer(10).weight
    assert w.var().item() == pytest.approx(2 / w[0].numel(), rel=0.1)
    # (iid weights: the filter means spread as std / sqrt(fan_in); WS sets them to 0)
    assert (w.mean(dim=(1, 2, 3)).std() * w[0].numel() ** 0.5 / w.std()).item() == pytest.approx(1.0, rel=0.35)


def test_experiment_tables_and_claims_at_tiny_size(tiny_table):
    table = tiny_table.drop(columns="seed")
    assert table.columns.tolist() == ["series", "input", "block", "block_name", "stage", "statistic", "value"]
    assert set(table["series"]) == {"bn", "none", "nf", "nf_no_ws"}
    per = table.groupby(["series", "input", "statistic"]).size()
    assert (per.xs("avg_channel_var", level="statistic") == 16).all()  # stem + 15 blocks
    assert (per.xs("branch_avg_channel_var", level="statistic") == 15).all()  # no branch at the stem
    assert (per.xs("branch_avg_channel_sq_mean", level="statistic") == 15).all()
    assert set(table[table["statistic"] == "expected_var"]["series"]) == {"nf", "nf_no_ws"}
    stages = table.drop_duplicates("block").set_index("block")["stage"]
    assert stages.tolist() == [0, *[1] * 5, *[2] * 5, *[3] * 5]
    bn_branch = table[(table["series"] == "bn") & (table["statistic"] == "branch_avg_channel_var")]["value"]
    np.testing.assert_allclose(bn_branch, 1.0, atol=5e-3)  # BatchNorm's output, train mode
    # NF on unit-Gaussian input: the measured variance follows the analytic one.
    nf = table[(table["series"] == "nf") & (table["input"] == "gaussian")].pivot(index="block", columns="statistic", values="value")
    np.testing.assert_allclose(nf["avg_channel_var"], nf["expected_var"], rtol=0.35)
    claims = _claims(tiny_table)
    assert len(claims) == 7
    assert all(c.passed for c in claims.values()), [(c.claim, c.value) for c in claims.values()]
    # The control: the mean shift is an order of magnitude above the WS network's.
    assert claims["no_ws_shift"].value > 5 * claims["nf_no_shift"].value


def test_negative_control_ws_and_no_ws_swapped_fail_the_mean_shift_claims(tiny_table):
    claims = _claims(_relabel(tiny_table, "nf", "nf_no_ws"))
    for key in ("nf_no_shift", "no_ws_shift", "no_ws_branch"):
        assert not claims[key].passed, (key, claims[key].value)


def test_negative_control_bn_and_none_swapped_fail_their_claims(tiny_table):
    claims = _claims(_relabel(tiny_table, "bn", "none"))
    for key in ("none_explodes", "bn_linear"):
        assert not claims[key].passed, (key, claims[key].value)
    # Not "none_shift": our BN network is post-activation, relu(x + f(x)), so its block
    # outputs carry a ReLU mean shift too (squared mean ~ the variance); the constructed
    # tables below are that claim's negative control.


def _constructed(variance_per_block: float, sq_mean: float, branch_sq_mean: float, blocks: int = 9):
    """Every series with the same made-up statistics: variance x ``variance_per_block`` per
    block, a squared mean ``sq_mean`` x variance, branch variance 1."""
    rows = []
    for series in ("bn", "none", "nf", "nf_no_ws"):
        for block in range(blocks + 1):
            var = variance_per_block**block
            stats = {"avg_channel_var": var, "avg_channel_sq_mean": sq_mean * var, "expected_var": 1.0}
            if block:
                stats |= {"branch_avg_channel_var": 1.0, "branch_avg_channel_sq_mean": branch_sq_mean}
            rows += [
                {
                    "seed": 0,
                    "series": series,
                    "input": "gaussian",
                    "block": block,
                    "block_name": f"b{block}",
                    "stage": 1 + 3 * block // (blocks + 1),
                    "statistic": k,
                    "value": v,
                }
                for k, v in stats.items()
            ]
    return pd.DataFrame(rows)


def test_negative_control_constructed_tables():
    # Flat, centred signals everywhere: no explosion, no mean shift. The NF claims hold;
    # every claim about a mean shift or an explosion must fail.
    flat = _claims(_constructed(1.0, 0.0, 0.0))
    assert flat["nf_analytic_var"].passed and flat["nf_no_shift"].passed and flat["bn_linear"].passed
    for key in ("no_ws_shift", "no_ws_branch", "none_explodes", "none_shift"):
        assert not flat[key].passed, key
    # A variance doubling per block with a mean shift: the NF and BN claims must fail.
    exploding = _claims(_constructed(2.0, 1.0, 1.0))
    for key in ("nf_analytic_var", "nf_no_shift", "bn_linear"):
        assert not exploding[key].passed, key
    # Just below the thresholds does not pass, just above does.
    from nfstudy_experiments.spp import MEAN_SHIFT, NO_MEAN_SHIFT

    assert not _claims(_constructed(1.0, NO_MEAN_SHIFT * 1.01, 0.0))["nf_no_shift"].passed
    assert not _claims(_constructed(1.0, MEAN_SHIFT * 0.99, 0.0))["no_ws_shift"].passed
    assert _claims(_constructed(1.0, MEAN_SHIFT * 1.01, 0.0))["no_ws_shift"].passed


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file(results_root, config_dir):
    args = [x for k, v in TINY.items() for x in ("-p", k, str(v))]
    assert main(["run", "spp", "--profile", "quick", "--seed", "0", "--device", "cpu", *args]) == 0
    folder = config_dir(["run", "spp", "--profile", "quick", *args]) / "seed=0"
    assert {p.name for p in folder.iterdir()} == {"spp.ipynb", "run.json", "signal_propagation.csv", "claims.csv", "spp.png"}
    assert pd.read_csv(folder / "claims.csv")["passed"].all()
