"""Figure 4 end to end: the experiment at a tiny size, the claims' arithmetic, the notebook."""

import json

import numpy as np
import pandas as pd
import pytest

from nfstudy.cli import main
from nfstudy_experiments import fig4

TINY = ["-p", "depth", "20", "-p", "layers", "[2, 10, 18]", "-p", "batch_size", "16", "-p", "n_fractions", "3"]


def test_experiment_tables_at_tiny_size():
    from nfstudy_experiments import fig4, params_for

    # ResNet-20: stem 1, stage 1 = layers 2..7 (16 channels), stage 2 = 8..13 (32), stage 3 = 14..19 (64)
    params = params_for("fig4", "quick", depth=20, layers=(2, 10, 18), batch_size=16, n_fractions=5, lr=0.05)
    tables = fig4.run(params, seed=0, device="cpu")
    # the columns and their order are the module's TABLES (the one owner of the schema)
    assert {n: list(t.columns) for n, t in tables.items()} == {n: list(fig4.TABLES[n]) for n in tables}
    moments, losses = tables["channel_moments"], tables["update_loss"]
    sizes = moments.groupby(["series", "layer"], sort=False)["channel"].nunique().to_dict()
    assert sizes == {(s, k): c for s in ("none", "nf") for k, c in ((2, 16), (10, 32), (18, 64))}
    assert len(moments) == 2 * 5 * (16 + 32 + 64)
    assert moments.groupby("layer")["layer_name"].first().to_dict() == {
        2: "layer1.0.branch.conv1",
        10: "layer2.1.branch.conv1",
        18: "layer3.2.branch.conv1",
    }
    assert (moments["variance"] >= 0).all() and np.isfinite(moments["mean"]).all()
    assert losses.groupby("series").size().to_dict() == {"none": 5, "nf": 5}
    np.testing.assert_allclose(losses["step_size"], losses["fraction"] * 0.05)
    assert (losses.loc[losses["fraction"] == 0, "relative_loss"] == 1.0).all()
    # a fixed lr: the protocol table says so, and no search ran
    protocol = tables["lr_protocol"]
    assert len(protocol) == 1 and protocol[["protocol", "outcome", "lr", "n_scan", "n_bisect"]].iloc[0].tolist() == [
        "fixed",
        "fixed",
        0.05,
        0,
        0,
    ]
    assert tables["lr_search"].empty
    # The activations move along the update: the no-BN network's deep layer changes the most.
    lv = fig4.layer_variance(moments.assign(seed=0))
    none = lv[lv["series"] == "none"].pivot_table(index="fraction", columns="layer", values="variance")
    growth = none.iloc[-1] / none.iloc[0]
    assert (growth != 1.0).all()


def test_the_protocol_takes_the_onset_of_divergence_at_tiny_size():
    """lr None: the update is the no-BN network's onset of divergence, bisected to the stated
    tolerance; NF takes the same lr; the tables record every lr tried."""
    from nfstudy_experiments import fig4, params_for

    params = params_for("fig4", "quick", depth=20, layers=(2, 10, 18), batch_size=16, n_fractions=3)
    assert params.lr is None and params.onset_series == "none"
    tables = fig4.run(params, seed=0, device="cpu")
    assert {n: list(t.columns) for n, t in tables.items()} == {n: list(fig4.TABLES[n]) for n in tables}
    (p,) = tables["lr_protocol"].to_dict("records")
    assert p["protocol"] == "onset" and p["series"] == "none" and p["outcome"] == "bracketed"
    # the property: the lr diverges, the one below does not, and they are within the tolerance
    assert p["relative_loss"] > p["threshold"] == 1e3 >= p["relative_loss_below"]
    assert 0 < np.log10(p["lr"] / p["lr_below"]) <= params.lr_tolerance_decades
    # the overshoot is fixed: measured 1.03 here; at the onset the relative loss grows ~5x per 0.1
    # decade of lr (the search's own rows), so a bracket of 0.005 decades leaves it within ~1.1x
    assert p["relative_loss"] / p["threshold"] < 2
    search = tables["lr_search"]
    assert len(search) == p["n_scan"] + p["n_bisect"] and search["step"].tolist() == list(range(len(search)))
    scan = search[search["phase"] == "scan"]
    np.testing.assert_allclose(np.diff(np.log10(scan["lr"])), 0.5)  # the scan's spacing
    assert not scan["diverged"].iloc[:-1].any() and scan["diverged"].iloc[-1]  # stopped at the first crossing
    assert p["n_bisect"] == np.ceil(np.log2(0.5 / 0.005))  # each bisection halves the bracket
    assert search.loc[search["diverged"], "lr"].min() == p["lr"]
    # every series takes that lr, and the drawn update is the searched one (same path, same machine)
    losses = tables["update_loss"]
    assert (losses["lr"] == p["lr"]).all() and (tables["channel_moments"]["lr"] == p["lr"]).all()
    full = losses[(losses["series"] == "none") & (losses["fraction"] == 1.0)]["relative_loss"].iloc[0]
    np.testing.assert_allclose(full, p["relative_loss"], rtol=1e-6)
    found = {c.claim.split(" (")[0][:40]: c for c in fig4.claims({k: v.assign(seed=0) for k, v in tables.items()})}
    assert [c.outcome for c in found.values()] == ["passed", "passed", "passed"], {k: c.value for k, c in found.items()}


