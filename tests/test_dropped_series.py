"""A figure drops the series its ``model`` cannot build (``torchvision_resnet``: bn and none
only), says so in one stderr line and records each as a ``not evaluable`` claim; with no
series left it refuses, naming what it needs. So the README's ``-p model torchvision_resnet
-p depth 101`` runs on every figure that takes a model as written."""

from __future__ import annotations

import dataclasses
import math

import pytest

from nfstudy.claims import across_seeds, claims_table
from nfstudy.series import network_of, split_agc
from nfstudy_experiments import FIGURES, load, params_for

MODEL_FIGURES = [f for f in FIGURES if any(field.name == "model" for field in dataclasses.fields(load(f).Params))]
README_MODEL = {"model": "torchvision_resnet", "depth": 101}  # the README's words, "The paper's network"
# fig5's x-axis is the paper's ResNet-110 layers 6..102: a ResNet-101 has no layer 102, and the
# error says which layers to give instead (dropping the last layer would change what its claims measure).
NEEDS = {"fig5": {"layers": (6, 18, 30, 42, 54, 66, 78, 90)}}


def _norm(series: str) -> str:
    return split_agc(network_of(series))[0]


def test_every_figure_with_a_model_is_checked():
    assert MODEL_FIGURES == ["fig1", "fig2", "fig3", "fig5", "fig6"]


@pytest.mark.parametrize("profile", ["paper", "quick"])
@pytest.mark.parametrize("figure", MODEL_FIGURES)
def test_the_readme_model_resolves_and_drops_exactly_the_nf_series(figure, profile):
    from nfstudy_experiments._common import dropped_claims, dropped_series

    if figure in NEEDS:
        with pytest.raises(ValueError, match="-p layers 6,18,30,42,54,66,78,90 "):
            params_for(figure, profile, **README_MODEL)
    params = params_for(figure, profile, **README_MODEL, **NEEDS.get(figure, {}))
    dropped = dropped_series(params)
    assert dropped and set(dropped) == {s for s in params.series if _norm(s) not in ("bn", "none")}
    assert all(why == "model torchvision_resnet builds the norms bn, none only" for why in dropped.values())
    claims = dropped_claims(params)
    assert [c.outcome for c in claims] == ["not evaluable"] * len(dropped)
    assert all(c.kind == "extension" and "torchvision_resnet" in c.note for c in claims)
    # Negative control: the paper's network builds every series, nothing is dropped.
    plain = params_for(figure, profile)
    assert dropped_series(plain) == {} and dropped_claims(plain) == []


@pytest.mark.parametrize("figure", MODEL_FIGURES)
def test_with_no_series_left_the_error_names_the_norms_and_the_fix(figure):
    nf_only = {"fig1": {"series": ["nf@0.1", "nf+agc@0.1"]}, "fig3": {"series": ["nf"], "learning_rates": [0.1]}}
    with pytest.raises(ValueError, match=rf"builds the norms bn, none only: none of the series .* -p series .*list {figure}"):
        params_for(figure, "quick", **README_MODEL, **NEEDS.get(figure, {}), **nf_only.get(figure, {"series": ["nf"]}))


# Tiny runs on torchvision's ResNet-18 (the same model family as the README's ResNet-101).
TINY = {
    "fig1": dict(
        dataset="digits", image_size=8, epochs=1, extend_until_plateau=False, batch_size=256, series=("bn@0.1", "nf@0.1", "nf+agc@0.1")
    ),
    "fig2": dict(dataset="synthetic", layer=10, batch_size=8),
    "fig3": dict(dataset="synthetic", image_size=16, batch_size=8, n_step_sizes=3, batches=(0, 1)),
    "fig5": dict(dataset="synthetic", layers=(2, 10, 17), networks=1, batch_size=8),
    "fig6": dict(dataset="synthetic", networks=1, batch_size=8, epoch=False),
}


@pytest.mark.parametrize("figure", [pytest.param("fig1", marks=pytest.mark.slow), "fig2", "fig3", "fig5", "fig6"])
def test_a_figure_runs_the_series_its_model_builds_and_records_the_rest(figure, capsys):
    import matplotlib.pyplot as plt

    module = load(figure)
    params = params_for(figure, "quick", model="torchvision_resnet", depth=18, **TINY[figure])
    wanted = [s for s in params.series if _norm(s) in ("bn", "none")]
    dropped = [s for s in params.series if s not in wanted]
    assert wanted and dropped
    tables = {name: df.assign(seed=0) for name, df in module.run(params, seed=0, device="cpu").items()}
    lines = [line for line in capsys.readouterr().err.splitlines() if "dropped" in line]
    assert lines == [
        f"[nfstudy] {figure}: series {', '.join(dropped)} dropped: model torchvision_resnet builds the norms bn, none only; "
        "their claims are not evaluable"
    ]
    ran = {_norm(s) for df in tables.values() if "series" in df for s in df["series"]}
    assert ran == {_norm(s) for s in wanted}  # every buildable series ran, no other
    plt.close(module.plot(tables))  # the figure draws from what ran
    per_seed = claims_table(figure, module.claims(tables) + module.dropped_claims(params))
    recorded = per_seed[per_seed["claim"].str.contains(" was not run")]
    assert len(recorded) == len(dropped)
    assert (recorded["outcome"] == "not evaluable").all() and recorded["note"].str.contains("torchvision_resnet").all()
    over_seeds = across_seeds(per_seed.assign(seed=0)).set_index("claim").loc[recorded["claim"]]
    assert (over_seeds["outcome"] == "not evaluable").all() and (over_seeds["n_evaluable"] == 0).all()
    assert all(math.isnan(v) for v in over_seeds["value"])
