"""Which initialisation is Bjorck et al.'s network? A survey by measurement (issue 11).

The paper does not state its initialisation (docs/papers.md#bjorck-setup). For the CIFAR
ResNet-110 with BN and without BN (the same conv weights: each figure seeds both series
alike) and every candidate of :data:`nfstudy.models.INITS`, this measures the magnitudes
the paper's figures show, through the figures' own ``run()`` functions at their paper
profile (``nfstudy_experiments.params_for(fig, "paper", dataset=..., init=..., series=...)``):

* Fig. 2: the range of the layer-55 kernel gradient at initialisation (max |g| and the
  99.9% quantile of |g|), BN and no BN, and their ratio;
* Fig. 5: the "log magnitude" of the average channel |mean| and channel std at layers
  6, 18, ..., 102 and the last (110, the logits), in base 10 and base e (the paper's axis
  does not say which);
* Fig. 6: the output-logit gradient scale (max |dL/dz| of the batch's mean loss, the
  scale of the paper's colour bar) and the fraction of images whose argmax is the most
  common argmax (one saturated column: 1.0);
* Fig. 4: per layer (8, 44, 80) the range of the channel means and the largest channel
  variance over one no-BN update at the figure's learning rate;
* training (:func:`nfstudy.train.train`, SGD momentum 0.9, weight decay 5e-4, batch 128,
  a constant learning rate, fp32): does the no-BN network train at lr 1e-4 (train loss and
  accuracy at the end) and diverge at lr 0.1 (the step)?

Writes ``init_survey.csv`` (tidy: init, network, figure, magnitude, value, paper_value,
data) and ``init_survey.md`` (the table, the factor by which each init misses each paper
magnitude, and the ranking) into ``--out``::

    python -m nfstudy_experiments._init_survey --device cpu --dataset synthetic --out results/init_survey
    python -m nfstudy_experiments._init_survey --device cuda --preset full --out results/init_survey

``--preset cpu`` (default) is the smallest run that measures every magnitude (one network
per series for Figs. 5 and 6, six fractions of the Fig. 4 update, short training on 8x8
digits); the CSV has the seconds each probe took. ``--preset full`` is the figures' paper
profiles (ten networks, 51 fractions), Fig. 4 at three more learning rates and longer
training on 32x32 digits, for a GPU. Pure Python + torch/pandas.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nfstudy.data import DATASETS, load_dataset
from nfstudy.models import INITS, cifar_resnet
from nfstudy.runs import atomic_write, atomic_write_csv
from nfstudy.runtime import progress, resolve_device
from nfstudy.train import TrainConfig, train

from . import params_for

PAPER_DEPTH = 110
FIG2_LAYER = 55
FIG4_LAYERS = (8, 44, 80)
FIG5_LAYERS = (6, 18, 30, 42, 54, 66, 78, 90, 102, 110)  # the paper's x-axis and the last layer
TRAIN_LRS = {"slow": 1e-4, "fast": 0.1}  # the paper's no-BN rate; BN's rate, where no BN diverges

# The paper's magnitudes, read off its figures (docs/papers.md#bjorck-magnitudes, "good to a factor ~2"):
# (figure, network, magnitude) -> value.  Log magnitudes are given in both bases, the
# paper's axis base being unstated.
PAPER = {
    ("fig2", "bn", "max |g| layer 55"): 0.04,
    ("fig2", "none", "max |g| layer 55"): 4.0,
    ("fig2", "none/bn", "max |g| ratio"): 100.0,
    ("fig2", "bn", "q99.9 |g| layer 55"): 0.04,
    ("fig2", "none", "q99.9 |g| layer 55"): 4.0,
    ("fig2", "none/bn", "q99.9 |g| ratio"): 100.0,
    ("fig6", "bn", "max |dL/dlogit| (mean loss)"): 0.004,
    ("fig6", "none", "max |dL/dlogit| (mean loss)"): 0.004,
    ("fig6", "none", "top-1 share of the commonest class"): 1.0,
    ("fig4", "none", "min channel mean layer 8"): -0.6,
    ("fig4", "none", "max channel mean layer 8"): 1.4,
    ("fig4", "none", "max channel variance layer 8"): 1.0,
    ("fig4", "none", "max |channel mean| layer 44"): 3e3,
    ("fig4", "none", "max channel variance layer 44"): 5e6,
    ("fig4", "none", "max |channel mean| layer 80"): 3e8,
    ("fig4", "none", "max channel variance layer 80"): 5e16,
    ("train", "none", f"diverged at lr {TRAIN_LRS['slow']:g} (1 = yes)"): 0.0,  # "picked such that [it] converges"
    ("train", "none", f"diverged at lr {TRAIN_LRS['fast']:g} (1 = yes)"): 1.0,  # "diverges (not shown)"
}
for _base in ("log10", "ln"):
    PAPER |= {
        ("fig5", "bn", f"min over layers {_base} channel |mean|, std"): -1.5,
        ("fig5", "bn", f"max over layers {_base} channel |mean|, std"): 1.0,
        ("fig5", "none", f"{_base} avg channel |mean| layer 6"): -1.5,
        ("fig5", "none", f"{_base} avg channel |mean| layer 110"): 3.5,
        ("fig5", "none", f"{_base} avg channel |mean| rise layer 6 to 110"): 5.0,
    }

# How a measured value is compared with the paper's: the factor by which it misses.
FLAG_MAGNITUDES = ("diverged at", "top-1 share")


@dataclass(frozen=True)
class Survey:
    inits: tuple[str, ...] = INITS
    dataset: str = "synthetic"  # the probes' data (32x32 images)
    depth: int = PAPER_DEPTH
    batch_size: int = 128  # the paper's
    networks: int = 1  # Figs. 5 and 6: initialisations per series
    fig4_fractions: int = 6  # fractions 0, 0.2, ..., 1 of the update
    fig4_extra_lrs: tuple[float, ...] = ()  # Fig. 4 also at these rates (the paper's is not stated)
    train_dataset: str = "digits"
    train_image_size: int = 8
    train_epochs: int = 6  # at lr 1e-4 (digits: 12 steps an epoch at batch 128)
    train_epochs_fast: int = 3  # at lr 0.1: long enough to see it diverge
    seed: int = 0


PRESETS = {
    # One network per series, six fractions, 72 + 36 training steps: the CPU run.
    "cpu": Survey(),
    # The figures' paper profiles; 25 epochs (300 steps) of training on 32x32 digits.
    "full": Survey(
        networks=10, fig4_fractions=51, fig4_extra_lrs=(1e-4, 0.01, 0.1), train_image_size=32, train_epochs=50, train_epochs_fast=10
    ),
}


def scaled_layers(layers, depth: int) -> tuple[int, ...]:
    """The paper's ResNet-110 layers moved to the same relative depth (for smoke tests)."""
    return tuple(max(1, min(depth, round(k * depth / PAPER_DEPTH))) for k in layers)