def test_the_protocol_needs_its_network():
    from nfstudy_experiments import params_for

    with pytest.raises(ValueError, match=r"onset_series 'none' is not among the series \(nf\).*fix -p lr"):
        params_for("fig4", "quick", series=("nf",))
    assert params_for("fig4", "quick", series=("nf",), lr=1e-3).lr == 1e-3  # a fixed lr needs none
    with pytest.raises(ValueError, match=r"log10_lr_min \(1.0\) must be below log10_lr_max"):
        params_for("fig4", "quick", log10_lr_min=1.0)


def _tables(none_max: dict, relative_none, relative_nf=(1.0, 0.99), none_start: float | None = None, nf_max=None):
    """Two fractions (0, 1), layers 8, 44, 80, one channel each. ``none_max``: layer ->
    the no-BN variance after the update (before: ``none_start`` or layer 8's value)."""
    nf_max = nf_max or {8: 1.0, 44: 1.0, 80: 1.0}
    rows, losses = [], []
    for series, ends, relative in (("none", none_max, relative_none), ("nf", nf_max, relative_nf)):
        for layer, v1 in ends.items():
            v0 = ends[8] if none_start is None or layer == 8 else none_start
            for fraction, v in ((0.0, min(v0, v1)), (1.0, v1)):
                rows.append(
                    {
                        "seed": 0,
                        "series": series,
                        "lr": 1e-3,
                        "update": 0,
                        "layer": layer,
                        "layer_name": "x",
                        "fraction": fraction,
                        "channel": 0,
                        "mean": 0.0,
                        "variance": v,
                    }
                )
        for fraction, r in zip((0.0, 1.0), relative):
            losses.append(
                {
                    "seed": 0,
                    "series": series,
                    "lr": 1e-3,
                    "update": 0,
                    "fraction": fraction,
                    "step_size": 1e-3 * fraction,
                    "loss": 2 * r,
                    "relative_loss": r,
                    "diverged": r > 1e3,
                }
            )
    return {"channel_moments": pd.DataFrame(rows), "update_loss": pd.DataFrame(losses)}


PAPER_LIKE = {8: 0.8, 44: 3e6, 80: 2e16}  # docs/papers.md#bjorck-fig-4, within the factor-2 reading


def _claims(tables) -> dict:
    """The claims keyed by what they measure."""
    keys = {
        "Without BN this update diverges": "diverges",
        "During the diverging update the no-BN network's layer-8 ": "layer8",
        "During the diverging update the no-BN network's layer-44 ": "layer44",
        "During the diverging update the no-BN network's layer-80 ": "layer80",
        "The activations blow up with depth": "growth",
        "The blow-up happens during the update": "during",
        "(beyond the paper) The NF-ResNet": "nf",
    }
    found = {}
    for c in fig4.claims(tables):
        (key,) = [k for start, k in keys.items() if c.claim.startswith(start)]
        found[key] = c
    return found


