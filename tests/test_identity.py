"""A run's identity is its configuration; a folder's name is checked against its run.json.

The default configuration (a profile's own parameters) keeps ``results/<figure>/<profile>/``;
any other lands in ``<profile>+<what differs>-<hash>/`` (nfstudy/identity.py). Loaders,
``aggregate`` and the report read one configuration at a time and refuse, never count, a
folder whose figure, profile, configuration or seed disagree with its run.json. Tiny fig7
runs through the Run API (as its notebook does); the kernels are in the tests marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from nfstudy import identity, runs
from nfstudy.claims import claims_table
from nfstudy.cli import main
from nfstudy.params import resolve, to_dict
from nfstudy.report import aggregate, build_report
from nfstudy.train.checkpoint import PERFORMANCE_FIELDS
from nfstudy_experiments import FIGURES, execution_only, fig2, fig7, load, params_for

ROOT = Path(__file__).resolve().parent.parent
GALLERY = ROOT / "results"
TINY7 = {"size": 40, "samples": 2}  # fig7 at a tiny size: not the quick profile's own (300, 10)


def fig7_run(root, seed=0, **overrides) -> Path:
    """One seed of fig7 through the Run API, its folder chosen from its parameters, as the
    notebook run by hand does (results_dir None); returns the completed run's folder."""
    params = params_for("fig7", "quick", **overrides)
    with runs.Run.start("fig7", "quick", seed, to_dict(params), device="cpu", root=root) as run:
        tables = run.save_tables(fig7.run(params, seed=seed, device="cpu"))
        run.save_claims(claims_table("fig7", fig7.claims(tables)))
    return run.dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- what a configuration is


def test_execution_only_parameters_are_declared_once_and_keep_the_folder():
    """fuse, torch_compile, checkpoint_every and chunk_size say how a run executes: changing
    one keeps the profile's folder; changing any other parameter of any figure does not."""
    assert execution_only() == ("fuse", "torch_compile", "checkpoint_every", "chunk_size")
    fields = {f: [x.name for x in dataclasses.fields(load(f).Params)] for f in FIGURES}
    for name in execution_only():  # no stale name
        assert any(name in names for names in fields.values()), f"{name} is a parameter of no figure"
    # The training engine leaves the same two out of its checkpoint fingerprint (torch_compile is its `compile`).
    assert {"checkpoint_every", "compile"} <= set(PERFORMANCE_FIELDS)
    for figure in FIGURES:
        for profile, base in load(figure).PROFILES.items():
            own = to_dict(base)
            assert identity.configuration(figure, profile, own).name == profile
            for name in fields[figure]:
                changed = identity.configuration(figure, profile, {**own, name: "something else"})
                if name in execution_only():
                    assert changed.default and changed.name == profile, (figure, name)
                else:
                    assert re.fullmatch(rf"{profile}\+{name}=something_else-[0-9a-f]{{6}}", changed.name), (figure, name, changed.name)


def test_the_same_configuration_gets_the_same_name_on_every_machine():
    # Pinned: the canonical JSON and its hash are the names of folders on every machine; a
    # change to either renames them all, and must be deliberate.
    assert identity.configuration_for("fig2", "quick", {"layer": 44}).name == "quick+layer=44-1911ee"
    fashion = identity.configuration_for("fig2", "paper", {"dataset": "fashion", "depth": 56, "layer": 20})
    assert fashion.name == "paper+dataset=fashion+depth=56+layer=20-50cc70"
    assert fashion.hash == identity.digest(fashion.params) and len(fashion.hash) == 64
    # One value, however it was written: a tuple or a list, 1 or 1.0, in any order.
    a = identity.configuration_for("fig2", "quick", {"layer": 44, "series": ["bn", "none"]})
    b = identity.configuration_for("fig2", "quick", {"series": ("bn", "none"), "layer": 44.0})
    c = identity.configuration("fig2", "quick", {**to_dict(fig2.PROFILES["quick"]), "series": ("bn", "none"), "layer": 44})
    assert a.name == b.name == c.name and a.hash == b.hash == c.hash
    own = to_dict(fig2.PROFILES["quick"])
    assert identity.configuration("fig2", "quick", {**own, "nf_skip_gain_init": 1}).default  # 1 and 1.0: one value
    # As `run` resolves the parameters (every check of Params) and as `aggregate` names them (coerced only).
    for figure, overrides in [
        ("fig2", {"layer": 44, "depth": 56}),
        ("fig5", {"layers": [6, 18], "networks": 2.0}),
        ("fig7", {"size": 40, "factors": (1, 2)}),
        ("agc", {"batch_sizes": [64, 512], "fuse": "off"}),
    ]:
        resolved = identity.configuration(figure, "quick", resolve(load(figure).PROFILES, "quick", overrides))
        named = identity.configuration_for(figure, "quick", overrides)
        assert (resolved.name, resolved.hash) == (named.name, named.hash), figure


