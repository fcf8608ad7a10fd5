"""Pieces the figure modules share: the network of a
figure's parameters (``model``, ``depth``, ``init``: see :mod:`nfstudy.models.registry`)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import pandas as pd

from nfstudy.claims import Claim
from nfstudy.data import check_dataset, train_images
from nfstudy.models import DEFAULT_MODEL, INITS, NF_NORMS, NORMS, build_model, check_model
from nfstudy.params import check_choice, check_positive
from nfstudy.series import network_of, split_agc

# A figure's ``fuse`` parameter: train each group of runs of one network as one stacked
# network (nfstudy.train.train_fused) or one run at a time (nfstudy.train.train). "auto":
# fused on CUDA only; on a CPU fused training is no faster (benchmarks/README.md, fused section).

# Parameters that say HOW a run executes, not WHAT it measures: left out of a run's
# configuration (nfstudy.identity), so that changing one keeps the run's folder and seeds
# run with either are averaged together. Each changes speed only: fused or one network at a
# time (the same training, summed in another order), torch.compile, how often a checkpoint
# is written (nfstudy.train.checkpoint.PERFORMANCE_FIELDS leaves it and `compile` out of the
# checkpoint fingerprint too), how many step sizes or fractions one forward pass evaluates.
EXECUTION_ONLY = ("fuse", "torch_compile", "checkpoint_every", "chunk_size")


@dataclass(frozen=True)
class NetworkParams:
    """The parameters every network figure has, first in its ``Params``: the data set and the
    depth of its ResNet (:func:`make_resnet`). A figure's ``Params`` subclasses this and adds
    its own; a figure with another default redeclares the field, which keeps its place."""

    # the images: cifar10 (the papers') | fashion (Fashion-MNIST, padded to 32x32) | digits (bundled, 8x8) | synthetic |
    # imagefolder:PATH (your own: PATH/train/CLASS/*.png, PATH/test/CLASS/*.png)
    dataset: str = "cifar10"
    depth: int = 110  # ResNet depth, 6n+2 (the paper's ResNet-110)


def model_name(params) -> str:
    """The figure's ``model`` (``cifar_resnet`` for a figure without that parameter)."""
    return getattr(params, "model", DEFAULT_MODEL)


def make_resnet(params, norm: str, num_classes: int):
    """``build_model(params.model, params.depth, norm, params.init)``; an NF network gets
    the figure's ``nf_skip_gain_init`` where the figure has one (the model's default otherwise)."""
    gain = getattr(params, "nf_skip_gain_init", None)
    extra = {"skip_gain_init": gain} if norm in NF_NORMS and gain is not None else {}
    return build_model(model_name(params), params.depth, norm, params.init, num_classes=num_classes, **extra)


def series_norm(spec) -> str:
    """The network of a series entry: ``"none+agc@0.1"`` -> ``"none"``, ``"bn"`` -> ``"bn"``."""
    return split_agc(network_of(spec))[0]


