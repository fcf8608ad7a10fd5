"""Why the failing paper claims fail: the mechanisms, measured (issue 22).

The quick gallery (8x8 digits, upsampled to 32x32) fails some of Bjorck et al.'s claims in
Figs. 2, 3, 4 and 6. For each, this measures whether it passes on real 32x32 images
(Fashion-MNIST, padded) at the paper's shape (ResNet-110, the paper's batch), and what the
networks do where it still fails. Every network is the figure's own (``params_for``: the
figure's profile, ``PAPER_INIT``, its seeding), so at gain 1 and input scale 1 the numbers
are the figures' numbers; the verdicts are the figures' own ``claims()`` on the measured
tables. Datasets: ``digits`` runs each figure's quick profile (the committed gallery's
parameters), any other the paper profile with that dataset; fig3 always runs its quick
profile (the paper's network and batch, 19 step sizes, the series BN at 0.1 and no BN at
1e-4) so that only the data differ from the gallery.

Sections (``--sections``), each one CSV in ``--out``:

* ``fig2`` -> ``fig2_gradients.csv``: max |dL/dW| of chosen weight layers along depth (the
  paper's layer 55 among them), BN and no BN, at initialisation, one mini-batch, per
  *variant*: the paper's init (``xavier_uniform``) as built; its conv weights multiplied by
  a gain (0.8 .. 0.95: how the no-BN gradients move with the init's scale); the input
  images multiplied by 0.1 (the input statistics: a bias-free ReLU network without BN is
  positively homogeneous in its input, BN is invariant to it); the other inits. Also each
  network's loss and logit scale.
* ``fig6`` -> ``fig6_features.csv`` and ``fig6_networks.csv``: per network at
  initialisation (train mode, one mini-batch), at the stem and at the first, middle and
  last block of each stage, the output's per-channel second moment split three ways:
  ``common`` (the channel mean over images, squared: what every image shares),
  ``between`` (the variance across images of the spatially pooled channel: what the
  classifier can tell images apart by) and ``within`` (the spatial variance inside an
  image: what global pooling averages away); ``common + between + within`` is the
  channel's mean square. Per network: the dominant-class share (fig6's), the
  probability the logits of the *mean* image (the common part) give their top class,
  the top-2 gap of those logits against the logits' spread across images, and the
  dominant-class share once the common part is removed (the pooled features centred
  across the batch).
* ``fig4`` -> ``fig4_depth.csv``, ``fig4_parts.csv``: the figure's own run (the onset
  protocol) with every conv layer probed: per layer the average channel variance before
  and after the update and the largest over it; and the relative loss when the update is
  applied to the conv weights only, or to the classifier only.
* ``fig3`` -> ``fig3_losses.csv``: per series and probed mini-batch the loss before the
  step and the lowest relative loss (the figure's own run).

``claims.csv``: every claim of those figures, per dataset and seed, from the figure's own
``claims()``. ``README.md`` (generated from the CSVs present): the tables per claim::

    python -m nfstudy_experiments._mechanisms --out results/mechanisms            # all (CPU: ~2 h)
    python -m nfstudy_experiments._mechanisms --sections fig6 --datasets fashion --out results/mechanisms
    python -m nfstudy_experiments._mechanisms --report-only --out results/mechanisms

A section rewrites only its own CSVs (and its rows of claims.csv); the README is rebuilt
from all. Fashion-MNIST is found as ``nfstudy.data`` finds it (``NFSTUDY_FASHION_MNIST``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from nfstudy.claims import claims_table
from nfstudy.data import load_dataset
from nfstudy.models import PAPER_INIT
from nfstudy.probes import dominant_class, weight_gradients
from nfstudy.runs import atomic_write
from nfstudy.runtime import derived_seed, progress, resolve_device

from . import params_for
from ._common import make_resnet

PAPER_DEPTH = 110
FIG2_LAYERS = (1, 2, 10, 19, 28, 37, 46, 55, 64, 73, 82, 91, 100, 109, 110)  # the fc is 110
FIG2_LAYER = 55  # the paper's
SECTIONS = ("fig2", "fig6", "fig4", "fig3")
FILES = {
    "fig2": ("fig2_gradients.csv",),
    "fig6": ("fig6_features.csv", "fig6_networks.csv"),
    "fig4": ("fig4_depth.csv", "fig4_parts.csv"),
    "fig3": ("fig3_losses.csv",),
}


@dataclass(frozen=True)
class Variant:
    """A fig2 network: ``init``, its conv weights times ``gain``, the input images times ``input_scale``."""

    init: str = PAPER_INIT
    gain: float = 1.0
    input_scale: float = 1.0

    @property
    def key(self) -> str:
        return f"{self.init}:{self.gain:g}:{self.input_scale:g}"

    @property
    def name(self) -> str:
        parts = [self.init]
        if self.gain != 1.0:
            parts.append(f"conv x{self.gain:g}")
        if self.input_scale != 1.0:
            parts.append(f"input x{self.input_scale:g}")
        return ", ".join(parts)


BASE = Variant()
VARIANTS = (
    BASE,
    *(Variant(gain=g) for g in (0.8, 0.85, 0.9, 0.95)),
    Variant(input_scale=0.1),
    Variant(init="kaiming_fan_out"),
    Variant(init="pytorch_default"),
)


@dataclass(frozen=True)
class Mechanisms:
    datasets: tuple[str, ...] = ("digits", "fashion")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    depth: int = PAPER_DEPTH
    batch_size: int | None = None  # None: each figure's profile's
    fig2_layers: tuple[int, ...] = FIG2_LAYERS
    fig2_variants: tuple[Variant, ...] = VARIANTS
    fig2_variant_datasets: tuple[str, ...] = ("fashion",)  # where the variants run (the others: BASE only)
    fig6_networks: int | None = None  # None: the profile's (10)
    fig6_series: tuple[str, ...] = ("bn", "none", "nf")
    fig4_fractions: int | None = None  # None: the profile's
    fig4_datasets: tuple[str, ...] = ("digits", "fashion")
    fig3_datasets: tuple[str, ...] = ("fashion",)  # digits: the committed gallery is that run
    fig3_step_sizes: int | None = None  # None: the quick profile's 19
    fig3_batches: tuple[int, ...] | None = None  # None: the profile's (1, 4, 7)


def profile_of(dataset: str) -> str:
    """The quick gallery's parameters on its digits; the paper profile on any other data."""
    return "quick" if dataset == "digits" else "paper"