def test_a_variants_name_says_what_differs_is_shell_safe_and_short():
    own = identity.configuration_for("fig2", "paper", {"dataset": "imagefolder:/data/My Images (2024)/", "layer": 44})
    assert own.name.startswith("paper+dataset=My_Images__2024_+layer=44-")  # the folder's base name only
    assert shlex.quote(own.name) == own.name and "/" not in own.name and ":" not in own.name
    assert own.describe() == "dataset=My_Images__2024_ (paper: cifar10), layer=44 (paper: 55)"
    # Two image folders of one base name: one readable part, two configurations.
    one = identity.configuration_for("fig2", "paper", {"dataset": "imagefolder:/a/imgs"})
    two = identity.configuration_for("fig2", "paper", {"dataset": "imagefolder:/b/imgs"})
    assert one.name != two.name and one.name.rsplit("-", 1)[0] == two.name.rsplit("-", 1)[0] == "paper+dataset=imgs"
    # Many differences: those that fit, then how many more; a long value cut.
    many = identity.configuration_for(
        "fig1", "quick", {"depth": 8, "epochs": 3, "batch_size": 32, "series": "bn@0.1,none@1e-4,bn@0.003,none+agc@0.1", "agc_lambda": 0.02}
    )
    assert re.fullmatch(r"quick\+depth=8\+epochs=3\+batch_size=32\+series=bn@0.1,none@1e-4,bn@0\.\.\.\+1_more-[0-9a-f]{6}", many.name)
    assert len(many.name) <= len("quick+") + identity.READABLE_CHARS + len("+9_more-") + identity.HASH_CHARS
    assert shlex.quote(many.name) == many.name
    from nfstudy.data import IMAGE_FOLDER

    assert identity.IMAGE_FOLDER == IMAGE_FOLDER  # identity.py stays light: it spells the prefix itself


