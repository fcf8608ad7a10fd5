"""The mechanism measures (experiments/_mechanisms*.py) compute what they say, on tiny cases
whose answer is known by construction."""

import pandas as pd
import pytest
import torch

from nfstudy.probes import UpdateDirection
from nfstudy.probes.landscape import evaluate_along_update
from nfstudy_experiments import _mechanisms as mech
from nfstudy_experiments._mechanisms_report import merge
from nfstudy_experiments._mechanisms_steps import partial_relative_loss

# float64 sums of a few dozen values of order 1-10: exact to ~1e-14; 1e-12 leaves room
TOL = 1e-12


def _constructed(common=3.0, offset=1.0, spatial=2.0) -> torch.Tensor:
    """[4 images, 2 channels, 2x2]: every entry ``common``, plus +-``offset`` per image (zero
    mean over images), plus a +-``spatial`` checkerboard (zero mean inside each image)."""
    per_image = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None, None, None] * offset
    board = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])[None, None] * spatial
    return common + per_image + board.expand(4, 2, 2, 2)


def test_split_second_moment_separates_shared_between_and_within_parts():
    parts = mech.split_second_moment(_constructed(3.0, 1.0, 2.0))
    assert parts["common"] == pytest.approx(9.0, abs=TOL)  # 3^2
    assert parts["between"] == pytest.approx(1.0, abs=TOL)  # the +-1 per image
    assert parts["within"] == pytest.approx(4.0, abs=TOL)  # the +-2 checkerboard
    assert parts["common"] + parts["between"] + parts["within"] == pytest.approx(parts["mean_square"], abs=TOL)


def test_split_second_moment_of_pooled_features_has_no_within_part():
    x = torch.randn(16, 5, dtype=torch.float64)
    parts = mech.split_second_moment(x)
    assert parts["within"] == 0.0
    assert parts["common"] + parts["between"] == pytest.approx(parts["mean_square"], rel=1e-12)
    # an input-independent shift moves only the common part
    shifted = mech.split_second_moment(x + 7.0)
    assert shifted["between"] == pytest.approx(parts["between"], rel=1e-12)
    assert shifted["common"] > parts["common"] + 40


def test_logit_decomposition_tells_a_shared_top_class_from_an_input_dependent_one():
    labels = torch.arange(10).repeat(2)  # 20 images, every class twice
    shared = torch.zeros(20, 10)
    shared[:, 3] = 10.0  # every image: class 3, p ~ 1
    found, grads = mech.logit_decomposition(shared, labels)
    assert found["dominant_share"] == 1.0 and found["dominant_class"] == 3
    assert found["common_top_probability"] > 0.99 and found["common_gap"] == pytest.approx(10.0)
    assert found["centred_share"] == 0.0  # centred, the logits are all equal: p = 0.1 each
    assert found["logit_spread"] == pytest.approx(0.0, abs=1e-6)
    assert grads.shape == (20, 10)
    own = torch.zeros(20, 10)
    own[torch.arange(20), labels] = 10.0  # each image its own label's class
    found, _ = mech.logit_decomposition(own, labels)
    assert found["dominant_share"] <= 0.1 and found["common_top_probability"] < 0.2
    assert found["logit_spread"] > 2.0


def test_scale_convs_scales_every_conv_and_not_the_classifier():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 3))
    before = [p.detach().clone() for p in model.parameters()]
    mech.scale_convs(model, 0.5)
    assert torch.equal(model[0].weight, before[0] * 0.5)  # one multiply by a power of 2: exact
    assert torch.equal(model[0].bias, before[1]) and torch.equal(model[2].weight, before[2])


def test_scaled_keeps_the_paper_s_layers_at_depth_110_and_moves_them_with_depth():
    assert mech.scaled(mech.FIG2_LAYERS, 110) == mech.FIG2_LAYERS
    assert mech.scaled((55, 110), 56) == (28, 56)


def test_partial_relative_loss_moves_only_the_chosen_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
    images, labels = torch.randn(8, 3, 8, 8), torch.arange(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    update = UpdateDirection.compute(model, optimizer, images, labels)
    before = [p.detach().clone() for p in model.parameters()]
    # nothing moved: the loss before (a second forward of the same model: float32, ~1e-6)
    assert partial_relative_loss(model, update, images, labels, 0.5, lambda n: False) == pytest.approx(1.0, rel=1e-5)
    # everything moved: the full update's relative loss, the same evaluation path (bitwise)
    full = float(evaluate_along_update(model, update, images, labels, [0.5], chunk_size=1)[0][0]) / float(update.loss)
    assert partial_relative_loss(model, update, images, labels, 0.5, lambda n: True) == full
    # one part only: neither the whole update nor none of it
    conv_only = partial_relative_loss(model, update, images, labels, 0.5, lambda n: n.startswith("0."))
    assert abs(conv_only - full) > 1e-4 and abs(conv_only - 1.0) > 1e-4
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is left as it was


def test_merge_replaces_a_dataset_s_rows_and_keeps_the_others():
    old = pd.DataFrame({"dataset": ["digits", "fashion"], "value": [1, 2]})
    new = pd.DataFrame({"dataset": ["fashion"], "value": [3]})
    merged = merge(old, new, "fig2_gradients.csv")
    assert sorted(zip(merged["dataset"], merged["value"])) == [("digits", 1), ("fashion", 3)]
    assert len(merge(old, new, "runs.csv")) == 3  # the run log is appended to
