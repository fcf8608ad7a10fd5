"""The model option: figures build the paper's CIFAR ResNet or the public reproduction's
torchvision ResNet-101 (docs/papers.md#bjorck-reproduction) through one registry, with errors that name the choices."""

import math

import pytest
import torch
from torch import nn

from nfstudy.models import MODELS, CifarResNet, build_model, weight_layers


@pytest.fixture(scope="module")
def resnet101_pair():
    """torchvision's ResNet-101 with BN and without, from the same seed."""
    nets = {}
    for norm in ("bn", "none"):
        torch.manual_seed(0)
        nets[norm] = build_model("torchvision_resnet", 101, norm, "kaiming_fan_out", num_classes=10)
    return nets


def _convs(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_resnet101_with_and_without_bn_share_every_conv_weight(resnet101_pair):
    bn, none = resnet101_pair["bn"], resnet101_pair["none"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 104
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in none.modules())
    assert len(weight_layers(bn)) == len(weight_layers(none)) == 101
    convs_bn, convs_none = _convs(bn), _convs(none)
    assert len(convs_bn) == len(convs_none) == 104  # stem, 3 x 33 block convs, 4 downsample convs
    for (name_a, a), (name_b, b) in zip(convs_bn, convs_none):
        assert name_a == name_b and torch.equal(a.weight, b.weight), name_a
    assert torch.equal(bn.fc.weight, none.fc.weight)
    # The layer names the figures report: the reproduction's "layer 55" is the middle of layer3.
    names = {k: weight_layers(none)[k - 1].name for k in (1, 4, 54, 55, 100, 101)}
    assert names == {1: "conv1", 4: "layer1.0.conv3", 54: "layer3.10.conv2", 55: "layer3.10.conv3", 100: "layer4.2.conv3", 101: "fc"}


def test_resnet101_init_is_torchvisions_kaiming_fan_out(resnet101_pair):
    """kaiming normal with fan_out: std sqrt(2 / (out_channels * k * k)). A 64 -> 256 1x1 conv
    tells it from fan_in (sqrt(2/64), 2x larger) and from xavier (sqrt(2/320), 12% smaller)."""
    model = resnet101_pair["bn"]
    block = model.layer1[0]
    assert block.conv2.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert block.conv3.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.03)
    assert model.layer3[10].conv2.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.03)
    assert block.bn3.weight.eq(1).all() and block.bn3.bias.eq(0).all()
    # The same scales as torchvision's own constructor gives.
    from nfstudy.compat import import_torchvision

    torch.manual_seed(1)
    raw = import_torchvision().models.resnet101(num_classes=10)
    for ours, theirs in ((block.conv3, raw.layer1[0].conv3), (model.layer3[10].conv2, raw.layer3[10].conv2), (model.fc, raw.fc)):
        assert ours.weight.std().item() == pytest.approx(theirs.weight.std().item(), rel=0.03)
    # init is a parameter: xavier_uniform (the reproduction's Fig 1) gives sqrt(2 / (fan_in + fan_out)).
    torch.manual_seed(0)
    xavier = build_model("torchvision_resnet", 101, "none", "xavier_uniform")
    assert xavier.layer1[0].conv3.weight.std().item() == pytest.approx(math.sqrt(2 / 320), rel=0.03)


def test_resnet101_trains_a_step_at_32x32(resnet101_pair):
    """One forward/backward on CIFAR-sized images: finite gradients for both; without BN
    the logits are already far larger (the growth with depth the figures study)."""
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    stds = {}
    for norm, model in resnet101_pair.items():
        model.zero_grad()
        out = model.train()(x)
        nn.functional.cross_entropy(out, y).backward()
        assert out.shape == (4, 10)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        stds[norm] = out.std().item()
        model.zero_grad()
    assert stds["none"] > 10 * stds["bn"]


def test_default_model_is_the_papers_cifar_resnet():
    from nfstudy_experiments import params_for
    from nfstudy_experiments._common import make_resnet

    for figure in ("fig1", "fig2", "fig3", "fig5", "fig6"):
        params = params_for(figure, "quick")
        assert params.model == "cifar_resnet", figure
    model = make_resnet(params_for("fig2", "quick", depth=20, layer=10), "none", 10)
    assert isinstance(model, CifarResNet) and model.config.depth == 20 and model.config.norm == "none"
    assert set(MODELS) == {"cifar_resnet", "torchvision_resnet"}