@pytest.mark.parametrize("figure", FIGURES)
def test_every_committed_seed_is_its_profiles_own_configuration(figure):
    """The committed gallery gets its identity from the parameters its run.json recorded:
    each seed of results/<figure>/quick/ is the quick profile's own configuration under
    today's Params, and no seed is refused (a warning would be an error here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folders = runs.seed_dirs(figure, "quick", GALLERY)
    assert [f.name for f in folders] == [f"seed={s}" for s in range(5)]
    for folder in folders:
        meta = runs.read_run(folder)
        assert identity.configuration(figure, "quick", meta["params"]).default, folder
    assert runs.configurations(figure, root=GALLERY) == ["quick"]


def test_a_parameter_recorded_before_it_existed_takes_its_declared_default(monkeypatch):
    own = to_dict(fig2.PROFILES["quick"])
    older = {k: v for k, v in own.items() if k != "model"}  # a run.json written before fig2 had `model`
    assert identity.configuration("fig2", "quick", older).default
    # Negative control: had the quick profile set the newer parameter to other than its
    # declared default, a run that never had it did not run with the profile's value.
    monkeypatch.setitem(fig2.PROFILES, "quick", dataclasses.replace(fig2.PROFILES["quick"], augment=False))
    before_augment = {k: v for k, v in own.items() if k != "augment"}
    found = identity.configuration("fig2", "quick", before_augment)
    assert not found.default and found.describe() == "augment=true (quick: false)"
    # A recorded parameter that Params no longer has is a difference.
    gone = identity.configuration("fig2", "paper", {**to_dict(fig2.PROFILES["paper"]), "width": 2})
    assert gone.name.startswith("paper+width=2-") and gone.describe() == "width=2 (paper: no such parameter)"


# --------------------------------------------------------------------------- where runs go, what loaders read


def test_a_run_with_other_values_lands_in_its_own_folder_and_records_its_configuration(tmp_path):
    default = fig7_run(tmp_path, 0)
    before = snapshot(default)
    variant = fig7_run(tmp_path, 0, **TINY7)  # seed 0 again, other values: the notebook run by hand
    name = identity.configuration_for("fig7", "quick", TINY7).name
    assert default == tmp_path / "fig7" / "quick" / "seed=0" and snapshot(default) == before
    assert variant == tmp_path / "fig7" / name / "seed=0" and re.fullmatch(r"quick\+size=40\+samples=2-[0-9a-f]{6}", name)
    meta = runs.read_run(variant)
    assert meta["params"]["size"] == 40 and meta["config"]["name"] == name and meta["config"]["default"] is False
    assert meta["config"]["differs"] == {"size": {"value": 40, "profile": 300}, "samples": {"value": 2, "profile": 10}}
    assert meta["config"]["hash"] == identity.configuration_for("fig7", "quick", TINY7).hash
    own = identity.configuration_for("fig7", "quick")
    assert runs.read_run(default)["config"] == {"name": "quick", "default": True, "hash": own.hash, "differs": {}, "execution_only": []}
    assert fig7_run(tmp_path, 0, **TINY7) == variant  # the same values: the same folder again
    # A run given a folder of the layout that is not its configuration's stops before anything is written.
    with pytest.raises(ValueError, match=rf"these parameters are configuration {re.escape(name)} .*give .*{re.escape(name)}/seed=1"):
        runs.Run.start(
            "fig7", "quick", 1, to_dict(params_for("fig7", "quick", **TINY7)), root=tmp_path, folder=default.parent / "seed=1.attempt"
        )
    assert not (default.parent / "seed=1.attempt").exists()


def test_a_seeds_own_figure_states_what_differs_from_its_profile(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {}
    for name, overrides in (("default", {}), ("variant", TINY7)):
        with runs.Run.start("fig7", "quick", 0, to_dict(params_for("fig7", "quick", **overrides)), root=tmp_path) as run:
            fig = plt.figure()
            fig.suptitle("Fig. 7")
            run.save_figure(fig)
            run.save_figure(fig)  # saved twice: stated once
            plt.close(fig)
            titles[name] = fig.get_suptitle()
        assert (run.dir / "fig7.png").is_file()
    variant = identity.configuration_for("fig7", "quick", TINY7)
    assert titles["default"] == "Fig. 7"  # the profile's own: its title as it always was
    assert titles["variant"] == f"Fig. 7\nconfiguration {variant.name}: size=40 (quick: 300), samples=2 (quick: 10)"


def test_load_table_and_aggregate_read_one_configuration_default_unless_asked(tmp_path, monkeypatch):
    for seed in (0, 1):
        fig7_run(tmp_path, seed)
    variant = fig7_run(tmp_path, 0, **TINY7).parent
    assert runs.configurations("fig7", root=tmp_path) == ["quick", variant.name]
    assert runs.configurations("fig7", "paper", root=tmp_path) == []
    default = runs.load_table("fig7", "singular_value_summary", "quick", tmp_path)
    assert sorted(default["seed"].unique()) == [0, 1] and (default["size"] == 300).all()
    by_name = runs.load_table("fig7", "singular_value_summary", root=tmp_path, config=variant.name)  # the profile from the name
    by_dict = runs.load_table("fig7", "singular_value_summary", "quick", tmp_path, config=TINY7)
    pd.testing.assert_frame_equal(by_name, by_dict)
    assert by_name["seed"].unique().tolist() == [0] and (by_name["size"] == 40).all()
    assert set(runs.load_tables("fig7", "quick", tmp_path, config=TINY7)) == {"singular_values", "singular_value_summary"}
    with pytest.raises(FileNotFoundError, match=rf"configurations present: quick, {re.escape(variant.name)}"):
        runs.load_table("fig7", "claims", "quick", tmp_path, config={"size": 50})
    with pytest.raises(ValueError, match="unknown parameter sise for Params: valid parameters are size"):
        runs.load_table("fig7", "claims", "quick", tmp_path, config={"sise": 50})
    with pytest.raises(ValueError, match=r"is one of the quick profile, not paper: give profile='quick'"):
        runs.load_table("fig7", "claims", "paper", tmp_path, config=variant.name)
    # aggregate: each configuration into its own folder, never mixed; the variant's figure says what differs.
    titles = []
    save = runs.atomic_save_figure
    monkeypatch.setattr(runs, "atomic_save_figure", lambda fig, path, **kw: (titles.append(fig.get_suptitle()), save(fig, path, **kw))[1])
    image, claims = aggregate("fig7", "quick", tmp_path)
    assert image == tmp_path / "fig7" / "quick" / "fig7.png" and (claims["n_seeds"] == 2).all()
    assert "configuration" not in titles[-1]  # the profile's own: its title as it always was
    image, claims = aggregate("fig7", "quick", tmp_path, config=TINY7)
    assert image == variant / "fig7.png" and (claims["n_seeds"] == 1).all()
    assert titles[-1].endswith(f"\nconfiguration {variant.name}: size=40 (quick: 300), samples=2 (quick: 10)")
    assert pd.read_csv(tmp_path / "fig7" / "quick" / "claims.csv")["n_seeds"].eq(2).all()  # untouched by the variant's
    # The report: each configuration its own row and section, saying what differs.
    page = build_report(tmp_path).read_text()
    assert "| fig7 | quick | 2 |" in re.sub(r"\[fig7\]\([^)]*\)", "fig7", page)
    assert f"| fig7 | {variant.name} | 1 |" in re.sub(r"\[fig7\]\([^)]*\)", "fig7", page)
    assert f"### fig7 — `quick` profile, configuration `{variant.name}`" in page
    assert "Not the profile's own parameters: size=40 (quick: 300), samples=2 (quick: 10)." in page
    assert f"- **configuration** `{variant.name}`: size=40 (quick: 300), samples=2 (quick: 10)" in page
    assert f"![fig7 ({variant.name})](fig7/{variant.name}/fig7.png)" in page


def test_the_cli_aggregates_the_configuration_named_by_the_runs_options(tmp_path, capsys):
    fig7_run(tmp_path, 0)
    variant = fig7_run(tmp_path, 3, **TINY7).parent
    args = ["aggregate", "fig7", "--profile", "quick", "--results", str(tmp_path)]
    assert main([*args, "-p", "size", "40", "--param", "samples=2"]) == 0
    assert pd.read_csv(variant / "claims.csv")["n_seeds"].eq(1).all() and not (tmp_path / "fig7" / "quick" / "claims.csv").exists()
    err = capsys.readouterr().err
    assert (
        f"fig7 ({variant.name}): {variant / 'fig7.png'}" in err
        and "other configurations, each aggregated apart (--config NAME): quick" in err
    )
    assert main(["aggregate", "fig7", "--config", variant.name, "--results", str(tmp_path)]) == 0  # --profile from the name
    assert main([*args, "--dataset", "synthetic"]) == 0  # fig7 takes no data: the profile's own
    assert (tmp_path / "fig7" / "quick" / "claims.csv").is_file()
    assert main([*args, "--config", variant.name, "-p", "size", "40"]) == 2
    assert "give --config NAME or the configuration's parameters" in capsys.readouterr().err
    assert main(["claims", "fig7", "--config", variant.name, "--results", str(tmp_path)]) == 0  # re-derived in the variant only


def test_the_makefiles_figure_target_aggregates_the_configuration_it_ran():
    out = subprocess.run(
        ["make", "-n", "fig2", "PROFILE=quick", "SEEDS=0 1", "DATASET=synthetic", "PARAMS=-p layer 44"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    runs_ = [line for line in out if " -m nfstudy run fig2 " in line]
    (aggregate_line,) = [line for line in out if " -m nfstudy aggregate fig2 " in line]
    assert len(runs_) == 2 and all("--dataset synthetic" in line and line.endswith("-p layer 44") for line in runs_)
    assert aggregate_line.endswith("aggregate fig2 --profile quick --dataset synthetic -p layer 44")


# --------------------------------------------------------------------------- contents over names


def test_a_folder_whose_name_disagrees_with_its_run_json_is_refused_not_counted(tmp_path):
    quick = tmp_path / "fig7" / "quick"
    for seed in (0, 1):
        fig7_run(tmp_path, seed)
    variant = fig7_run(tmp_path, 5, **TINY7)
    copies = {
        "seed=0.bak": quick / "seed=0.bak",
        "seed=0 (copy)": quick / "seed=0 (copy)",
        "seed=abc": quick / "seed=abc",
        "seed=2": quick / "seed=2",  # seed 0's run under another seed: a duplicate seed
    }
    for folder in copies.values():
        shutil.copytree(quick / "seed=0", folder)
    shutil.copytree(quick / "seed=1", tmp_path / "fig7" / "paper" / "seed=1")  # a quick run filed as a paper result
    shutil.copytree(variant, quick / "seed=5")  # another configuration's run in the profile's own folder
    shutil.copytree(quick / "seed=1", tmp_path / "fig2" / "quick" / "seed=1")  # a fig7 run under fig2
    reasons = {
        "seed=0.bak": rf"named 'seed=0.bak' but holds seed 0's run: a duplicate of {re.escape(str(quick))}/seed=0, never counted; delete",
        "seed=0 (copy)": r"named 'seed=0 \(copy\)' but holds seed 0's run: a duplicate of .*seed=0, never counted",
        "seed=abc": r"named 'seed=abc' but holds seed 0's run: a duplicate",
        "seed=2": r"named 'seed=2' but holds seed 0's run: a duplicate of .*quick/seed=0, never counted",
        "seed=5": rf"configuration {re.escape(variant.parent.name)} \(size=40 \(quick: 300\), samples=2 \(quick: 10\)\), not quick: "
        rf"a duplicate of {re.escape(str(variant))}",
    }
    with pytest.warns(UserWarning) as caught:
        table = runs.load_table("fig7", "claims", "quick", tmp_path)
    warned = [str(w.message) for w in caught]
    assert sorted(table["seed"].unique()) == [0, 1]  # none of the copies counted
    for name, why in reasons.items():
        assert any(re.search(rf"skipping .*quick/{re.escape(name)}: it (is|holds) .*{why}", w) for w in warned), (name, warned)
    with pytest.warns(UserWarning, match=r"paper/seed=1: it holds a quick run, filed under paper: a duplicate of .*quick/seed=1"):
        with pytest.raises(FileNotFoundError, match=r"no completed runs of fig7 \(paper\)"):
            runs.load_table("fig7", "claims", "paper", tmp_path)
    with pytest.warns(UserWarning, match=r"fig2/quick/seed=1: it holds a run of fig7, not of fig2: a duplicate of .*fig7/quick/seed=1"):
        assert runs.seed_dirs("fig2", "quick", tmp_path) == []
    # Moved rather than copied: the fix names where it belongs.
    shutil.rmtree(variant)
    with pytest.warns(UserWarning) as caught:
        runs.seed_dirs("fig7", "quick", tmp_path)
    moved = rf"quick/seed=5: .*not quick; not counted: move it to {re.escape(str(variant))}$"
    assert any(re.search(moved, str(w.message)) for w in caught), [str(w.message) for w in caught]
    # aggregate and the report count two seeds, and list every refused folder with its reason.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, claims = aggregate("fig7", "quick", tmp_path)
        page = build_report(tmp_path).read_text()
    assert (claims["n_seeds"] == 2).all()
    assert "**seeds** 0, 1;" in page and "| fig7 | quick | 2 |" in re.sub(r"\[fig7\]\([^)]*\)", "fig7", page)
    skipped = page.split("## Skipped runs", 1)[1]
    for name in [*copies, "seed=5"]:
        assert f"`fig7/quick/{name}`: it " in skipped, name
    assert "`fig7/paper/seed=1`: it holds a quick run, filed under paper" in skipped
    assert "`fig2/quick/seed=1`: it holds a run of fig7, not of fig2" in skipped


def test_a_run_json_with_an_impossible_seed_is_refused(tmp_path):
    done = fig7_run(tmp_path, 0)
    for seed in (-1, 1.5, "3", True):
        odd = done.with_name(f"seed={seed}")
        shutil.copytree(done, odd)
        meta = json.loads((odd / "run.json").read_text())
        (odd / "run.json").write_text(json.dumps({**meta, "seed": seed}))
        with pytest.warns(
            UserWarning, match=rf"seed={re.escape(str(seed))}: its run.json records seed {re.escape(repr(seed))}, not an integer >= 0"
        ):
            assert [f.name for f in runs.seed_dirs("fig7", "quick", tmp_path)] == ["seed=0"]
        shutil.rmtree(odd)


def test_a_clash_of_short_hashes_never_mixes_two_configurations(tmp_path, monkeypatch):
    """Two configurations whose readable parts coincide (a long value cut) and whose short
    hashes coincide (forced here: none at all) share a folder name; the whole hash in their
    parameters tells them apart, and the second is refused."""
    monkeypatch.setattr(identity, "HASH_CHARS", 0)
    a, b = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12), (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13)
    first, second = (identity.configuration_for("fig7", "quick", {"factors": f}) for f in (a, b))
    assert first.name == second.name and first.hash != second.hash
    for seed, factors in ((0, a), (1, b)):
        with runs.Run.start("fig7", "quick", seed, to_dict(params_for("fig7", "quick", factors=factors)), root=tmp_path) as run:
            run.save_table("t", pd.DataFrame({"x": [seed]}))
    with pytest.warns(UserWarning, match=r"seed=1: its parameters are not those of seed=0, although both .*short hashes coincide"):
        assert runs.load_table("fig7", "t", root=tmp_path, config=first.name)["seed"].tolist() == [0]


def test_the_rerun_hint_of_a_variant_gives_its_parameters(tmp_path):
    variant = fig7_run(tmp_path, 0, **TINY7)
    table = variant / "singular_value_summary.csv"
    table.write_text(table.read_text().replace("0.", "9.", 1))
    with pytest.raises(runs.CorruptResultError, match=r"python -m nfstudy run fig7 --profile quick --seed 0 -p size 40 -p samples 2\)"):
        runs.load_table("fig7", "singular_value_summary", "quick", tmp_path, config=TINY7)


# --------------------------------------------------------------------------- through the kernel


@pytest.mark.slow
def test_a_run_with_other_values_leaves_the_default_gallery_byte_for_byte(results_root, config_dir):
    """`make fig2 PROFILE=quick PARAMS="-p layer 44"` at a tiny depth beside the committed
    default seeds: they stay byte for byte, the default claims count only default runs, and
    the run lands (and is aggregated) in its own configuration's folder."""
    default = results_root / "fig2" / "quick"
    shutil.copytree(GALLERY / "fig2" / "quick", default)
    before = snapshot(default)
    argv = ["run", "fig2", "--profile", "quick", "--seed", "0", "--device", "cpu", "-p", "depth", "44", "-p", "layer", "44"]
    assert main(argv) == 0
    assert snapshot(default) == before  # seed 0's tables, the default claims.csv and figure untouched
    variant = config_dir(argv)
    assert variant.name == identity.configuration_for("fig2", "quick", {"depth": 44, "layer": 44}).name
    assert runs.read_run(variant / "seed=0")["params"]["depth"] == 44
    assert pd.read_csv(variant / "claims.csv")["n_seeds"].eq(1).all()  # aggregated apart
    assert main(["aggregate", "fig2", "--profile", "quick"]) == 0  # the default, aggregated again: only its five seeds
    claims = pd.read_csv(default / "claims.csv")
    assert claims["n_seeds"].eq(5).all()
    assert (default / "claims.csv").read_bytes() == before["claims.csv"]  # the same files, the same code, this machine