def test_claims_pass_on_the_papers_magnitudes():
    found = _claims(_tables(PAPER_LIKE, (1.0, np.inf), none_start=10.0))
    assert set(found) == {"diverges", "layer8", "layer44", "layer80", "growth", "during", "nf"}
    assert {k: c.value for k, c in found.items()} == pytest.approx(
        {"diverges": np.inf, "layer8": 0.8, "layer44": 3e6, "layer80": 2e16, "growth": 2e16 / 0.8, "during": 2e15, "nf": 0.99}
    )
    assert all(c.passed for c in found.values()), {k: c.value for k, c in found.items() if not c.passed}
    assert found["nf"].kind == "extension" and {c.kind for k, c in found.items() if k != "nf"} == {"paper"}


def test_negative_control_overflow_and_far_magnitudes_fail_the_bands():
    # Overflow (inf) is not "~5e16"; neither is 1e26 (what lr 0.003 gives) nor 1e9.
    for deep in (np.inf, 1e26, 1e9):
        found = _claims(_tables({8: 0.8, 44: deep, 80: deep}, (1.0, np.inf)))
        for key in ("layer44", "layer80", "growth"):
            assert not found[key].passed, (deep, key, found[key].value)
    # A shallow layer that blew up too is not the paper's layer 8 (variances ~0..1).
    assert not _claims(_tables({8: 1e3, 44: 3e6, 80: 2e16}, (1.0, np.inf)))["layer8"].passed


def test_negative_control_no_bn_and_nf_swapped_fail():
    tables = _tables(PAPER_LIKE, (1.0, np.inf), none_start=10.0)
    swapped = {name: t.assign(series=t["series"].replace({"none": "nf", "nf": "none"})) for name, t in tables.items()}
    found = _claims(swapped)
    for key in ("diverges", "layer44", "layer80", "growth", "during", "nf"):
        assert not found[key].passed, (key, found[key].value)


def test_negative_control_a_calm_update_fails():
    # The variances at initialisation already grow with depth, but the update does not diverge:
    # "it diverges" fails, and there is no diverging update whose magnitudes could be judged.
    calm = _claims(_tables({8: 0.5, 44: 30.0, 80: 3e3}, (1.0, 0.9), relative_nf=(1.0, 1e5), none_start=3e3))
    assert calm["diverges"].outcome == "failed" and calm["nf"].outcome == "failed"
    for key in ("layer8", "layer44", "layer80", "growth", "during"):
        assert calm[key].outcome == "not evaluable" and "does not diverge" in calm[key].note, key


def test_negative_control_no_blow_up_during_a_diverging_update_fails():
    # The loss diverges and the magnitudes are the paper's, but layer 80 was as large before the update.
    found = _claims(_tables(PAPER_LIKE, (1.0, np.inf), none_start=2e16))
    assert found["during"].outcome == "failed" and found["during"].value == pytest.approx(1.0)
    assert all(found[k].passed for k in ("diverges", "layer8", "layer44", "layer80", "growth"))


def _protocol(outcome: str, lr: float = 1e-3) -> pd.DataFrame:
    """An lr_protocol table of one seed."""
    row = {"seed": 0, "protocol": "onset", "series": "none", "update": 0, "outcome": outcome, "lr": lr, "threshold": 1e3}
    return pd.DataFrame([{**row, "log10_lr_min": -5.5, "log10_lr_max": 0.5}])