def test_bad_model_parameters_name_the_choices():
    from nfstudy_experiments import params_for

    with pytest.raises(ValueError, match="unknown model 'resnet101': choose one of cifar_resnet, torchvision_resnet"):
        params_for("fig2", "quick", model="resnet101")
    with pytest.raises(ValueError, match=r"depth must be one of 18, 34, 50, 101, 152 \(the public reproduction: 101\), got 110"):
        params_for("fig2", "quick", model="torchvision_resnet", series=["bn", "none"])
    # Series the model cannot build are dropped when the figure runs (tests/test_dropped_series.py);
    # with none left, the error names the norms it builds and how to choose series.
    with pytest.raises(ValueError, match=r"builds the norms bn, none only: none of the series \(ws@0.1, nf\+agc@0.1\)"):
        params_for("fig1", "quick", model="torchvision_resnet", depth=101, series=["ws@0.1", "nf+agc@0.1"])
    with pytest.raises(ValueError, match=r"none of the series \(nf\).*`python -m nfstudy list fig3`"):
        params_for("fig3", "quick", model="torchvision_resnet", depth=101, series=["nf"], learning_rates=[0.1])
    with pytest.raises(ValueError, match="depth must be 6n\\+2"):
        params_for("fig6", "quick", depth=101)
    with pytest.raises(ValueError, match="layer must be a weight layer 1..101"):
        params_for("fig2", "quick", model="torchvision_resnet", depth=101, series=["bn", "none"], layer=110)
    with pytest.raises(ValueError, match=r"layers must be weight layers 1..101 .* got \[102\]: give -p layers 6,18,30,42,54,66,78,90 "):
        params_for("fig5", "quick", model="torchvision_resnet", depth=101, series=["bn", "none"])
    with pytest.raises(ValueError, match="supports the norms bn, none only, got 'ws'"):
        build_model("torchvision_resnet", 101, "ws")
    # The figures without the option refuse it by name.
    for figure in ("fig4", "spp", "agc", "fig7"):
        with pytest.raises(ValueError, match="unknown parameter model"):
            params_for(figure, "quick", model="torchvision_resnet")
    # AGC series of a supported norm are fine (clipping works on any model).
    params = params_for("fig1", "quick", model="torchvision_resnet", depth=101, series=["bn@0.1", "none+agc@0.1"])
    assert params.model == "torchvision_resnet"


# The Bjorck reproduction's network (docs/papers.md#bjorck-reproduction): torchvision's ResNet-101, its own init (kaiming normal, fan_out)
TV = {"model": "torchvision_resnet", "depth": 101, "series": ["bn", "none"], "init": "kaiming_fan_out"}


def test_fig2_runs_on_resnet101():
    from nfstudy_experiments import fig2, params_for

    params = params_for("fig2", "quick", **TV, layer=54, batch_size=8)
    tables = fig2.run(params, seed=0, device="cpu")
    summary = tables["gradient_summary"].set_index("series")
    assert (summary["layer_name"] == "layer3.10.conv2").all()
    assert (summary["n"] == 256 * 256 * 9).all()  # a 256 -> 256 3x3 kernel
    assert summary.loc["none", "std"] > 10 * summary.loc["bn", "std"]
    assert summary.loc["none", "loss"] > 10 * summary.loc["bn", "loss"]


def test_fig5_runs_on_resnet101():
    from nfstudy_experiments import fig5, params_for

    params = params_for("fig5", "quick", **TV, layers=[4, 52, 100], networks=2, batch_size=8)
    table = fig5.run(params, seed=0, device="cpu")["activation_stats"]
    std = table[table["statistic"] == "avg_channel_std"].groupby(["series", "depth"])["value"].mean()
    assert sorted(table["depth"].unique()) == [4, 52, 100]
    assert sorted(table["layer_name"].unique()) == ["layer1.0.conv3", "layer3.9.conv3", "layer4.2.conv3"]
    growth = {s: std[s, 100] / std[s, 4] for s in ("bn", "none")}
    # Without BN the channel stds grow by orders of magnitude from layer 4 to 100; with BN
    # (the conv outputs, before their BatchNorm) they stay within a small factor.
    assert growth["none"] > 100 and growth["bn"] < 10