@pytest.mark.slow
def test_a_notebook_run_by_hand_with_other_values_lands_in_its_configuration(results_root):
    import papermill as pm

    out = results_root.parent / "fig7-by-hand.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "fig7.ipynb"),
        str(out),
        parameters={"seed": 4, "device": "cpu", **TINY7},  # results_dir None: the folder follows from the parameters
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
    )
    name = identity.configuration_for("fig7", "quick", TINY7).name
    meta = runs.read_run(results_root / "fig7" / name / "seed=4")
    assert meta["status"] == "completed" and meta["config"]["name"] == name
    assert not (results_root / "fig7" / "quick").exists()


@pytest.mark.slow
def test_the_cli_names_a_refused_folder_in_one_line(tmp_path):
    fig7_run(tmp_path, 0)
    shutil.copytree(tmp_path / "fig7" / "quick" / "seed=0", tmp_path / "fig7" / "quick" / "seed=0.bak")
    done = subprocess.run(
        [sys.executable, "-m", "nfstudy", "aggregate", "fig7", "--profile", "quick", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "seed=0.bak" in line]
    assert lines == [
        f"warning: skipping {tmp_path}/fig7/quick/seed=0.bak: it is named 'seed=0.bak' but holds seed 0's run: "
        f"a duplicate of {tmp_path}/fig7/quick/seed=0, never counted; delete it"
    ], done.stderr
    assert pd.read_csv(tmp_path / "fig7" / "quick" / "claims.csv")["n_seeds"].eq(1).all()