def _row(init, network, figure, magnitude, value, data):
    return dict(init=init, network=network, figure=figure, magnitude=magnitude, value=float(value), data=data)


# --------------------------------------------------------------------------- the probes


def fig2_rows(init: str, s: Survey, device) -> list[dict]:
    from . import fig2

    (layer,) = scaled_layers((FIG2_LAYER,), s.depth)
    p = params_for(
        "fig2", "paper", dataset=s.dataset, init=init, series=("bn", "none"), depth=s.depth, layer=layer, batch_size=s.batch_size
    )
    values = fig2.run(p, seed=s.seed, device=device)["gradient_values"]
    data = f"{s.dataset} 32x32, batch {s.batch_size}"
    rows, found = [], {}
    for series, v in values.groupby("series"):
        g = v["value"].abs()
        found[series] = (float(g.max()), float(g.quantile(0.999)))
        rows += [
            _row(init, series, "fig2", f"max |g| layer {FIG2_LAYER}", found[series][0], data),
            _row(init, series, "fig2", f"q99.9 |g| layer {FIG2_LAYER}", found[series][1], data),
        ]
    for i, name in enumerate(("max |g| ratio", "q99.9 |g| ratio")):
        rows.append(_row(init, "none/bn", "fig2", name, found["none"][i] / found["bn"][i], data))
    return rows