def scaled(layers, depth: int) -> tuple[int, ...]:
    """The paper's ResNet-110 layers moved to the same relative depth (the last stays the fc)."""
    if depth == PAPER_DEPTH:
        return tuple(layers)
    return tuple(sorted({max(1, min(depth, round(k * depth / PAPER_DEPTH))) for k in layers}))


def _params(figure: str, dataset: str, s: Mechanisms, profile: str | None = None, **overrides):
    over = {"dataset": dataset, "depth": s.depth, **overrides}
    if s.batch_size is not None:
        over["batch_size"] = s.batch_size
    return params_for(figure, profile or profile_of(dataset), **over)


def _first_batch(params, data, seed: int, device):
    loader = data.loader("train", params.batch_size, augment=params.augment, seed=seed, device=device, drop_last=True)
    return loader.first_batch()


def _load(dataset: str):
    return load_dataset(dataset)  # as figs 2, 4 and 6 load it


# --------------------------------------------------------------------------- fig2


def excess_kurtosis(x: torch.Tensor) -> float:
    x = x.double()
    z = (x - x.mean()) / x.std(unbiased=False)
    return float((z**4).mean() - 3.0)


def scale_convs(model: torch.nn.Module, gain: float) -> None:
    """Every conv weight times ``gain`` (the classifier unchanged)."""
    if gain != 1.0:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.weight.mul_(gain)