def check_depth(depth) -> None:
    """A CIFAR ResNet's depth is 6n+2 (n >= 1 basic blocks per stage)."""
    check_positive("depth", depth, integer=True)
    if depth < 8 or (depth - 2) % 6:
        near = sorted({max(8, 6 * ((depth - 2) // 6) + 2), 6 * ((depth - 2) // 6 + 1) + 2} - {depth})
        raise ValueError(
            f"depth must be 6n+2 (a stem, 3 stages of n two-conv blocks, the classifier), got {depth}: "
            f"try {' or '.join(map(str, near))} (the paper's ResNets: 20, 32, 44, 56, 110)"
        )


def check_batch_fits(params) -> None:
    """Every batch size of ``params`` (``batch_size``, ``batch_sizes``) fits in the training
    images of its dataset (a mini-batch larger than the data set cannot be drawn); an image
    folder's are counted from its files, so a missing split or empty class fails here."""
    sizes = [getattr(params, "batch_size", None), *getattr(params, "batch_sizes", ())]
    available = train_images(params.dataset)
    for size in sizes:
        if isinstance(size, int) and size > available:
            raise ValueError(f"batch size {size} exceeds the {available} training images of {params.dataset}: use at most {available}")


def check_network_params(params, *, norm_series: bool = True) -> None:
    """The checks every figure's ``Params`` share, each error naming the valid choices:
    ``dataset`` (a name, or ``imagefolder:PATH`` with its folders there), ``init``, ``depth``
    (6n+2 for the CIFAR ResNet) and, where the figure has them, ``batch_size`` (at most the
    dataset's training images), ``networks`` and ``image_size`` (32 with CIFAR-10);
    ``series`` not empty and, with ``norm_series``, every entry a norm. A figure with a
    ``model`` parameter: the model must exist, have that ``depth`` and build the norm of at
    least one series; the series it cannot build (``torchvision_resnet``: bn and none only)
    are dropped when the figure runs (:func:`built_series`, :func:`dropped_claims`)."""
    check_dataset(params.dataset)
    check_choice("init", params.init, INITS)
    if model_name(params) == DEFAULT_MODEL:
        check_depth(params.depth)
    if hasattr(params, "model"):
        spec = check_model(params.model, params.depth)
        known = [s for s in params.series if series_norm(s) in NORMS]  # the figure names unknown ones
        if known and all(series_norm(s) not in spec.norms for s in known):
            figure = type(params).__module__.rpartition(".")[2]
            raise ValueError(
                f"model {params.model} builds the norms {', '.join(spec.norms)} only: none of the series "
                f"({', '.join(known)}) can be built with it. Give series of those norms with -p series "
                f"(`python -m nfstudy list {figure}` shows each profile's), or -p model {DEFAULT_MODEL} (every norm)"
            )
    for name in ("batch_size", "networks", "image_size"):
        if hasattr(params, name):
            check_positive(name, getattr(params, name), integer=True)
    if params.dataset == "cifar10" and getattr(params, "image_size", 32) != 32:
        raise ValueError(f"CIFAR-10 images are 32x32: image_size must be 32 with dataset cifar10, got {params.image_size}")
    if hasattr(params, "series") and not params.series:
        raise ValueError("series is empty: give at least one (`python -m nfstudy list` shows each profile's series)")
    check_batch_fits(params)
    if norm_series:
        for s in params.series:
            check_choice("series", s, NORMS)


def dropped_series(params) -> dict[str, str]:
    """The series of ``params`` its ``model`` cannot build, each with why (``torchvision_resnet``
    has no NF or WS network); empty for a figure without ``model`` or a model that builds them all."""
    if not hasattr(params, "model"):
        return {}
    norms = check_model(params.model, params.depth).norms
    why = f"model {params.model} builds the norms {', '.join(norms)} only"
    return {s: why for s in params.series if series_norm(s) not in norms}


def built_series(params, figure: str) -> tuple[str, ...]:
    """The series of ``params`` that its model can build, in order: what the figure runs.
    The others (:func:`dropped_series`) are named on stderr, one line; :func:`dropped_claims`
    records them among the claims."""
    dropped = dropped_series(params)
    if dropped:
        print(
            f"[nfstudy] {figure}: series {', '.join(dropped)} dropped: {next(iter(dropped.values()))}; their claims are not evaluable",
            file=sys.stderr,
        )
    return tuple(s for s in params.series if s not in dropped)


def dropped_claims(params) -> list[Claim]:
    """One ``not evaluable`` claim per dropped series (:func:`dropped_series`), so that the run's
    claims say what it could not decide and why: no claim about a series that never ran can
    pass or fail. An NF, WS or AGC series is an extension; bn and none are the paper's."""
    found = []
    for series, why in dropped_series(params).items():
        norm, agc = split_agc(network_of(series))
        paper = norm in ("bn", "none") and not agc
        found.append(
            Claim(
                f"{'' if paper else '(beyond the paper) '}Series {series} was not run: its claims cannot be decided",
                f"series {series}: not built",
                math.nan,
                ">=",
                math.nan,
                kind="paper" if paper else "extension",
                evaluable=False,
                note=f"{why}: the series was dropped (-p model {DEFAULT_MODEL} builds it)",
            )
        )
    return found


def history_table(runs: list[tuple[dict, pd.DataFrame]]) -> pd.DataFrame:
    """One tidy history of several training runs: each run's ``keys`` (series, lr, ...) as
    leading columns of its per-epoch ``history``. A run that diverged in its first epoch
    has no rows; if none has any, the columns are still there."""
    frames = [pd.DataFrame(keys, index=history.index).join(history) for keys, history in runs]
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


# -------------------- tables a seed folder may lack
#
# A figure's ``claims`` and ``plot`` work from the tables they are given: results copied
# without their large tables, an old gallery, or a table deleted by hand must not stop a
# report. A claim whose table is absent is "not evaluable", saying which table; a plot draws
# what it can and says what it left out (on the figure and on stderr).


def lacking(tables: dict, *names: str) -> list[str]:
    """Those of ``names`` that ``tables`` does not hold (absent, or None)."""
    return [n for n in names if tables.get(n) is None]


def needs_note(missing) -> str:
    """The note of a claim that cannot be decided because ``missing`` tables are absent."""
    missing = list(missing)
    s = "s" if len(missing) > 1 else ""
    return f"needs the table{s} {', '.join(missing)}, absent from this run's files (restore {'them' if s else 'it'} or re-run the seed)"


def unevaluable(found, missing) -> list:
    """The claims ``found`` (worked out on a stand-in for the absent tables, so that each keeps
    its statement and threshold), each made not evaluable, with no value."""
    import dataclasses
    import math

    note = needs_note(missing)
    return [dataclasses.replace(c, value=math.nan, evaluable=False, note=note) for c in found]


def placeholder_claims(figure: str, missing) -> list:
    """One not-evaluable claim standing for every claim of ``figure``, when the table they all
    need (and that names them) is absent."""
    import math

    from nfstudy.claims import Claim

    return [
        Claim(
            f"Every claim of {figure}",
            "(the table the claims are measured on is absent)",
            math.nan,
            ">=",
            math.nan,
            evaluable=False,
            note=needs_note(missing),
        )
    ]


def say_missing(fig, missing, what: str) -> None:
    """Note on ``fig`` (at its foot) and on stderr that the ``missing`` tables are absent, so
    ``what`` is not drawn."""
    import sys

    line = f"not drawn: {what} (needs the table{'s' if len(missing) > 1 else ''} {', '.join(missing)}, absent from the seeds' files)"
    print(f"[nfstudy] {line}", file=sys.stderr)
    fig.text(0.5, 0.0, line, ha="center", va="top", fontsize=8, color="#b22222")


def empty_figure(title: str, missing, what: str = "the figure"):
    """A figure holding only its title and the note of what is missing: nothing to draw."""
    from nfstudy.plots import figure

    fig, axes = figure(1, 1, width=6.0, height=1.6)
    axes[0][0].set_axis_off()
    fig.suptitle(title, fontsize=10)
    say_missing(fig, missing, what)
    return fig
