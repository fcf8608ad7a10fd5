"""``python -m nfstudy claims FIGURE``: every completed seed's claims re-derived from its
stored tables with the current claims code, recorded in run.json, then aggregated; the
tables untouched; a corrupt table refuses the command before anything is written."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from nfstudy import runs
from nfstudy.claims import claims_table
from nfstudy.cli import main
from nfstudy.params import to_dict
from nfstudy_experiments import fig2, params_for


@pytest.fixture(autouse=True)
def tiny_quick(monkeypatch):
    """fig2's quick profile made tiny for these tests, so that their runs are its own
    configuration (results/fig2/quick/): a run records the parameters it ran with."""
    monkeypatch.setitem(fig2.PROFILES, "quick", params_for("fig2", "quick", depth=20, layer=10, batch_size=16))


def _fig2_run(root, seed):
    params = fig2.PROFILES["quick"]
    run = runs.Run.start("fig2", "quick", seed, to_dict(params), dataset=params.dataset, device="cpu", root=root)
    tables = run.save_tables(fig2.run(params, seed=seed, device="cpu"))
    run.save_claims(claims_table("fig2", fig2.claims(tables)))
    run.finish()
    return run.dir


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def two_seeds(results_root):
    return [_fig2_run(results_root, seed) for seed in (0, 1)]


def test_unchanged_claims_code_changes_nothing(two_seeds, capsys):
    before = [_files(f) for f in two_seeds]
    assert main(["claims", "fig2", "--profile", "quick"]) == 0
    assert [_files(f) for f in two_seeds] == before  # the stored claims are what the code gives: nothing rewritten
    assert capsys.readouterr().err.count("claims unchanged") == 2


def test_a_changed_claims_function_rewrites_claims_and_records_it(two_seeds, results_root, monkeypatch, capsys):
    original = fig2.claims
    before = [_files(f) for f in two_seeds]

    def stricter(tables):  # the BN range claim with a band ten times narrower: it now fails
        found = original(tables)
        return [dataclasses.replace(found[0], threshold=found[0].threshold * 10, threshold_high=found[0].threshold * 10), *found[1:]]

    monkeypatch.setattr(fig2, "claims", stricter)
    assert main(["claims", "fig2", "--profile", "quick"]) == 0
    err = capsys.readouterr().err
    assert "1 claim(s) changed" in err
    for folder, old in zip(two_seeds, before):
        new = _files(folder)
        assert {k for k in new if new[k] != old[k]} == {"claims.csv", "run.json"}  # the tables untouched
        claims = pd.read_csv(folder / "claims.csv")
        assert claims.loc[0, "outcome"] == "failed" and claims.loc[0, "threshold"] == claims.loc[0, "threshold_high"]
        meta = json.loads(new["run.json"])
        assert meta["tables"]["claims.csv"]["sha256"] == runs._sha256(new["claims.csv"])
        note = meta["rederived"][-1]
        assert note["table"] == "claims.csv" and "commit" in note["git"] and note["at"]
        assert note["previous_sha256"] == runs._sha256(old["claims.csv"])
        runs.verify_tables(folder)  # the loaders accept the new claims
    summary = pd.read_csv(results_root / "fig2" / "quick" / "claims.csv")  # re-aggregated
    assert summary.loc[0, "outcome"] == "failed" and summary.loc[0, "n_passed"] == 0


def test_a_corrupt_table_refuses_before_any_seed_is_rewritten(two_seeds, monkeypatch, capsys):
    path = two_seeds[1] / "gradient_summary.csv"
    path.write_text(path.read_text().replace("bn,", "bm,", 1))  # edited after the run
    before = [_files(f) for f in two_seeds]
    monkeypatch.setattr(fig2, "claims", lambda tables: [])  # would empty every claims.csv
    assert main(["claims", "fig2", "--profile", "quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "seed=1/gradient_summary.csv does not match its run.json" in err
    assert [_files(f) for f in two_seeds] == before  # seed 0, checked first and fine, is not rewritten either