def fig2_section(s: Mechanisms, device) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fig2_gradients, claims): per dataset, variant, seed, series and layer, max |dL/dW|."""
    rows, claim_rows = [], []
    jobs = [(d, v) for d in s.datasets for v in (s.fig2_variants if d in s.fig2_variant_datasets else (BASE,))]
    bar = progress(total=len(jobs) * len(s.seeds) * 2, desc="mechanisms fig2", unit="net")
    for dataset, variant in jobs:
        data = _load(dataset)
        layers = scaled(s.fig2_layers, s.depth)
        target = scaled((FIG2_LAYER,), s.depth)[0]
        params = _params("fig2", dataset, s, init=variant.init, series=("bn", "none"), layer=target)
        for seed in s.seeds:
            images, labels = _first_batch(params, data, seed, device)
            images = images * variant.input_scale if variant.input_scale != 1.0 else images
            summary = []
            for series in ("bn", "none"):
                torch.manual_seed(seed)  # as fig2: both series from the same conv weights
                model = make_resnet(params, series, data.num_classes).to(device)
                scale_convs(model, variant.gain)
                logits = {}
                hook = model.fc.register_forward_hook(lambda m, i, o: logits.__setitem__("z", o.detach()))
                grads, loss = weight_gradients(model, images, labels, sorted(set(layers) | {target}))
                hook.remove()
                z = logits["z"].double()
                for layer in layers:
                    rows.append(
                        dict(
                            dataset=dataset,
                            variant=variant.name,
                            init=variant.init,
                            gain=variant.gain,
                            input_scale=variant.input_scale,
                            seed=seed,
                            series=series,
                            layer=layer,
                            max_abs=float(grads[layer].abs().max()),
                            loss=loss,
                            logit_std=float(z.std()),
                        )
                    )
                g = grads[target].flatten().cpu()
                # fig2's gradient_summary, the columns its claims() reads
                summary.append(dict(series=series, layer=target, loss=loss, max_abs=float(g.abs().max()), kurtosis=excess_kurtosis(g)))
                bar.update()
            if variant == BASE:
                from . import fig2

                found = claims_table("fig2", fig2.claims({"gradient_summary": pd.DataFrame(summary)}))
                claim_rows.append(found.assign(dataset=dataset, seed=seed))
    bar.close()
    return pd.DataFrame(rows), _concat(claim_rows)


# --------------------------------------------------------------------------- fig6


def split_second_moment(x: torch.Tensor) -> dict[str, float]:
    """Per channel of ``x`` [N, C, H, W] (or [N, C]), averaged over channels: ``common`` =
    (mean over images and positions)^2, ``between`` = the variance across images of the
    spatially pooled channel, ``within`` = the spatial variance inside an image (mean over
    images). ``common + between + within`` = the channel's mean square."""
    x = x.detach().double()
    pooled = x.mean((2, 3)) if x.dim() == 4 else x
    mean = pooled.mean(0)
    between = pooled.var(0, unbiased=False)
    within = (x - pooled[:, :, None, None]).pow(2).mean((0, 2, 3)) if x.dim() == 4 else torch.zeros_like(mean)
    return dict(
        common=float(mean.pow(2).mean()),
        between=float(between.mean()),
        within=float(within.mean()),
        mean_square=float(x.pow(2).mean()),
    )