def fig5_rows(init: str, s: Survey, device) -> list[dict]:
    from . import fig5

    layers = scaled_layers(FIG5_LAYERS, s.depth)
    p = params_for(
        "fig5",
        "paper",
        dataset=s.dataset,
        init=init,
        series=("bn", "none"),
        depth=s.depth,
        layers=layers,
        networks=s.networks,
        batch_size=s.batch_size,
    )
    table = fig5.run(p, seed=s.seed, device=device)["activation_stats"]
    data = f"{s.dataset} 32x32, batch {s.batch_size}, {s.networks} network(s)"
    mean = table.groupby(["series", "statistic", "depth"])["value"].mean()  # over networks
    rows = []
    for (series, statistic, depth), value in mean.items():
        if statistic not in ("avg_channel_abs_mean", "avg_channel_std"):
            continue
        label = {"avg_channel_abs_mean": "avg channel |mean|", "avg_channel_std": "avg channel std"}[statistic]
        paper_depth = FIG5_LAYERS[layers.index(depth)]
        for base, log in (("log10", np.log10), ("ln", np.log)):
            rows.append(_row(init, series, "fig5", f"{base} {label} layer {paper_depth}", log(value), data))
    for base in ("log10", "ln"):
        for series in ("bn", "none"):
            mine = {r["magnitude"]: r["value"] for r in rows if r["network"] == series and r["magnitude"].startswith(base + " ")}
            means = [mine[f"{base} avg channel |mean| layer {d}"] for d in (FIG5_LAYERS[0], FIG5_LAYERS[-1])]
            rows += [
                _row(init, series, "fig5", f"min over layers {base} channel |mean|, std", min(mine.values()), data),
                _row(init, series, "fig5", f"max over layers {base} channel |mean|, std", max(mine.values()), data),
                _row(
                    init,
                    series,
                    "fig5",
                    f"{base} avg channel |mean| rise layer {FIG5_LAYERS[0]} to {FIG5_LAYERS[-1]}",
                    means[1] - means[0],
                    data,
                ),
            ]
    return rows


def fig6_rows(init: str, s: Survey, device) -> list[dict]:
    from . import fig6

    p = params_for(
        "fig6",
        "paper",
        dataset=s.dataset,
        init=init,
        series=("bn", "none"),
        depth=s.depth,
        networks=s.networks,
        batch_size=s.batch_size,
        epoch=False,
    )
    tables = fig6.run(p, seed=s.seed, device=device)
    data = f"{s.dataset} 32x32, batch {s.batch_size}, {s.networks} network(s)"
    grads = tables["logit_gradients"]
    summary = tables["dominant_class"]
    rows = []
    for series in ("bn", "none"):
        g = grads[grads["series"] == series]
        # The probe reports d(loss_i)/d(z_i); the batch's mean loss (what training and the
        # paper's colour bar use) has these divided by the batch size.
        # max |g| is (1 - p_true) / B ~ 1 / B whatever the network; the largest positive entry
        # (a wrong class's probability / B) is what a saturated column shows.
        largest = g.groupby("network")["gradient"].agg(lambda x: x.abs().max()) / s.batch_size
        positive = g.groupby("network")["gradient"].max() / s.batch_size
        d = summary[summary["series"] == series]
        rows += [
            _row(init, series, "fig6", "max |dL/dlogit| (mean loss)", largest.mean(), data),
            _row(init, series, "fig6", "max positive dL/dlogit (mean loss)", positive.mean(), data),
            _row(init, series, "fig6", "top-1 share of the commonest class", d["top1_share"].mean(), data),
            _row(init, series, "fig6", "share of other-class images giving it p > 1/2", d["dominant_share"].mean(), data),
            _row(init, series, "fig6", "logit std", d["logit_std"].mean(), data),
        ]
    return rows


def _last_finite_fraction(x: pd.DataFrame) -> float:
    """The largest fraction of the update up to which every channel's variance is finite."""
    finite = x.assign(ok=np.isfinite(x["variance"].to_numpy())).groupby("fraction")["ok"].all().sort_index()
    bad = finite[~finite]
    return float(finite.index[-1]) if bad.empty else float(finite[finite.index < bad.index[0]].index.max())


