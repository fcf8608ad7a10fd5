"""fig4 and fig3 of the mechanism measurements (:mod:`._mechanisms`): the figures' own runs,
with every conv layer probed (fig4) and the update applied in parts; the loss before the
probed step and the lowest relative loss (fig3)."""

from __future__ import annotations

import pandas as pd
import torch

from nfstudy.claims import claims_table
from nfstudy.probes import UpdateDirection
from nfstudy.probes.landscape import evaluate_along_update
from nfstudy.runtime import progress

from ._common import make_resnet
from ._mechanisms import Mechanisms, _concat, _first_batch, _load, _params, scaled

# --------------------------------------------------------------------------- fig4


def partial_relative_loss(model, update: UpdateDirection, images, labels, lr: float, keep) -> float:
    """The relative loss after the update applied to the parameters whose name ``keep`` accepts."""
    chosen = [i for i, n in enumerate(update.names) if keep(n)]
    part = UpdateDirection(
        names=tuple(update.names[i] for i in chosen),
        params=tuple(update.params[i] for i in chosen),
        directions=tuple(update.directions[i] for i in chosen),
        loss=update.loss,
    )
    losses, _ = evaluate_along_update(model, part, images, labels, [lr], chunk_size=1)
    return float(losses[0]) / float(update.loss)


def fig4_section(s: Mechanisms, device) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(fig4_depth, fig4_parts, claims): the figure's run with every conv layer probed."""
    from . import fig4

    depth_rows, parts, claim_rows = [], [], []
    for dataset in [d for d in s.datasets if d in s.fig4_datasets]:
        data = _load(dataset)
        layers = tuple(range(1, s.depth))  # every conv; the fc (s.depth) has no channels to pool
        over = {"series": ("none",), "layers": layers}
        if s.fig4_fractions is not None:
            over["n_fractions"] = s.fig4_fractions
        params = _params("fig4", dataset, s, **over)
        for seed in progress(s.seeds, desc=f"mechanisms fig4 {dataset}", unit="seed"):
            tables = {k: v.assign(seed=seed) for k, v in fig4.run(params, seed=seed, device=device).items()}  # as saved
            moments, losses, protocol = tables["channel_moments"], tables["update_loss"], tables["lr_protocol"]
            paper_layers = [k for k in scaled(sorted(fig4.PAPER_MAX_VARIANCE), s.depth)]
            shown = {**tables, "channel_moments": moments[moments["layer"].isin(paper_layers)]}
            claim_rows.append(claims_table("fig4", fig4.claims(shown)).assign(dataset=dataset, seed=seed))
            per_layer = moments.groupby(["layer", "fraction"])["variance"].agg(["mean", "max"]).reset_index()
            first, last = per_layer["fraction"].min(), per_layer["fraction"].max()
            for layer, frame in per_layer.groupby("layer"):
                before = frame.loc[frame["fraction"] == first, "mean"].iloc[0]
                after = frame.loc[frame["fraction"] == last, "mean"].iloc[0]
                depth_rows.append(
                    dict(
                        dataset=dataset,
                        seed=seed,
                        layer=int(layer),
                        variance_before=float(before),
                        variance_after=float(after),
                        max_channel_variance=float(frame["max"].max()),
                    )
                )
            # The same update applied in parts: which parameters make the loss diverge.
            lr = float(protocol["lr"].iloc[0])
            torch.manual_seed(seed)  # as fig4 (update 0: from initialisation)
            model = make_resnet(params, "none", data.num_classes).to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=params.momentum, weight_decay=params.weight_decay)
            images, labels = _first_batch(params, data, seed, device)
            update = UpdateDirection.compute(model, optimizer, images, labels)
            relative = losses.loc[losses["fraction"] == losses["fraction"].max(), "relative_loss"].iloc[0]
            lowest = losses.loc[losses["relative_loss"].idxmin()]
            parts.append(
                dict(
                    dataset=dataset,
                    seed=seed,
                    outcome=protocol["outcome"].iloc[0],
                    lr=lr,
                    loss_before=float(protocol["loss_before"].iloc[0]),
                    update_norm=float(protocol["update_norm"].iloc[0]),
                    relative_loss=float(relative),
                    relative_loss_conv_only=partial_relative_loss(model, update, images, labels, lr, lambda n: not n.startswith("fc.")),
                    relative_loss_fc_only=partial_relative_loss(model, update, images, labels, lr, lambda n: n.startswith("fc.")),
                    lowest_relative_loss=float(lowest["relative_loss"]),
                    lowest_at_fraction=float(lowest["fraction"]),
                )
            )
    return pd.DataFrame(depth_rows), pd.DataFrame(parts), _concat(claim_rows)


# --------------------------------------------------------------------------- fig3


def fig3_section(s: Mechanisms, device) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fig3_losses, claims): the figure's run, BN at 0.1 and no BN at 1e-4."""
    from . import fig3

    rows, claim_rows = [], []
    for dataset in [d for d in s.datasets if d in s.fig3_datasets]:
        over = {"series": ("bn", "none"), "learning_rates": (0.1, 1e-4)}
        if s.fig3_step_sizes is not None:
            over["n_step_sizes"] = s.fig3_step_sizes
        if s.fig3_batches is not None:
            over["batches"] = s.fig3_batches
        params = _params("fig3", dataset, s, profile="quick", **over)
        for seed in progress(s.seeds, desc=f"mechanisms fig3 {dataset}", unit="seed"):
            table = fig3.run(params, seed=seed, device=device)["relative_loss"]
            claim_rows.append(
                claims_table("fig3", fig3.claims({"relative_loss": table.assign(seed=seed)})).assign(dataset=dataset, seed=seed)
            )
            for (series, batch), frame in table.groupby(["series", "batch"], sort=False):
                best = frame.loc[frame["relative_loss"].idxmin()]
                rows.append(
                    dict(
                        dataset=dataset,
                        seed=seed,
                        series=series,
                        lr=float(frame["lr"].iloc[0]),
                        batch=int(batch),
                        loss_before=float(frame["loss_before"].iloc[0]),
                        lowest_relative_loss=float(best["relative_loss"]),
                        at_step_size=float(best["step_size"]),
                    )
                )
    return pd.DataFrame(rows), _concat(claim_rows)