def probe_points(model) -> list[tuple[str, torch.nn.Module]]:
    """The stem's output and the first, middle and last block of each stage, from the input."""
    points = [("stem", model.bn1 if hasattr(model, "relu") and isinstance(model.relu, torch.nn.Identity) else model.relu)]
    for stage in ("layer1", "layer2", "layer3"):
        blocks = list(getattr(model, stage))
        n = len(blocks)
        for index in sorted({0, n // 2, n - 1}):
            points.append((f"{stage}.{index}", blocks[index]))
    return points


def logit_decomposition(z: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """What the logits ``z`` [N, K] of one batch share across images, against what differs."""
    z = z.detach().double()
    common = z.mean(0)
    top = torch.topk(common, 2).values
    softmax = torch.softmax(z, 1)
    grads = softmax.clone()
    grads[torch.arange(len(labels)), labels] -= 1.0
    d = dominant_class(grads, labels)
    centred = torch.softmax(z - common, 1)  # the logits of features centred across the batch, up to the fc bias
    # (the bias is the same for every image: added back it would only move the common part, which is gone)
    cgrads = centred.clone()
    cgrads[torch.arange(len(labels)), labels] -= 1.0
    return dict(
        dominant_share=d.share,
        dominant_class=d.cls,
        common_top_probability=float(torch.softmax(common, 0).max()),
        common_gap=float(top[0] - top[1]),
        logit_spread=float(z.var(0, unbiased=False).mean().sqrt()),
        centred_share=dominant_class(cgrads, labels).share,
        loss=float(F.cross_entropy(z, labels)),
    ), grads


def fig6_section(s: Mechanisms, device) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(fig6_features, fig6_networks, claims)."""
    from . import fig6

    features, networks, claim_rows = [], [], []
    for dataset in s.datasets:
        data = _load(dataset)
        over = {"series": s.fig6_series, "epoch": False}
        if s.fig6_networks is not None:
            over["networks"] = s.fig6_networks
        params = _params("fig6", dataset, s, **over)
        bar = progress(total=len(s.seeds) * params.networks * len(s.fig6_series), desc=f"mechanisms fig6 {dataset}", unit="net")
        for seed in s.seeds:
            images, labels = _first_batch(params, data, seed, device)
            summary, gradient_rows = [], []
            for network in range(params.networks):
                for series in s.fig6_series:
                    torch.manual_seed(derived_seed(seed, network))  # as fig6
                    model = make_resnet(params, series, data.num_classes).to(device)
                    found = {}
                    hooks = [
                        module.register_forward_hook(lambda m, i, o, name=name: found.__setitem__(name, split_second_moment(o)))
                        for name, module in probe_points(model)
                    ]
                    pooled = {}
                    hooks.append(model.fc.register_forward_hook(lambda m, i, o: pooled.update(x=i[0].detach(), z=o.detach())))
                    model.train()
                    with torch.no_grad():
                        model(images)
                    for h in hooks:
                        h.remove()
                    found["pooled"] = split_second_moment(pooled["x"])
                    for point, values in found.items():
                        features.append(dict(dataset=dataset, seed=seed, series=series, network=network, point=point, **values))
                    logits, grads = logit_decomposition(pooled["z"], labels)
                    networks.append(dict(dataset=dataset, seed=seed, series=series, network=network, **logits))
                    summary.append(dict(series=series, network=network, scope="batch", dominant_share=logits["dominant_share"]))
                    gradient_rows.append(
                        pd.DataFrame(
                            {
                                "series": series,
                                "network": network,
                                "image": np.repeat(np.arange(len(labels)), grads.shape[1]),
                                "gradient": grads.cpu().numpy().reshape(-1),
                            }
                        )
                    )
                    bar.update()
            tables = {"dominant_class": pd.DataFrame(summary), "logit_gradients": pd.concat(gradient_rows, ignore_index=True)}
            claim_rows.append(claims_table("fig6", fig6.claims(tables)).assign(dataset=dataset, seed=seed))
        bar.close()
    features = pd.DataFrame(features)
    keys = ["dataset", "seed", "series", "point"]
    order = {p: i for i, p in enumerate(dict.fromkeys(features["point"]))}
    medians = features.groupby(keys, sort=False)[["common", "between", "within", "mean_square"]].median().reset_index()
    medians["common_to_between"] = np.sqrt(medians["common"] / medians["between"])
    medians["position"] = medians["point"].map(order)
    return medians, pd.DataFrame(networks), _concat(claim_rows)


# --------------------------------------------------------------------------- running


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(s: Mechanisms, sections=SECTIONS, device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Every table of ``sections``: ``{file name: table}``; ``claims.csv``: the figures' claims,
    ``runs.csv``: what ran, where, and for how long."""
    from ._mechanisms_steps import fig3_section, fig4_section

    device = resolve_device(device)
    out, claims, log = {}, [], []
    for section in sections:
        start = time.time()
        if section == "fig2":
            out["fig2_gradients.csv"], found = fig2_section(s, device)
        elif section == "fig6":
            out["fig6_features.csv"], out["fig6_networks.csv"], found = fig6_section(s, device)
        elif section == "fig4":
            out["fig4_depth.csv"], out["fig4_parts.csv"], found = fig4_section(s, device)
        elif section == "fig3":
            out["fig3_losses.csv"], found = fig3_section(s, device)
        else:
            raise ValueError(f"unknown section {section!r}: choose from {', '.join(SECTIONS)}")
        claims.append(found)
        seconds = time.time() - start
        log.append(
            dict(
                section=section,
                datasets=",".join(s.datasets),
                seeds=",".join(map(str, s.seeds)),
                networks=(s.fig6_networks or "the profile's") if section == "fig6" else "-",
                depth=s.depth,
                started=time.strftime("%Y-%m-%d %H:%M", time.localtime(start)),
                minutes=round(seconds / 60, 1),
                device=str(device),
                machine=cpu_model() if str(device) == "cpu" else torch.cuda.get_device_name(device),
                cpus=os.cpu_count(),
                threads=torch.get_num_threads(),
                torch=torch.__version__,
            )
        )
        print(f"[mechanisms] {section}: {seconds:.0f} s", flush=True)
    out["claims.csv"] = _concat(claims)
    out["runs.csv"] = pd.DataFrame(log)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/mechanisms")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    ap.add_argument("--datasets", default=None, help="comma-separated (default digits,fashion)")
    ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2,3,4)")
    ap.add_argument("--networks", type=int, default=None, help="fig6: networks per seed (default the profile's, 10)")
    ap.add_argument(
        "--variants",
        default=None,
        help="fig2 on fashion: which variants besides the paper's init (keys: " + ", ".join(v.key for v in VARIANTS[1:]) + "; empty: none)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--report-only", action="store_true", help="rebuild README.md from the CSVs in --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    from ._mechanisms_report import report, write

    if args.report_only:
        atomic_write(out / "README.md", report(out))
        return
    s = Mechanisms()
    if args.datasets:
        s = replace(s, datasets=tuple(args.datasets.split(",")))
    if args.seeds:
        s = replace(s, seeds=tuple(int(x) for x in args.seeds.split(",")))
    if args.networks:
        s = replace(s, fig6_networks=args.networks)
    if args.variants is not None:
        chosen = set(args.variants.split(",")) if args.variants else set()
        s = replace(s, fig2_variants=tuple(v for v in VARIANTS if v == BASE or v.key in chosen))
    write(out, run(s, tuple(args.sections.split(",")), args.device))


if __name__ == "__main__":
    main()