def fig4_rows(init: str, s: Survey, device) -> list[dict]:
    """At the figure's learning rate (the ranked rows) and at ``fig4_extra_lrs``."""
    from . import fig4

    layers = scaled_layers(FIG4_LAYERS, s.depth)
    p = params_for(
        "fig4",
        "paper",
        dataset=s.dataset,
        init=init,
        series=("none",),
        depth=s.depth,
        layers=layers,
        batch_size=s.batch_size,
        n_fractions=s.fig4_fractions,
    )
    rows = []
    for lr in (p.lr, *s.fig4_extra_lrs):  # p.lr None: the figure's protocol (the onset of divergence)
        tables = fig4.run(replace(p, lr=lr), seed=s.seed, device=device)
        used = f"lr {tables['lr_protocol']['lr'].iloc[0]:.3g}" + (" (onset of divergence)" if lr is None else "")
        data = f"{s.dataset} 32x32, batch {s.batch_size}, update {p.update}, {s.fig4_fractions} fractions, {used}"
        suffix = "" if lr == p.lr else f" (lr {lr:g})"
        m = tables["channel_moments"]
        loss = tables["update_loss"].sort_values("fraction")
        for layer, paper_layer in zip(layers, FIG4_LAYERS):
            x = m[m["layer"] == layer]
            rows += [
                _row(init, "none", "fig4", f"min channel mean layer {paper_layer}{suffix}", x["mean"].min(), data),
                _row(init, "none", "fig4", f"max channel mean layer {paper_layer}{suffix}", x["mean"].max(), data),
                _row(init, "none", "fig4", f"max |channel mean| layer {paper_layer}{suffix}", x["mean"].abs().max(), data),
                _row(init, "none", "fig4", f"max channel variance layer {paper_layer}{suffix}", x["variance"].max(), data),
                # The ranges above skip NaN (float32 overflowed): how much of the update they miss.
                _row(
                    init,
                    "none",
                    "fig4",
                    f"non-finite share layer {paper_layer}{suffix}",
                    1.0 - np.isfinite(x["variance"].to_numpy()).mean(),
                    data,
                ),
                _row(init, "none", "fig4", f"last fraction finite at layer {paper_layer}{suffix}", _last_finite_fraction(x), data),
            ]
        rows += [
            _row(init, "none", "fig4", f"relative loss at the full step{suffix}", loss["relative_loss"].iloc[-1], data),
            _row(init, "none", "fig4", f"update diverged (1 = yes){suffix}", bool(loss["diverged"].iloc[-1]), data),
        ]
    return rows


def train_rows(init: str, s: Survey, device) -> list[dict]:
    data_set = load_dataset(s.train_dataset, image_size=s.train_image_size)
    rows = []
    for speed, lr in TRAIN_LRS.items():
        epochs = s.train_epochs if speed == "slow" else s.train_epochs_fast
        torch.manual_seed(s.seed)
        model = cifar_resnet(s.depth, "none", init, num_classes=data_set.num_classes)
        config = TrainConfig(
            epochs=epochs, batch_size=128, lr=lr, momentum=0.9, weight_decay=5e-4, milestones=(), sync_every=1, precision="fp32"
        )
        result = train(model, data_set, config, seed=s.seed, device=device, desc=f"train {init} no BN lr {lr:g}")
        summary = result.summary()
        data = f"{s.train_dataset} {s.train_image_size}x{s.train_image_size}, batch 128, {epochs * result.steps_per_epoch} steps budget"
        last = result.history.iloc[-1] if len(result.history) else None
        rows += [
            _row(init, "none", "train", f"initial loss at lr {lr:g}", summary["initial_loss"], data),
            _row(init, "none", "train", f"diverged at lr {lr:g} (1 = yes)", result.diverged, data),
            _row(init, "none", "train", f"diverged step at lr {lr:g}", summary["diverged_step"] or math.nan, data),
            _row(init, "none", "train", f"steps at lr {lr:g}", result.steps, data),
            _row(init, "none", "train", f"train loss at the end, lr {lr:g}", last["train_loss"] if last is not None else math.nan, data),
            _row(
                init,
                "none",
                "train",
                f"train accuracy at the end, lr {lr:g}",
                last["train_accuracy"] if last is not None else math.nan,
                data,
            ),
            _row(
                init, "none", "train", f"test accuracy at the end, lr {lr:g}", last["test_accuracy"] if last is not None else math.nan, data
            ),
        ]
    return rows


