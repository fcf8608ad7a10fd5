"""Figure 2 end to end: the experiment, the notebook through papermill, the CLI."""

import json

import pandas as pd
import pytest

from nfstudy.cli import main
from nfstudy_experiments import fig2

# Small but deep enough for the claim (21 residual blocks): layer 22 is the middle of a ResNet-44.
TINY = ["-p", "depth", "44", "-p", "layer", "22", "-p", "batch_size", "32"]


def test_experiment_tables_and_claims_at_tiny_size():
    from nfstudy_experiments import fig2, params_for

    params = params_for("fig2", "quick", depth=44, layer=10, batch_size=32)
    tables = fig2.run(params, seed=0, device="cpu")
    # the columns and their order are the module's TABLES (the one owner of the schema)
    assert {n: list(t.columns) for n, t in tables.items()} == {n: list(fig2.TABLES[n]) for n in tables}
    values, summary = tables["gradient_values"], tables["gradient_summary"]
    assert summary["series"].tolist() == ["bn", "none", "nf"]
    # ResNet-44: stem = 1, stage 1 = layers 2..15 (7 blocks), so layer 10 is block 4, conv 1
    assert (summary["layer_name"] == "layer1.4.branch.conv1").all()
    assert values.groupby("series").size().tolist() == [16 * 16 * 9] * 3  # a 16 -> 16 3x3 kernel
    # The summary is a direct computation on the values.
    for series, v in values.groupby("series"):
        s = summary.set_index("series").loc[series]
        assert s["std"] == pytest.approx(v["value"].std(ddof=0), rel=1e-9)
        assert s["max_abs"] == pytest.approx(v["value"].abs().max(), rel=1e-6)
    claims = fig2.claims({k: df.assign(seed=0) for k, df in tables.items()})
    # The claims read the summary (their outcomes depend on the init: see the constructed
    # tables below for outcomes).
    s = summary.set_index("series")
    assert [c.kind for c in claims] == ["paper", "paper", "paper", "paper", "extension"]
    assert [c.value for c in claims] == pytest.approx(
        [
            s.loc["bn", "max_abs"],
            s.loc["none", "max_abs"],
            s.loc["none", "max_abs"] / s.loc["bn", "max_abs"],
            s.loc["none", "kurtosis"] - s.loc["bn", "kurtosis"],
            s.loc["nf", "max_abs"],
        ]
    )
    again = fig2.run(params, seed=0, device="cpu")
    pd.testing.assert_frame_equal(again["gradient_values"], values)
    other = fig2.run(params, seed=1, device="cpu")
    assert not other["gradient_values"]["value"].equals(values["value"])


def _summary(**series) -> dict[str, pd.DataFrame]:
    """A constructed gradient_summary: series=(max |g|, excess kurtosis)."""
    rows = [{"seed": 0, "series": k, "layer": 55, "max_abs": m, "std": m / 5, "kurtosis": kurt} for k, (m, kurt) in series.items()]
    return {"gradient_summary": pd.DataFrame(rows)}


PAPER_LIKE = {"bn": (0.04, 0.5), "none": (4.0, 10.0), "nf": (0.01, 0.5)}


def _outcomes(tables):
    return [c.outcome for c in fig2.claims(tables)]


def test_claims_pass_on_the_papers_magnitudes():
    assert _outcomes(_summary(**PAPER_LIKE)) == ["passed"] * 5


def test_negative_control_bn_and_no_bn_swapped_fails_every_paper_claim():
    swapped = _summary(bn=PAPER_LIKE["none"], none=PAPER_LIKE["bn"], nf=PAPER_LIKE["none"])
    # BN range, no-BN range, ratio (0.01), heavier tails (-9.5), NF not blowing up (4 > 0.4)
    assert _outcomes(swapped) == ["failed"] * 5


def test_negative_control_a_ratio_of_1e9_is_not_100():
    exploded = _summary(bn=(0.02, 0.5), none=(3e8, 10.0), nf=(0.001, 0.5))
    assert _outcomes(exploded) == ["passed", "failed", "failed", "passed", "passed"]
    # ... nor is a ratio of 2 (too small), and tails heavier by less than the margin fail
    mild = _summary(bn=(0.04, 0.5), none=(0.08, 2.0))
    assert _outcomes(mild) == ["passed", "failed", "failed", "failed"]


def test_histograms_are_per_seed_fractions_on_a_common_scale():
    import numpy as np

    from nfstudy_experiments.fig2 import _fractions, _on_a_common_scale

    rng = np.random.default_rng(0)
    shape = rng.standard_t(3, size=4000)
    # three seeds with the same shape at scales 1e2, 1e6, 1e8 (as no BN's seeds differ)
    v = pd.DataFrame({"seed": np.repeat([0, 1, 2], 4000), "value": np.concatenate([shape * 1e2, shape[::-1] * 1e6, shape * 1e8])})
    scaled = _on_a_common_scale(v)
    assert scaled.groupby("seed")["value"].std(ddof=0).to_numpy() == pytest.approx([1e6 * shape.std()] * 3)  # the median seed's
    edges = np.linspace(-scaled["value"].abs().max(), scaled["value"].abs().max(), 51)
    fractions = _fractions(scaled, edges)
    assert fractions.sum(1) == pytest.approx([1.0] * 3)  # each seed a fraction of its own values
    assert np.abs(fractions - fractions[0]).max() < 1e-12  # one shape, one histogram
    # unscaled, two of the three seeds would be a spike in the central bin
    raw = _fractions(v, np.linspace(-1e8 * np.abs(shape).max(), 1e8 * np.abs(shape).max(), 52))  # 51 bins, one central
    assert raw[1].max() > 0.99 and raw[0].max() > 0.99
    # a seed with no spread (NF with zero skip gain) is left as it is
    flat = pd.DataFrame({"seed": [0, 0, 1, 1], "value": [0.0, 0.0, -1.0, 1.0]})
    assert _on_a_common_scale(flat)["value"].tolist() == [0.0, 0.0, -1.0, 1.0]


