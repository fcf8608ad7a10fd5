import json
import re
import shutil

import pytest

from nfstudy import runs
from nfstudy.claims import claims_table
from nfstudy.params import to_dict
from nfstudy.report import build_report
from nfstudy_experiments import FIGURES, fig2, load


@pytest.fixture(autouse=True)
def tiny_quick(monkeypatch):
    """fig2's quick profile made tiny for these tests, so that their runs are its own
    configuration (results/fig2/quick/): a run records the parameters it ran with."""
    from nfstudy_experiments import params_for

    monkeypatch.setitem(fig2.PROFILES, "quick", params_for("fig2", "quick", depth=44, layer=22, batch_size=16))


def _fig2_run(root, seed):
    params = fig2.PROFILES["quick"]
    run = runs.Run.start("fig2", "quick", seed, to_dict(params), dataset=params.dataset, device="cpu", root=root)
    tables = run.save_tables(fig2.run(params, seed=seed, device="cpu"))
    run.save_claims(claims_table("fig2", fig2.claims(tables)))
    run.finish()
    return run.dir


def test_empty_results_list_every_figure_as_not_yet_run(tmp_path):
    page = build_report(tmp_path / "results").read_text()
    assert "## Not yet run" in page
    for figure in FIGURES:
        assert f"`make {figure} PROFILE=quick`" in page
        # the title the report prints is the figure module's own (its one definition)
        assert f"- **{figure}** ({load(figure).TITLE}): " in page
    assert "claims passed" not in page


def test_report_from_copied_files_with_broken_runs_skipped(tmp_path):
    source = tmp_path / "elsewhere"
    for seed in (0, 1):
        _fig2_run(source, seed)
    copied = tmp_path / "results"
    shutil.copytree(source, copied)  # results brought from another machine
    # a run that failed, one without run.json, and one whose run.json is garbage
    failed = copied / "fig2" / "quick" / "seed=7"
    shutil.copytree(copied / "fig2" / "quick" / "seed=1", failed)
    meta = json.loads((failed / "run.json").read_text())
    (failed / "run.json").write_text(json.dumps({**meta, "seed": 7, "status": "failed", "error": "OOM"}))
    (copied / "fig2" / "quick" / "seed=8").mkdir()
    (copied / "fig2" / "quick" / "seed=9").mkdir()
    (copied / "fig2" / "quick" / "seed=9" / "run.json").write_text("{not json")
    with pytest.warns(UserWarning) as caught:
        page = build_report(copied).read_text()
    warned = " ".join(str(w.message) for w in caught)
    assert "seed=7" in warned and "seed=8" in warned and "seed=9" in warned
    assert "![fig2 (quick)](fig2/quick/fig2.png)" in page and (copied / "fig2" / "quick" / "fig2.png").stat().st_size > 10_000
    assert "| fig2 | quick | 2 |" in page.replace(
        "[fig2](#fig2-gradients-of-a-conv-kernel-at-initialisation-bjorck-et-al-2018-fig-2)", "fig2"
    )
    assert "2/2/2 |" in page  # claims over both completed seeds
    assert "`fig2/quick/seed=7`: status 'failed': OOM" in page
    assert "`fig2/quick/seed=8`: no readable run.json" in page
    assert "**seeds** 0, 1" in page and "digits" in page and "torch" in page
    claims = (copied / "fig2" / "quick" / "claims.csv").read_text()
    assert "n_seeds" in claims


def test_a_pipe_in_a_claim_or_metric_does_not_split_the_table_row():
    import pandas as pd

    from nfstudy.report import _claims_markdown

    claims = pd.DataFrame(
        [
            {
                "claim": "a | b",
                "kind": "paper",
                "metric": "|x - y|",
                "value": 1.0,
                "value_std": 0.5,
                "comparison": "<=",
                "threshold": 3.0,
                "threshold_high": float("nan"),
                "outcome": "passed",
                "passed": True,
                "note": "",
                "n_seeds": 2,
                "n_evaluable": 2,
                "n_passed": 2,
            }
        ]
    )
    row = _claims_markdown(claims)[4]
    unescaped = row.replace("\\|", "")
    assert unescaped.count("|") == 6, row  # the five cells' borders only
    assert "\\|x - y\\|" in row


def test_aggregate_over_a_seed_lacking_its_large_table_draws_what_it_can_and_names_it(tmp_path, monkeypatch, capsys):
    from nfstudy.report import aggregate

    monkeypatch.setattr(runs, "COMPRESS_ABOVE", 10_000)  # the gradient values are "large": stored as .csv.gz
    root = tmp_path / "results"
    folders = [_fig2_run(root, seed) for seed in (0, 1)]
    assert (folders[0] / "gradient_values.csv.gz").is_file()
    (folders[1] / "gradient_values.csv.gz").unlink()  # a gallery that kept only the small tables
    capsys.readouterr()
    image, claims = aggregate("fig2", "quick", root)
    err = capsys.readouterr().err
    assert "fig2 (quick): seed=1 lacks gradient_values" in err
    assert image.stat().st_size > 10_000 and (claims["n_seeds"] == 2).all()  # the claims: every seed's claims.csv
    (folders[0] / "gradient_values.csv.gz").unlink()  # no seed holds it: the figure says what it could not draw
    image, claims = aggregate("fig2", "quick", root)
    err = capsys.readouterr().err
    assert "seed=0 lacks gradient_values" in err and "not drawn: the histograms (needs the table gradient_values" in err
    assert image.is_file() and (claims["n_seeds"] == 2).all()


# The labels the page puts before a claim of kind extension or sanity.
LABEL = re.compile(r"\((?:beyond the papers?|sanity check, not counted)\)")


def _rendered_claims(claims) -> list[str]:
    from nfstudy.report import _claims_markdown

    return [row.split(" | ")[0] for row in _claims_markdown(claims)[4:]]  # each row's first cell


@pytest.mark.parametrize("figure", FIGURES)
def test_every_claim_of_the_gallery_has_its_kind_label_once(figure):
    """The extension claims of the figures say "(beyond the paper)" themselves; the page adds
    a label only where the claim has none, so no label repeats and every non-paper claim has one."""
    import pandas as pd

    claims = pd.read_csv(runs.project_root() / "results" / figure / "quick" / "claims.csv")
    for kind, cell in zip(claims["kind"], _rendered_claims(claims)):
        assert len(LABEL.findall(cell)) == (kind != "paper"), cell


def test_the_page_adds_a_missing_label_and_never_a_second():
    import math

    from nfstudy.claims import Claim, across_seeds

    found = [
        Claim("(beyond the paper) NF trains", "m", 1.0, ">=", 0.0, kind="extension"),
        Claim("(beyond the papers) AGC trains", "m", 1.0, ">=", 0.0, kind="extension"),
        Claim("NF + AGC trains", "m", 1.0, ">=", 0.0, kind="extension"),  # written without its label
        Claim("A theorem holds", "m", 1.0, ">=", 0.0, kind="sanity"),
        Claim("BN trains", "m", math.nan, ">=", 0.0, kind="paper", evaluable=False, note="not run"),
    ]
    cells = _rendered_claims(across_seeds(claims_table("figx", found)))
    assert cells == [
        "| (beyond the paper) NF trains<br><sub>m</sub>",
        "| (beyond the papers) AGC trains<br><sub>m</sub>",
        "| (beyond the paper) NF + AGC trains<br><sub>m</sub>",
        "| (sanity check, not counted) A theorem holds<br><sub>m</sub>",
        "| BN trains<br><sub>m</sub>",
    ]
