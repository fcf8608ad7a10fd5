import json
import os

import pandas as pd
import pytest
import torch

from nfstudy import runs
from nfstudy.claims import COLUMNS, Claim, across_seeds, claims_table, near, score


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    path = tmp_path / "t.csv"
    runs.atomic_write_csv(pd.DataFrame({"a": [1, 2]}), path)
    assert pd.read_csv(path)["a"].tolist() == [1, 2]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # readable by others, like any result
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_a_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    runs.atomic_write_csv(pd.DataFrame({"a": [1]}), path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)  # dies after writing the temp file, before the rename
    with pytest.raises(KeyboardInterrupt):
        runs.atomic_write_csv(pd.DataFrame({"a": list(range(10_000))}), path)
    assert pd.read_csv(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_run_json_tracks_status(results_root):
    with runs.Run.start("figx", "quick", 3, {"depth": 20}, dataset="digits", device="cpu") as run:
        meta = json.loads((run.dir / "run.json").read_text())
        assert meta["status"] == "running" and meta["finished"] is None
        written = run.save_tables({"t": pd.DataFrame({"x": [1.5]})})
    assert run.dir == results_root / "figx" / "quick" / "seed=3"
    assert written["t"].columns.tolist() == ["seed", "x"]
    meta = runs.read_run(run.dir)
    assert meta["status"] == "completed" and meta["duration_s"] >= 0
    assert meta["params"] == {"depth": 20} and meta["dataset"] == "digits" and meta["device"].startswith("cpu")
    assert meta["versions"]["torch"] and "commit" in meta["git"]
    assert meta["torch_threads"] == torch.get_num_threads()


@pytest.mark.parametrize("error, status", [(KeyboardInterrupt, "interrupted"), (ValueError, "failed")])
def test_interrupted_or_failed_runs_say_so_and_are_skipped(results_root, error, status):
    with runs.Run.start("figx", "quick", 0) as good:
        good.save_table("t", pd.DataFrame({"x": [1]}))
    with pytest.raises(error):
        with runs.Run.start("figx", "quick", 1) as bad:
            bad.save_table("t", pd.DataFrame({"x": [2]}))
            raise error("boom")
    assert runs.read_run(bad.dir)["status"] == status
    with pytest.warns(UserWarning, match=f"seed=1.*{status}"):
        table = runs.load_table("figx", "t", "quick")
    assert table["x"].tolist() == [1]


def test_a_resumed_run_keeps_its_earlier_attempts_and_a_new_one_after_completion_does_not(results_root):
    with pytest.raises(KeyboardInterrupt):
        with runs.Run.start("figx", "quick", 0):
            raise KeyboardInterrupt
    first = runs.read_run(results_root / "figx" / "quick" / "seed=0.attempt")  # never swapped in
    assert not (results_root / "figx" / "quick" / "seed=0").exists()
    with runs.Run.start("figx", "quick", 0) as again:
        pass
    meta = runs.read_run(again.dir)
    assert meta["status"] == "completed"
    assert [a["status"] for a in meta["earlier_attempts"]] == ["interrupted"]
    assert meta["earlier_attempts"][0]["duration_s"] == first["duration_s"]
    with runs.Run.start("figx", "quick", 0) as third:  # after a completed run: a new run, no history
        pass
    assert "earlier_attempts" not in runs.read_run(third.dir)


def test_load_table_concatenates_seeds_in_order(results_root):
    for seed in (10, 2, 1):
        with runs.Run.start("figx", "quick", seed) as run:
            run.save_table("t", pd.DataFrame({"x": [seed, seed]}))
    df = runs.load_table("figx", "t", "quick")
    assert df["seed"].tolist() == [1, 1, 2, 2, 10, 10]
    assert runs.load_table("figx", "t", "quick", seeds=[2])["x"].tolist() == [2, 2]
    assert set(runs.load_tables("figx", "quick")) == {"t"}
    with pytest.raises(FileNotFoundError, match="tables of this run: t"):
        runs.load_table("figx", "nope", "quick")
    with pytest.raises(FileNotFoundError, match="make figy PROFILE=quick"):
        runs.load_table("figy", "t", "quick")


def test_claims_table_and_across_seeds():
    one = claims_table("f", [Claim("big", "ratio", 12.0, ">=", 10.0), Claim("small", "x", float("nan"), "<", 1.0)])
    assert one.columns.tolist() == COLUMNS
    assert one["passed"].tolist() == [True, False]  # NaN never passes
    assert one["outcome"].tolist() == ["passed", "failed"]
    two = claims_table("f", [Claim("big", "ratio", 8.0, ">=", 10.0), Claim("small", "x", 0.5, "<", 1.0)])
    summary = across_seeds(pd.concat([one.assign(seed=0), two.assign(seed=1)]))
    big = summary.set_index("claim").loc["big"]
    assert big["value"] == 10.0 and big["n_seeds"] == 2 and big["n_passed"] == 1 and not big["passed"]
    assert big["outcome"] == "failed"  # 1 of 2 < 80%
    with pytest.raises(ValueError, match="comparison"):
        Claim("c", "m", 1.0, "=>", 0.0)


def test_a_band_is_two_sided_and_near_builds_it():
    inside, low, high = (Claim("ratio ~100", "r", v, **near(100, 10)) for v in (100.0, 9.0, 1e10))
    assert inside.passed and not low.passed and not high.passed
    assert (inside.threshold, inside.threshold_high) == (10.0, 1000.0)
    with pytest.raises(ValueError, match="threshold <= threshold_high"):
        Claim("c", "m", 1.0, "between", 2.0, 1.0)


def test_not_evaluable_counts_neither_way_and_needs_a_reason():
    with pytest.raises(ValueError, match="say why"):
        Claim("c", "m", 1.0, ">", 0.0, evaluable=False)
    undecided = Claim("c", "m", 1.0, ">", 0.0, evaluable=False, note="runs had not converged")
    assert undecided.outcome == "not evaluable" and not undecided.passed
    rows = [
        claims_table("f", [Claim("c", "m", v, ">", 0.0, evaluable=e, note="" if e else "why")]).assign(seed=s)
        for s, (v, e) in enumerate([(1.0, True), (1.0, True), (1.0, True), (1.0, True), (-1.0, True)])
    ]
    four_of_five = across_seeds(pd.concat(rows)).iloc[0]
    assert four_of_five["outcome"] == "passed" and four_of_five["n_passed"] == 4  # the 80% rule
    rows[3] = claims_table("f", [Claim("c", "m", -1.0, ">", 0.0)]).assign(seed=3)
    assert across_seeds(pd.concat(rows)).iloc[0]["outcome"] == "failed"  # 3 of 5
    mostly_undecided = [
        claims_table("f", [Claim("c", "m", 1.0, ">", 0.0, evaluable=s == 0, note="" if s == 0 else "why")]).assign(seed=s) for s in range(3)
    ]
    summary = across_seeds(pd.concat(mostly_undecided)).iloc[0]
    assert summary["outcome"] == "not evaluable" and summary["note"] == "why"


def test_sanity_checks_and_undecided_claims_do_not_count_toward_the_score():
    table = claims_table(
        "f",
        [
            Claim("a", "m", 1.0, ">", 0.0),
            Claim("b", "m", -1.0, ">", 0.0),
            Claim("theorem", "m", 1.0, ">", 0.0, kind="sanity"),
            Claim("undecided", "m", 1.0, ">", 0.0, evaluable=False, note="why"),
            Claim("nf", "m", 1.0, ">", 0.0, kind="extension"),
        ],
    )
    assert score(table) == (1, 2) and score(table, "extension") == (1, 1)


def test_claims_written_before_kinds_and_outcomes_are_read_as_paper_claims():
    old = pd.DataFrame([{"figure": "f", "claim": "c", "metric": "m", "value": 1.0, "comparison": ">", "threshold": 0.0, "passed": True}])
    summary = across_seeds(old.assign(seed=0)).iloc[0]
    assert (summary["kind"], summary["outcome"], summary["n_evaluable"]) == ("paper", "passed", 1)


def test_a_large_table_is_stored_gzipped_deterministically_and_read_back_by_every_loader(results_root, monkeypatch):
    import gzip

    monkeypatch.setattr(runs, "COMPRESS_ABOVE", 200)  # bytes of CSV: "large" for this test
    big = pd.DataFrame({"x": [i / 7 for i in range(100)]})
    with runs.Run.start("figx", "quick", 0) as run:
        run.save_tables({"big": big, "small": pd.DataFrame({"y": [1]})})
    folder = run.dir
    assert sorted(p.name for p in folder.glob("*.csv*")) == ["big.csv.gz", "small.csv"]
    data = (folder / "big.csv.gz").read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # no time stamp in the gzip header: the same table gives the same bytes
    assert runs.encode_table(pd.read_csv(folder / "big.csv.gz")) == (".csv.gz", data)
    meta = runs.read_run(folder)
    assert meta["tables"]["big.csv.gz"] == {"rows": 100, "sha256": runs._sha256(data)}  # of the file as stored
    assert "big.csv" not in meta["tables"]
    pd.testing.assert_frame_equal(pd.read_csv(folder / "big.csv.gz"), big.assign(seed=0)[["seed", "x"]])  # what a user does
    pd.testing.assert_frame_equal(runs.load_table("figx", "big", "quick"), pd.read_csv(folder / "big.csv.gz"))
    assert set(runs.load_tables("figx", "quick")) == {"big", "small"}
    assert runs.read_tables(folder)["big"]["x"].tolist() == big["x"].tolist()
    # A truncated gzip is refused, named, like a truncated CSV.
    (folder / "big.csv.gz").write_bytes(data[:-20])
    with pytest.raises(
        runs.CorruptResultError, match=r"big\.csv\.gz does not match its run\.json \(100 rows recorded, not readable as gzip"
    ):
        runs.load_table("figx", "big", "quick")
    (folder / "big.csv.gz").write_bytes(gzip.compress(b"seed,x\n0,1\n", mtime=0))
    with pytest.raises(runs.CorruptResultError, match=r"100 rows recorded, 1 found"):
        runs.verify_tables(folder)


def test_a_table_saved_again_in_its_other_form_replaces_the_first(results_root, monkeypatch):
    monkeypatch.setattr(runs, "COMPRESS_ABOVE", 200)
    with runs.Run.start("figx", "quick", 0) as run:
        run.save_table("t", pd.DataFrame({"x": range(100)}))
        run.save_table("t", pd.DataFrame({"x": [1]}))  # now small: plain CSV
    assert [p.name for p in run.dir.glob("t.*")] == ["t.csv"]
    assert [n for n in runs.read_run(run.dir)["tables"] if n.startswith("t.")] == ["t.csv"]


def test_a_seed_lacking_a_table_is_named_and_can_be_skipped(results_root):
    for seed in (0, 1):
        with runs.Run.start("figx", "quick", seed) as run:
            run.save_tables({"t": pd.DataFrame({"x": [seed]}), "u": pd.DataFrame({"y": [seed]})})
    lacking = results_root / "figx" / "quick" / "seed=1"
    (lacking / "t.csv").unlink()  # a copy without its large table
    with pytest.raises(FileNotFoundError, match=r"seed=1/t\.csv does not exist; tables of this run: u; its run wrote it \(t\.csv\)"):
        runs.load_table("figx", "t", "quick")
    assert runs.load_table("figx", "t", "quick", missing="skip")["seed"].tolist() == [0]
    assert runs.missing_tables(runs.seed_dirs("figx", "quick")) == {lacking: ["t"]}
    assert {k: v["seed"].tolist() for k, v in runs.load_tables("figx", "quick", missing="skip").items()} == {"t": [0], "u": [0, 1]}
    (results_root / "figx" / "quick" / "seed=0" / "t.csv").unlink()
    assert set(runs.load_tables("figx", "quick", missing="skip")) == {"u"}
    with pytest.raises(FileNotFoundError, match="no completed run of figx \\(quick\\) holds the table 't'"):
        runs.load_table("figx", "t", "quick", missing="skip")