def test_bad_parameters_name_the_fix():
    from nfstudy_experiments import params_for

    with pytest.raises(ValueError, match="layer must be a weight layer 1..20"):
        params_for("fig2", "quick", depth=20, layer=55)
    with pytest.raises(ValueError, match="unknown series 'batchnorm'"):
        params_for("fig2", "quick", series=["bn", "batchnorm"])
    with pytest.raises(ValueError, match="unknown dataset 'mnist': choose one of cifar10, digits, synthetic"):
        params_for("fig2", "quick", dataset="mnist")
    with pytest.raises(ValueError, match="unknown profile 'fast': choose one of paper, quick"):
        params_for("fig2", "fast")


@pytest.mark.slow
def test_papermill_run_writes_every_contract_file_and_is_reproducible(results_root, config_dir):
    assert main(["run", "fig2", "--profile", "quick", "--seeds", "0", "1", "--device", "cpu", *TINY]) == 0
    base = config_dir(["run", "fig2", "--profile", "quick", *TINY])  # results/fig2/quick+depth=44+...-<hash>/
    for seed in (0, 1):
        folder = base / f"seed={seed}"
        names = {p.name for p in folder.iterdir()}
        # 27648 gradient values, > 1 MB of CSV: stored gzipped (nfstudy.runs.COMPRESS_ABOVE)
        assert names == {"fig2.ipynb", "run.json", "gradient_values.csv.gz", "gradient_summary.csv", "claims.csv", "fig2.png"}
        meta = json.loads((folder / "run.json").read_text())
        assert meta["status"] == "completed" and meta["seed"] == seed and meta["params"]["depth"] == 44
        claims = pd.read_csv(folder / "claims.csv")
        assert claims.columns.tolist()[:4] == ["seed", "figure", "claim", "kind"]
        assert len(claims) == 5 and claims["outcome"].isin(["passed", "failed"]).all()
        executed = json.loads((folder / "fig2.ipynb").read_text())
        images = [o for c in executed["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(images) == 1  # the figure, shown once
    summary = pd.read_csv(base / "claims.csv")
    assert (summary["n_seeds"] == 2).all() and len(summary) == 5
    assert (base / "fig2.png").stat().st_size > 10_000
    # The same seed again gives byte-identical tables.
    before = {p.name: p.read_bytes() for p in (base / "seed=0").glob("*.csv*")}  # the .csv.gz too: gzip without a time stamp
    assert main(["run", "fig2", "--profile", "quick", "--seed", "0", "--device", "cpu", "--no-aggregate", *TINY]) == 0
    after = {p.name: p.read_bytes() for p in (base / "seed=0").glob("*.csv*")}
    assert after == before


def test_missing_data_offline_is_one_line_before_the_seed_folder_is_touched(results_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NFSTUDY_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("NFSTUDY_OFFLINE", "1")
    code = main(["run", "fig2", "--profile", "quick", "--seed", "0", "--device", "cpu", "--dataset", "cifar10", *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 is not in") and "cifar-10-python.tar.gz" in err and len(err.splitlines()) == 1
    assert not results_root.exists()  # (a notebook that fails: tests/test_faults.py)


def test_cli_rejects_unknown_figure_and_parameter(results_root, capsys):
    assert main(["run", "fig99"]) == 2
    assert "unknown figure 'fig99': choose one of" in capsys.readouterr().err
    assert main(["run", "fig2", "--profile", "quick", "-p", "detph", "20"]) == 2
    assert "valid parameters are dataset, depth, layer" in capsys.readouterr().err
    assert main(["run", "fig2", "--profile", "quick", "-p", "depth", "deep"]) == 2
    assert "depth must be an int" in capsys.readouterr().err
    assert main(["run", "fig2", "--profile", "huge"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert not results_root.exists()  # nothing was started


def test_seeds_spread_over_gpus():
    from nfstudy.cli import _device_for

    assert [_device_for(s, "auto", "0,1,2") for s in (0, 1, 2, 3)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert _device_for(5, "cpu", None) == "cpu"
    with pytest.raises(ValueError, match="comma-separated"):
        _device_for(0, "auto", "gpu0")


@pytest.mark.slow
def test_template_runs_top_to_bottom_in_jupyter_without_papermill(tmp_path):
    """As a user opening notebooks/fig2.ipynb in Jupyter and running every cell: the
    notebook folder as working directory, no injected parameters, the defaults."""
    import os

    import nbclient
    import nbformat

    nb = nbformat.read("notebooks/fig2.ipynb", as_version=4)
    env_before = dict(os.environ)
    os.environ["NFSTUDY_RESULTS"] = str(tmp_path / "results")
    os.environ.pop("MPLBACKEND", None)
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    folder = tmp_path / "results" / "fig2" / "quick" / "seed=0"
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    assert len(pd.read_csv(folder / "claims.csv")) == 5


def test_weight_gradients_equal_autograd_and_leave_the_model_as_it_was():
    import torch
    import torch.nn.functional as F

    from nfstudy.models import cifar_resnet
    from nfstudy.probes import weight_gradients

    torch.manual_seed(0)
    model = cifar_resnet(20, "bn").eval()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    grads, loss = weight_gradients(model, x, y, [5, 20])
    assert not model.training and all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())
    model.train()
    reference = F.cross_entropy(model(x), y)
    reference.backward()
    assert loss == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(grads[5], model.layer(5).weight.grad) and torch.allclose(grads[20], model.fc.weight.grad)
