"""The activation probe: its numbers, its one sync per forward pass, its hooks, its errors."""

import numpy as np
import pytest
import torch
from torch import nn

from nfstudy.models import cifar_resnet, weight_layers
from nfstudy.probes import CHANNEL_STATISTICS, LAYER_STATISTICS, ActivationProbe, activation_statistics, channel_moments


def _all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _direct_outputs(model, x, modules):
    """Each module's output as the next module saw it, copied at once (an in-place ReLU
    follows the conv in the no-BN network), in float64."""
    found = {}

    def keep(name):
        def hook(module, args, output):  # returns None: the output flows on unchanged
            found[name] = output.detach().double().clone()

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


# The probe (float32 sums over planes of up to 32 x 32 values, finished in float64) against
# float64 moments of the same outputs: a float32 sum of n = 1024 values rounds like a random
# walk, sqrt(n) x U32 = 1.9e-6 relative to the sum of magnitudes (the test's moments below:
# 1e-4, the mean's atol scaled by its largest value, for channels whose mean is small beside
# their spread); the variance E[x^2] - mean^2 loses E[x^2] / var more (ReLU outputs: < 10),
# the squared mean twice the mean's relative error (1e-3, with its own scaled atol).
@pytest.mark.numerics
@pytest.mark.parametrize("norm", ["bn", "none", "nf"])
def test_weight_layer_statistics_equal_a_direct_computation(norm):
    torch.manual_seed(0)
    model = cifar_resnet(20, norm, skip_gain_init=1.0) if norm == "nf" else cifar_resnet(20, norm)
    x = torch.randn(6, 3, 32, 32)
    with ActivationProbe(model, "weights", network=norm) as probe, torch.no_grad():
        model(x)
    layers = weight_layers(model)
    direct = _direct_outputs(model, x, {w.depth: w.module for w in layers})
    per_channel = probe.channel_frame()
    summary = probe.frame()
    assert set(summary["statistic"]) == set(LAYER_STATISTICS) and set(per_channel["statistic"]) == set(CHANNEL_STATISTICS)
    assert (summary["network"] == norm).all() and (summary["forward"] == 0).all()
    for depth, out in direct.items():
        dims = [0, *range(2, out.dim())]
        mean, var = out.mean(dims).numpy(), out.var(dims, unbiased=False).numpy()
        got = per_channel[per_channel["depth"] == depth].pivot(index="channel", columns="statistic", values="value")
        np.testing.assert_allclose(got["mean"], mean, rtol=1e-4, atol=1e-6 * np.abs(mean).max())
        np.testing.assert_allclose(got["var"], var, rtol=1e-4)
        np.testing.assert_allclose(got["std"], np.sqrt(var), rtol=1e-4)
        np.testing.assert_allclose(got["sq_mean"], mean**2, rtol=1e-3, atol=1e-6 * (mean**2).max())
        layer = summary[summary["depth"] == depth].set_index("statistic")["value"]
        assert layer["avg_channel_abs_mean"] == pytest.approx(np.abs(mean).mean(), rel=1e-4)
        assert layer["avg_channel_std"] == pytest.approx(np.sqrt(var).mean(), rel=1e-4)
        assert layer["avg_channel_var"] == pytest.approx(var.mean(), rel=1e-4)
        assert layer["avg_channel_sq_mean"] == pytest.approx((mean**2).mean(), rel=1e-3)
    assert sorted(summary["depth"].unique()) == list(range(1, 21))  # the fc layer (N x C) included


@pytest.mark.numerics
def test_block_statistics_cover_the_stem_blocks_and_residual_branches():  # tolerances as above
    torch.manual_seed(0)
    model = cifar_resnet(20, "nf", skip_gain_init=1.0)
    x = torch.randn(8, 3, 32, 32)
    with ActivationProbe(model, "blocks") as probe, torch.no_grad():
        model(x)
    frame = probe.frame()
    blocks = dict(model.blocks())
    names = dict(frame.drop_duplicates("depth")[["depth", "name"]].to_numpy())
    assert names == {0: "stem", **{i: n for i, n in enumerate(blocks, start=1)}}
    modules = {"stem": model.conv1, **blocks, **{f"{n}.branch": b.branch for n, b in blocks.items()}}
    direct = _direct_outputs(model, x, modules)  # NF's stem is conv1 itself: the first block's input
    for depth, name in names.items():
        got = frame[frame["depth"] == depth].set_index("statistic")["value"]
        out = direct[name]
        assert got["avg_channel_var"] == pytest.approx(out.var((0, 2, 3), unbiased=False).mean().item(), rel=1e-4)
        assert got["avg_channel_sq_mean"] == pytest.approx((out.mean((0, 2, 3)) ** 2).mean().item(), rel=1e-3, abs=1e-9)
        if depth == 0:
            assert "branch_avg_channel_var" not in got.index
        else:
            branch = direct[f"{name}.branch"]
            assert got["branch_avg_channel_var"] == pytest.approx(branch.var((0, 2, 3), unbiased=False).mean().item(), rel=1e-4)