PROBES = {"fig2": fig2_rows, "fig5": fig5_rows, "fig6": fig6_rows, "fig4": fig4_rows, "train": train_rows}


def measure(s: Survey, device="auto", probes=tuple(PROBES)) -> pd.DataFrame:
    """The tidy survey table of every init x probe."""
    device = resolve_device(device)
    rows = []
    bar = progress(total=len(s.inits) * len(probes), desc="init survey", unit="probe")
    for init in s.inits:
        for name in probes:
            bar.set_postfix(init=init, probe=name)
            tick = time.perf_counter()
            rows += PROBES[name](init, s, device)
            rows.append(_row(init, "-", name, "seconds", time.perf_counter() - tick, str(device)))
            bar.update()
    bar.close()
    return with_paper_values(pd.DataFrame(rows))


# --------------------------------------------------------------------------- comparison


def with_paper_values(table: pd.DataFrame) -> pd.DataFrame:
    keys = zip(table["figure"], table["network"], table["magnitude"])
    table = table.assign(paper_value=[PAPER.get(k, math.nan) for k in keys])
    return table[["init", "network", "figure", "magnitude", "value", "paper_value", "data"]]


def log_base(magnitude: str) -> str | None:
    """``"log10"`` or ``"ln"`` for a Fig. 5 log magnitude, else None."""
    for base in ("log10", "ln"):
        if magnitude.startswith((f"{base} ", f"min over layers {base} ", f"max over layers {base} ")):
            return base
    return None


def miss_factor(magnitude: str, value: float, paper: float) -> float:
    """By what factor ``value`` misses ``paper`` (1 = on the paper's number, inf = not at all).

    Scales compare as ratios (signed ones by magnitude, a sign flip is inf); log
    magnitudes by the ratio their difference means (10**d or e**d); yes/no flags and shares
    give 1 on a match (a share within 0.1) and inf otherwise."""
    if not (math.isfinite(paper) and math.isfinite(value)):
        return math.nan if not math.isfinite(paper) else math.inf
    if any(magnitude.startswith(f) for f in FLAG_MAGNITUDES):
        return 1.0 if abs(value - paper) <= 0.1 else math.inf
    base = log_base(magnitude)
    if base is not None:
        exponent = abs(value - paper) * (math.log(10.0) if base == "log10" else 1.0)
        return math.exp(exponent) if exponent < 700 else math.inf
    if value == 0 or (value > 0) != (paper > 0):
        return math.inf
    return max(value / paper, paper / value)


def comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Every magnitude the paper gives: the factor by which each init misses it."""
    t = table[table["paper_value"].notna()].copy()
    t["miss_factor"] = [miss_factor(m, v, p) for m, v, p in zip(t["magnitude"], t["value"], t["paper_value"])]
    return t


def ranking(comp: pd.DataFrame, within: float = 10.0) -> pd.DataFrame:
    """Per init and Fig. 5 log base: how many paper magnitudes it meets within ``within``
    (the issue's "factor of 10"), and the geometric mean of the finite factors. A base's
    rows are scored with the other base's left out."""
    frames = []
    for base, other in (("log10", "ln"), ("ln", "log10")):
        c = comp[[log_base(m) != other for m in comp["magnitude"]]]
        g = c.groupby("init")["miss_factor"]
        frames.append(
            pd.DataFrame(
                {
                    "fig5_base": base,
                    "matched": g.apply(lambda f: int((f <= within).sum())),
                    "of": g.size(),
                    "geomean_factor": g.apply(lambda f: float(np.exp(np.log(f[np.isfinite(f)]).mean()))),
                }
            )
        )
    return pd.concat(frames).reset_index().sort_values(["matched", "geomean_factor"], ascending=[False, True])


def _fmt(x) -> str:
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-2):
        return f"{x:.2g}"
    return f"{x:.3g}"


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def report(table: pd.DataFrame, s: Survey, device: str) -> str:
    inits = list(dict.fromkeys(table["init"]))
    wide = table.pivot_table(index=["figure", "network", "magnitude"], columns="init", values="value", sort=False)
    wide = wide.reindex(columns=inits).reset_index()
    paper = table.drop_duplicates(["figure", "network", "magnitude"]).set_index(["figure", "network", "magnitude"])["paper_value"]
    wide.insert(3, "paper", [paper.get((f, n, m), math.nan) for f, n, m in zip(wide["figure"], wide["network"], wide["magnitude"])])
    comp = comparison(table)
    factors = comp.pivot_table(index=["figure", "network", "magnitude"], columns="init", values="miss_factor", sort=False)
    factors = factors.reindex(columns=inits).reset_index()
    data = table.drop_duplicates("figure").set_index("figure")["data"]
    settings = ", ".join(f"{k}={v}" for k, v in asdict(s).items() if k != "inits")
    parts = [
        "# Which initialisation is the paper's network? (issue 11)",
        "",
        f"Written by `python -m nfstudy_experiments._init_survey` (experiments/_init_survey.py); device {device}; {settings}.",
        "No BN = the same conv weights as BN (each figure seeds both series alike). Data per probe: "
        + "; ".join(f"{f}: {d}" for f, d in data.items() if f in PROBES)
        + ".",
        "Paper values: docs/papers.md#bjorck-magnitudes (read off the figures, good to a factor ~2).",
        "",
        "## Measured",
        "",
        _markdown(wide),
        "",
        "## By what factor each init misses the paper",
        "",
        "Ratios for scales; for the log magnitudes of Fig. 5 the ratio their difference means "
        "(10^d or e^d); yes/no and shares: 1 on a match, inf otherwise.",
        "",
        _markdown(factors),
        "",
        "## Ranking (paper magnitudes met within a factor of 10)",
        "",
        _markdown(ranking(comp)),
        "",
    ]
    return "\n".join(parts)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfstudy_experiments._init_survey", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for init_survey.csv and init_survey.md")
    parser.add_argument("--device", default="auto", help="cpu, cuda, auto")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--dataset", default=None, choices=DATASETS, help="the probes' data (default: synthetic)")
    parser.add_argument("--inits", default=None, help=f"comma-separated subset of {', '.join(INITS)}")
    parser.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated subset of {', '.join(PROBES)}")
    parser.add_argument("--train-dataset", default=None, choices=DATASETS, help="the training runs' data (default: digits)")
    parser.add_argument("--train-epochs", type=int, default=None, help="epochs at lr 1e-4 (digits: 12 steps each)")
    parser.add_argument("--train-epochs-fast", type=int, default=None, help="epochs at lr 0.1")
    parser.add_argument("--fig4-extra-lrs", default=None, help="Fig. 4 also at these comma-separated learning rates")
    parser.add_argument("--depth", type=int, default=None, help="for smoke tests only: the paper's layers are rescaled")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    s = PRESETS[args.preset]
    overrides = {
        "dataset": args.dataset,
        "depth": args.depth,
        "seed": args.seed,
        "train_dataset": args.train_dataset,
        "inits": tuple(args.inits.split(",")) if args.inits else None,
        "train_epochs": args.train_epochs,
        "train_epochs_fast": args.train_epochs_fast,
        "fig4_extra_lrs": tuple(float(x) for x in args.fig4_extra_lrs.split(",")) if args.fig4_extra_lrs else None,
    }
    s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
    probes = tuple(p.strip() for p in args.probes.split(",") if p.strip())
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        parser.error(f"unknown probe(s) {unknown}: choose from {', '.join(PROBES)}")
    device = resolve_device(args.device)
    tick = time.perf_counter()
    table = measure(s, device, probes)
    out = Path(args.out)
    atomic_write_csv(table, out / "init_survey.csv")
    atomic_write(out / "init_survey.md", report(table, s, f"{device} ({time.perf_counter() - tick:.0f} s)"))
    print(f"wrote {out / 'init_survey.csv'} and {out / 'init_survey.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