def test_without_a_bracketed_onset_the_diverging_update_claims_are_not_evaluable():
    # The protocol found no onset: the network never diverged up to 10^0.5 (the figure then shows
    # the update at 10^0.5, which did not diverge) or diverged already at 10^-5.5 (the overshoot
    # is not the protocol's): the magnitudes cannot be judged; "it diverges" is judged as measured.
    never = {**_tables(PAPER_LIKE, (1.0, 50.0), none_start=10.0), "lr_protocol": _protocol("no divergence in range", 10**0.5)}
    found = _claims(never)
    assert found["diverges"].outcome == "failed" and found["diverges"].value == 50.0
    for key in ("layer8", "layer44", "layer80", "growth", "during"):
        assert found[key].outcome == "not evaluable" and "no divergence in range" in found[key].note, key
    at_once = {**_tables(PAPER_LIKE, (1.0, np.inf), none_start=10.0), "lr_protocol": _protocol("diverged at the smallest step", 10**-5.5)}
    found = _claims(at_once)
    assert found["diverges"].passed and found["nf"].passed
    assert {found[k].outcome for k in ("layer8", "layer44", "layer80", "growth", "during")} == {"not evaluable"}
    # a bracketed onset: judged as measured
    bracketed = {**_tables(PAPER_LIKE, (1.0, 1.1e3), none_start=10.0), "lr_protocol": _protocol("bracketed")}
    assert all(c.passed for c in _claims(bracketed).values())


def test_missing_tables_give_not_evaluable_never_an_error():
    tables = _tables(PAPER_LIKE, (1.0, np.inf), none_start=10.0)
    found = _claims({"update_loss": tables["update_loss"]})  # the moments not committed
    assert found["diverges"].passed and found["nf"].passed
    for key in ("layer8", "layer44", "layer80", "growth", "during"):
        assert found[key].outcome == "not evaluable" and "channel_moments" in found[key].note, key
    (placeholder,) = fig4.claims({})  # nothing measured: one claim standing for all, not evaluable
    assert placeholder.outcome == "not evaluable" and "update_loss" in placeholder.note
    # NF alone under the protocol took its own onset, not no BN's: "at the same lr" cannot be judged
    nf_only = {name: t[t["series"] == "nf"] for name, t in tables.items()}
    (nf,) = fig4.claims({**nf_only, "lr_protocol": _protocol("bracketed").assign(series="nf")})
    assert nf.outcome == "not evaluable" and "own onset" in nf.note
    (nf,) = fig4.claims(nf_only)  # a fixed lr (no protocol table): judged
    assert nf.passed


def test_bad_parameters_name_the_fix():
    from nfstudy_experiments import fig4, params_for

    with pytest.raises(ValueError, match=r"layer 80 does not exist in a ResNet-56: choose weight layers 1\.\.56 .*: 4, 22, 41\)"):
        params_for("fig4", "quick", depth=56)
    with pytest.raises(ValueError, match="n_fractions must be an int >= 2"):
        params_for("fig4", "quick", n_fractions=1)
    with pytest.raises(IndexError, match=r"update 40 is beyond the first epoch: digits has 23 mini-batches of 64"):
        fig4.run(params_for("fig4", "quick", depth=20, layers=(2, 10, 18), update=40), seed=0, device="cpu")


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file(results_root, config_dir):
    assert main(["run", "fig4", "--profile", "quick", "--seed", "0", "--device", "cpu", *TINY]) == 0
    folder = config_dir(["run", "fig4", "--profile", "quick", *TINY]) / "seed=0"
    names = {p.name for p in folder.iterdir()}
    tables = ("channel_moments", "update_loss", "lr_protocol", "lr_search")
    assert names == {"fig4.ipynb", "run.json", "claims.csv", "fig4.png", *(f"{name}.csv" for name in tables)}
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    tables = {name: pd.read_csv(folder / f"{name}.csv") for name in tables}
    assert len(tables["channel_moments"]) == 2 * 3 * (16 + 32 + 64)
    # the protocol read back from the files: the lr every series took, found by the search
    (protocol,) = tables["lr_protocol"].to_dict("records")
    assert protocol["outcome"] == "bracketed" and len(tables["lr_search"]) == protocol["n_scan"] + protocol["n_bisect"]
    assert (tables["update_loss"]["lr"] == protocol["lr"]).all()
    claims = pd.read_csv(folder / "claims.csv")
    np.testing.assert_allclose(claims["value"], [c.value for c in fig4.claims(tables)])
    assert (folder.parent / "fig4.png").stat().st_size > 10_000