def test_bn_branch_variance_is_one_in_train_mode():
    """A BN block's branch ends in BatchNorm (gamma 1, beta 0): unit variance per channel."""
    torch.manual_seed(0)
    frame = activation_statistics(cifar_resnet(20, "bn"), torch.randn(16, 3, 32, 32), "blocks")
    branch = frame[frame["statistic"] == "branch_avg_channel_var"]["value"]
    assert len(branch) == 9
    np.testing.assert_allclose(branch, 1.0, atol=2e-3)  # var / (var + eps)


def test_one_host_transfer_per_forward_pass_and_none_per_layer(monkeypatch):
    torch.manual_seed(0)
    model = cifar_resnet(20, "none")
    x = torch.randn(4, 3, 32, 32)
    calls = {"cpu": 0, "item": 0, "tolist": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    seen_during_forward = []
    with ActivationProbe(model, "weights") as probe, torch.no_grad():
        # The last layer's hook runs after the probe's: nothing is on the host before the end.
        handle = model.fc.register_forward_hook(lambda *a: seen_during_forward.append(len(probe.frame())))
        for _ in range(3):
            model(x)
        handle.remove()
    assert calls == {"cpu": 3, "item": 0, "tolist": 0}  # 20 layers, 3 forward passes
    assert seen_during_forward == [0, 20 * 4, 2 * 20 * 4]
    assert probe.forwards == 3 and sorted(probe.frame()["forward"].unique()) == [0, 1, 2]


def test_hooks_are_removed_after_an_exception_inside_the_block():
    torch.manual_seed(0)
    model = cifar_resnet(20, "bn")
    before = _all_hooks(model)

    def explode(module, args):
        raise RuntimeError("boom in layer2")

    bomb = model.layer2.register_forward_pre_hook(explode)
    with pytest.raises(RuntimeError, match="boom in layer2"):
        with ActivationProbe(model, "blocks") as probe:
            assert _all_hooks(model) > before + 1
            model(torch.randn(2, 3, 32, 32))
    bomb.remove()
    assert _all_hooks(model) == before == 0
    assert probe.forwards == 0 and probe.frame().empty  # the failed forward left no half record


def test_a_failed_forward_leaves_nothing_behind_for_the_next_one():
    torch.manual_seed(0)
    model = cifar_resnet(20, "none")
    x = torch.randn(2, 3, 32, 32)
    fail = {"on": True}

    def maybe_explode(module, args):
        if fail["on"]:
            raise RuntimeError("boom")

    bomb = model.layer3.register_forward_pre_hook(maybe_explode)
    with ActivationProbe(model, "weights") as probe, torch.no_grad():
        with pytest.raises(RuntimeError):
            model(x)  # stage 1 and 2 were measured, then the pass died
        fail["on"] = False
        model(x)
    bomb.remove()
    frame = probe.frame()
    assert probe.forwards == 1 and (frame["forward"] == 0).all()
    assert frame.groupby("depth").size().eq(4).all() and frame["depth"].nunique() == 20


def test_unknown_layers_are_errors_that_list_what_exists():
    model = cifar_resnet(20, "bn")
    with pytest.raises(IndexError, match=r"layers? 0, 21 do not exist .* weight-layer depths 1\.\.20 \(conv1 \.\.\. fc\).*'blocks'"):
        ActivationProbe(model, [5, 0, 21])
    with pytest.raises(
        ValueError, match=r"no module named .layer1\.0\.branch\.conv3. \(did you mean layer1\.0\.branch\.conv2, layer1\.0\.branch\.conv1"
    ):
        ActivationProbe(model, ["layer1.0.branch.conv3"])
    with pytest.raises(
        ValueError, match=r"unknown layer selection 'block': choose .*'blocks' \(9 blocks: layer1\.0 \.\.\. layer3\.2\), 'weights'"
    ):
        ActivationProbe(model, "block")
    with pytest.raises(ValueError, match="has no residual blocks"):
        ActivationProbe(nn.Sequential(nn.Conv2d(3, 4, 3)), "blocks")
    probe = ActivationProbe(model, [2, 5])
    with pytest.raises(IndexError, match=r"not probed: this probe measured depths \[2, 5\]"):
        probe.channel_frame([3])
    assert _all_hooks(model) == 0  # a probe hooks nothing until its `with` block


def test_named_modules_and_channel_frame_for_chosen_depths():
    torch.manual_seed(0)
    model = cifar_resnet(20, "none")
    with ActivationProbe(model, ["layer2.0.branch.conv1", "fc"]) as probe, torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
        model(torch.randn(3, 3, 32, 32))
    channels = probe.channel_frame([1])
    assert channels["name"].unique().tolist() == ["layer2.0.branch.conv1"]
    assert len(channels) == 2 * 32 * len(CHANNEL_STATISTICS)  # 2 passes x 32 channels x 4 statistics
    assert probe.channel_frame([2])["channel"].nunique() == 10  # the logits' 10 "channels"


def test_activation_statistics_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = cifar_resnet(20, "bn").eval()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    activation_statistics(model, torch.randn(4, 3, 32, 32), [3])
    assert not model.training
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert _all_hooks(model) == 0


# Float32 moments against float64 ones. channel_moments sums each (image, channel) plane of
# 49 values, or a channels-last channel's 784, in float32, then finishes in float64. Such a
# sum rounds like a random walk, sqrt(n) x U32 = 1.7e-6 at n = 784 (the worst case, 784 x
# U32 = 4.7e-5, needs every rounding to go one way), relative to the sum of magnitudes, here
# ~1.5x the mean's (x = 2 + 3 z); E[x^2] - mean^2 magnifies the variance's error by
# E[x^2] / var = 1.4. A wrong reduction (a dim, a count, biased or not) is off by >= 1e-2.
MOMENTS_RTOL, MOMENTS_ATOL = 1e-5, 1e-6


@pytest.mark.numerics
def test_channel_moments_in_every_layout_precision_and_range():
    torch.manual_seed(0)
    x = torch.randn(16, 5, 7, 7) * 3 + 2
    ref = x.double()
    expected = torch.stack((ref.mean((0, 2, 3)), ref.var((0, 2, 3), unbiased=False)))
    moments = channel_moments(x)
    assert moments.dtype == torch.float64 and moments.shape == (2, 5)
    torch.testing.assert_close(moments, expected, rtol=MOMENTS_RTOL, atol=MOMENTS_ATOL)
    # channels-last memory (reduced over rows instead of planes) and half precision give the same numbers
    torch.testing.assert_close(
        channel_moments(x.contiguous(memory_format=torch.channels_last)), moments, rtol=MOMENTS_RTOL, atol=MOMENTS_ATOL
    )
    half = x.to(torch.bfloat16)  # bf16 values, summed in float32 as above
    torch.testing.assert_close(
        channel_moments(half),
        torch.stack((half.double().mean((0, 2, 3)), half.double().var((0, 2, 3), unbiased=False))),
        rtol=MOMENTS_RTOL,
        atol=1e-5,
    )
    # a (N, C) output (the classifier) has channels too: its squares come from a float32 norm of
    # one value (a square and a root: within 3 U32 of x^2), so the variance is float32's, not float64's
    torch.testing.assert_close(
        channel_moments(x[:, :, 0, 0]),
        torch.stack((ref[:, :, 0, 0].mean(0), ref[:, :, 0, 0].var(0, unbiased=False))),
        rtol=MOMENTS_RTOL,
        atol=MOMENTS_ATOL,
    )
    # Huge activations: float32 partial sums overflow to inf, never to a wrong finite
    # number; float64 accumulation measures them.
    huge = x * 1e20
    assert torch.isinf(channel_moments(huge)[1]).all()
    torch.testing.assert_close(
        channel_moments(huge, torch.float64), expected * torch.tensor([[1e20], [1e40]], dtype=torch.float64), rtol=1e-5, atol=0
    )
    with pytest.raises(ValueError, match="channels on dim 1"):
        channel_moments(torch.randn(5))
