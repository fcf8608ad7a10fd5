"""The landscape probe: same numbers as the public reproduction's method, no state changed."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _numerics import forward_rtol
from _reference import relative_loss_by_trial_steps

from nfstudy.clip import GradientClipper
from nfstudy.models import cifar_resnet
from nfstudy.probes import (
    ChannelMoments,
    UpdateDirection,
    channel_moments_along_update,
    relative_loss_along_update,
    relative_loss_during_training,
)

STEPS = np.logspace(-4, 0.5, 7)
# Relative losses by two paths: the same parameters (both set p.add(d, alpha=-eta)), forward
# passes whose sums may run in other orders (vmapped over step sizes, or the model itself):
# a ResNet-8 on 12 16x16 images chains 16 reductions of at most 3072 terms (BatchNorm), and a
# ratio of two losses doubles the error: 2 x forward_rtol(16, 3072) = 1.1e-4.
# Measured: < 2e-7. A wrong step or direction moves the relative loss by > 1e-2.
RELATIVE_LOSS_RTOL = 2 * forward_rtol(16, 3072)
# Channel moments of a layer's output by two such paths: the same chain, forward_rtol(16, 3072)
# = 5.3e-5 relative; a channel mean near 0 (BatchNorm's output: 0 up to rounding) carries the
# absolute error of its O(1) activations' sums instead, hence an atol of the same size.
# Measured: < 1e-5 relative, < 5e-7 absolute.
MOMENTS_RTOL = MOMENTS_ATOL = forward_rtol(16, 3072)


def _setup(norm="bn", lr=0.05, steps_taken=1, seed=0, **sgd):
    """A small ResNet, its SGD optimizer after ``steps_taken`` updates, and a batch."""
    torch.manual_seed(seed)
    model = cifar_resnet(8, norm, "xavier_uniform", **({"skip_gain_init": 1.0} if norm == "nf" else {}))
    options = {"momentum": 0.9, "weight_decay": 5e-4, **sgd}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, **options)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(12, 3, 16, 16, generator=g), torch.randint(0, 10, (12,), generator=g)
    for _ in range(steps_taken):
        optimizer.zero_grad()
        F.cross_entropy(model(x[:8]), y[:8]).backward()
        optimizer.step()
    return model, optimizer, x, y


def _state(model, optimizer):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        copy.deepcopy(optimizer.state_dict()),
        {n: m.training for n, m in model.named_modules()},
    )


def _assert_same_state(before, after):
    (params0, grads0, opt0, modes0), (params1, grads1, opt1, modes1) = before, after
    assert params0.keys() == params1.keys()
    for k in params0:  # parameters, BN running statistics, num_batches_tracked
        assert torch.equal(params0[k], params1[k]), k
    for n in grads0:
        assert (grads0[n] is None) == (grads1[n] is None) and (grads0[n] is None or torch.equal(grads0[n], grads1[n])), n
    assert opt0["param_groups"] == opt1["param_groups"]
    assert opt0["state"].keys() == opt1["state"].keys()
    for i in opt0["state"]:
        assert torch.equal(opt0["state"][i]["momentum_buffer"], opt1["state"][i]["momentum_buffer"])
    assert modes0 == modes1


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_probing_leaves_every_bit_of_state_as_it_was(chunk_size):
    model, optimizer, x, y = _setup("bn")
    model.eval()  # a mode other than the probe's: it must come back too
    F.cross_entropy(model(x), y).backward()  # stale .grad values must survive as well
    before = _state(model, optimizer)
    probe = relative_loss_along_update(model, optimizer, x, y, STEPS, chunk_size=chunk_size)
    channel_moments_along_update(model, optimizer, x, y, [2, 5], [0.0, 0.5, 1.0], chunk_size=chunk_size)
    _assert_same_state(before, _state(model, optimizer))
    assert np.isfinite(probe.relative_loss).all()


@pytest.mark.numerics
@pytest.mark.parametrize("norm, lr, steps_taken", [("bn", 0.1, 1), ("bn", 0.1, 0), ("none", 1e-3, 2), ("nf", 0.1, 1)])
def test_same_relative_losses_as_the_reproductions_trial_steps(tmp_path, norm, lr, steps_taken):
    model, optimizer, x, y = _setup(norm, lr, steps_taken)
    steps = np.logspace(-5.5, 0.5, 9)
    probe = relative_loss_along_update(model, optimizer, x, y, steps)
    reference = relative_loss_by_trial_steps(model, optimizer, x, y, steps, tmp_path)
    both = np.isfinite(reference) & np.isfinite(probe.relative_loss)
    assert both.sum() >= 6
    np.testing.assert_allclose(probe.relative_loss[both], reference[both], rtol=RELATIVE_LOSS_RTOL)
    assert not (probe.relative_loss[both] == 1.0).all()  # the steps really moved the loss


# Bitwise, though two code paths: the probe computes the direction with the very operations,
# in the very order, of torch.optim.SGD's step (add, mul, add with alpha), on the gradients
# of the same backward pass: the same roundings on any CPU. The numerics pass checks that.
@pytest.mark.numerics
@pytest.mark.parametrize("sgd", [{}, {"nesterov": True}, {"dampening": 0.3}, {"weight_decay": 0.0}, {"maximize": True}])
def test_the_full_step_is_exactly_what_optimizer_step_does(sgd):
    model, optimizer, x, y = _setup("nf", 0.05, 2, **sgd)
    update = UpdateDirection.compute(model, optimizer, x, y)
    predicted = update.params_at(0.05)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    params = dict(model.named_parameters())
    assert set(predicted) == set(params)
    for name, value in predicted.items():
        assert torch.equal(value, params[name]), name


@pytest.mark.numerics  # bitwise as above, the same clipping on the same gradients
@pytest.mark.parametrize("norm", ["none", "nf"])
def test_with_clipping_the_direction_is_the_clipped_optimizer_step(norm):
    clip = GradientClipper("adaptive", 0.01)
    model, optimizer, x, y = _setup(norm, 0.05, 0)
    for _ in range(2):  # momentum buffers made of clipped gradients, as in clipped training
        optimizer.zero_grad()
        F.cross_entropy(model(x[:8]), y[:8]).backward()
        clip(model)
        optimizer.step()
    F.cross_entropy(model(x), y).backward()  # stale .grad values must survive the probe
    before = _state(model, optimizer)
    clipped = UpdateDirection.compute(model, optimizer, x, y, clip=clip)
    plain = UpdateDirection.compute(model, optimizer, x, y)
    probe = relative_loss_along_update(model, optimizer, x, y, STEPS, clip=clip)
    _assert_same_state(before, _state(model, optimizer))
    predicted = clipped.params_at(0.05)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    clip(model)
    optimizer.step()
    for name, value in model.named_parameters():
        assert torch.equal(predicted[name], value), name
    # AGC changed the step wherever it clipped, and left the classifier's weight alone.
    same = {n for n, a, b in zip(plain.names, plain.directions, clipped.directions) if torch.equal(a, b)}
    assert "fc.weight" in same and len(same) < len(plain.names) / 2
    assert probe.update_norm == pytest.approx(float(clipped.norm())) and probe.update_norm < float(plain.norm())


def test_divergence_is_recorded_not_raised():
    model, optimizer, x, y = _setup("none", 1e-3, 1)
    steps = np.logspace(-5, 12, 18)
    probe = relative_loss_along_update(model, optimizer, x, y, steps)
    assert not probe.diverged[0] and probe.relative_loss[0] < 1.0
    assert probe.diverged[-1] and not np.isfinite(probe.loss_after[-1])  # the loss overflowed
    finite_above = np.isfinite(probe.relative_loss) & (probe.relative_loss > 1e3)
    assert (probe.diverged == (~np.isfinite(probe.relative_loss) | finite_above)).all()
    frame = probe.to_frame()
    assert frame.columns.tolist() == ["step_size", "loss_before", "loss_after", "relative_loss", "diverged", "update_norm"]
    assert frame["diverged"].dtype == bool and len(frame) == len(steps)


@pytest.mark.numerics
@pytest.mark.parametrize("norm", ["bn", "none", "nf"])
def test_batched_step_sizes_equal_one_at_a_time(norm):
    model, optimizer, x, y = _setup(norm, 0.01, 1)
    sequential = relative_loss_along_update(model, optimizer, x, y, STEPS, chunk_size=1)
    batched = relative_loss_along_update(model, optimizer, x, y, STEPS, chunk_size=4)  # chunks of 4 and 3
    np.testing.assert_allclose(batched.relative_loss, sequential.relative_loss, rtol=RELATIVE_LOSS_RTOL)
    assert batched.loss_before == sequential.loss_before  # the same path: the update's own forward pass
    fractions = [0.0, 0.25, 0.5, 1.0]
    one = channel_moments_along_update(model, optimizer, x, y, [2, 8], fractions, chunk_size=1)
    all_ = channel_moments_along_update(model, optimizer, x, y, [2, 8], fractions, chunk_size=4)
    for a, b in zip(one, all_):
        np.testing.assert_allclose(
            b.select_dtypes("number").to_numpy(), a.select_dtypes("number").to_numpy(), rtol=MOMENTS_RTOL, atol=MOMENTS_ATOL
        )


@pytest.mark.numerics
def test_channel_moments_along_the_update_match_a_real_step():
    model, optimizer, x, y = _setup("none", 0.05, 1)
    moments, losses = channel_moments_along_update(model, optimizer, x, y, [3, 8], [0.0, 1.0])
    assert moments.groupby(["fraction", "layer"]).size().to_dict() == {(0.0, 3): 16, (0.0, 8): 10, (1.0, 3): 16, (1.0, 8): 10}
    assert losses["relative_loss"].iloc[0] == 1.0 and losses["step_size"].tolist() == [0.0, 0.05]

    def direct(layer):  # the layer's output, reduced by hand
        seen = {}

        def keep(module, inputs, output):
            seen["out"] = output.detach().double().clone()

        handle = model.layer(layer).register_forward_hook(keep)
        loss = F.cross_entropy(model(x), y)
        handle.remove()
        out = seen["out"]
        dims = [0, 2, 3] if out.dim() == 4 else [0]
        return out.mean(dims), out.var(dims, unbiased=False), float(loss.detach())

    model.train()
    mean0, var0, loss0 = direct(3)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    mean1, var1, loss1 = direct(3)
    logits_mean1, logits_var1, _ = direct(8)
    got = moments.set_index(["fraction", "layer", "channel"]).sort_index()
    # The probe's float32 sums against float64 ones of the real step's outputs: tolerances as above.
    np.testing.assert_allclose(got.loc[(0.0, 3), "mean"], mean0.numpy(), rtol=MOMENTS_RTOL, atol=MOMENTS_ATOL)
    np.testing.assert_allclose(got.loc[(0.0, 3), "variance"], var0.numpy(), rtol=MOMENTS_RTOL)
    np.testing.assert_allclose(got.loc[(1.0, 3), "variance"], var1.numpy(), rtol=MOMENTS_RTOL)
    np.testing.assert_allclose(got.loc[(1.0, 8), "mean"], logits_mean1.numpy(), rtol=MOMENTS_RTOL, atol=MOMENTS_ATOL)
    assert losses["loss"].tolist() == pytest.approx([loss0, loss1], rel=forward_rtol(16, 3072))  # one loss each


@pytest.mark.parametrize("clip", [None, GradientClipper("adaptive", 0.01)], ids=["plain", "agc"])
def test_probing_during_training_does_not_change_the_training_run(clip):
    model_a, optimizer_a, _, _ = _setup("bn", 0.1, 0)
    model_b, optimizer_b, _, _ = _setup("bn", 0.1, 0)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(5)]
    table = relative_loss_during_training(model_a, optimizer_a, batches, [1, 3], STEPS, clip=clip)
    assert table["batch"].tolist() == [1] * len(STEPS) + [3] * len(STEPS)
    for images, labels in batches[:3]:  # the same three updates, without probing
        optimizer_b.zero_grad()
        F.cross_entropy(model_b(images), labels).backward()
        if clip is not None:
            clip(model_b)
        optimizer_b.step()
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    # The probe at batch 3 saw the network after three updates: its loss before is model_b's loss there.
    with torch.no_grad():
        expected = float(F.cross_entropy(model_b.train()(batches[3][0]), batches[3][1]))
    assert table.loc[table["batch"] == 3, "loss_before"].iloc[0] == pytest.approx(expected, rel=1e-6)


def test_bad_input_names_the_fix():
    model, optimizer, x, y = _setup("bn")
    with pytest.raises(ValueError, match=r"step_sizes must all be finite and > 0, got 0, -0\.1: use e\.g\. numpy\.logspace"):
        relative_loss_along_update(model, optimizer, x, y, [0.1, 0.0, -0.1])
    with pytest.raises(ValueError, match="got nan"):
        relative_loss_along_update(model, optimizer, x, y, [float("nan")])
    with pytest.raises(ValueError, match="step_sizes is empty"):
        relative_loss_along_update(model, optimizer, x, y, [])
    with pytest.raises(ValueError, match="fractions must all be finite and >= 0"):
        channel_moments_along_update(model, optimizer, x, y, [2], [0.0, -0.5])
    with pytest.raises(IndexError, match=r"layer 80 does not exist in CifarResNet: choose weight-layer depths 1\.\.8"):
        channel_moments_along_update(model, optimizer, x, y, [2, 80], [0.0, 1.0])
    with pytest.raises(IndexError, match=r"batch 7 is beyond the epoch: it has 3 mini-batches \(0\.\.2\); probe earlier"):
        relative_loss_during_training(model, optimizer, [(x, y)] * 3, [1, 7], STEPS)
    with pytest.raises(TypeError, match="implemented for torch.optim.SGD, got Adam"):
        relative_loss_along_update(model, torch.optim.Adam(model.parameters()), x, y, STEPS)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        relative_loss_along_update(model, optimizer, x, y, STEPS, chunk_size=0)


def test_channel_moments_hooks_are_removed():
    model, _, x, _ = _setup("bn")
    with ChannelMoments(model, [1, 4]) as moments:
        model(x)
    assert set(moments.last) == {1, 4} and moments.last[4][0].shape == (32,)  # layer 4: first conv of stage 2
    assert all(not m._forward_hooks for m in model.modules())


def test_channel_moments_are_the_layers_exact_float64_moments():
    from nfstudy.models import get_layer

    model, _, x, _ = _setup("bn")
    seen = {}
    handle = get_layer(model, 4).module.register_forward_hook(lambda m, args, out: seen.update(out=out.detach().double()))
    with ChannelMoments(model, [4]) as moments:
        model(x)
    handle.remove()
    var, mean = torch.var_mean(seen["out"].transpose(0, 1).flatten(1), dim=1, correction=0)
    assert torch.equal(moments.last[4][0], mean) and torch.equal(moments.last[4][1], var)
    assert moments.names == {4: get_layer(model, 4).name}


def test_probing_gives_every_submodule_its_own_mode_back():
    from nfstudy.probes import activation_statistics

    model, optimizer, x, y = _setup("bn")
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).eval()  # frozen BN in a training model
    modes = {n: m.training for n, m in model.named_modules()}
    relative_loss_along_update(model, optimizer, x, y, STEPS[:2])
    assert {n: m.training for n, m in model.named_modules()} == modes
    activation_statistics(model, x, train=False)
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_divergence_onset_brackets_the_first_crossing_within_the_tolerance():
    from nfstudy.probes import divergence_onset

    model, optimizer, x, y = _setup("none", lr=1e-3, steps_taken=0)
    before = _state(model, optimizer)
    update = UpdateDirection.compute(model, optimizer, x, y)
    # this ResNet-8 on noise diverges near lr 10-30 (its relative loss: 0.74 at 1, 38 at 10, 1e5 at 31.6)
    found = divergence_onset(model, update, x, y, low=1e-3, high=1e3, scan_decades=0.5, tolerance_decades=0.01)
    _assert_same_state(before, _state(model, optimizer))
    assert found.outcome == "bracketed" and found.threshold == 1e3
    assert found.relative_loss > 1e3 >= found.relative_loss_below  # the property the protocol promises
    assert 0 < np.log10(found.step_size / found.step_below) <= 0.01
    search = found.search
    scan = search[search["phase"] == "scan"]
    assert not scan["diverged"].iloc[:-1].any() and scan["diverged"].iloc[-1]  # the first crossing on the grid
    assert len(search) - len(scan) == np.ceil(np.log2(0.5 / 0.01))
    # every step tried below the onset stays below the threshold; every one above passes it
    assert (search.loc[search["step_size"] < found.step_size, "relative_loss"] <= 1e3).all()
    assert search.loc[search["step_size"] >= found.step_size, "diverged"].all()
    # a real optimizer step at that lr gives the same relative loss (float32 losses: 1e-5)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for group in optimizer.param_groups:
        group["lr"] = found.step_size
    optimizer.step()
    with torch.no_grad():
        after = float(F.cross_entropy(model(x), y))
    np.testing.assert_allclose(after / found.loss_before, found.relative_loss, rtol=1e-4)


def test_divergence_onset_outside_the_range_is_an_outcome_not_a_loop():
    from nfstudy.probes import divergence_onset

    model, optimizer, x, y = _setup("none", lr=1e-3, steps_taken=0)
    update = UpdateDirection.compute(model, optimizer, x, y)
    # a range where this network cannot diverge: the scan ends, the largest step is the answer
    calm = divergence_onset(model, update, x, y, low=1e-6, high=1e-4, scan_decades=0.5)
    assert calm.outcome == "no divergence in range" and calm.step_size == 1e-4 and np.isnan(calm.step_below)
    assert calm.search["step_size"].tolist() == pytest.approx([1e-6, 10**-5.5, 1e-5, 10**-4.5, 1e-4])
    assert not calm.search["diverged"].any() and calm.relative_loss == calm.search["relative_loss"].iloc[-1] < 1e3
    # a range that starts above the onset: one evaluation, the overshoot unknown
    wild = divergence_onset(model, update, x, y, low=1e3, high=1e4)
    assert wild.outcome == "diverged at the smallest step" and wild.step_size == 1e3 and len(wild.search) == 1
    # a tolerance float64 cannot reach still ends (the bracket stops splitting)
    fine = divergence_onset(model, update, x, y, low=1e-3, high=1e3, tolerance_decades=1e-300)
    assert fine.outcome == "bracketed" and len(fine.search) < 13 + 80
    assert fine.relative_loss > 1e3 >= fine.relative_loss_below
    # nothing to compare with: no evaluation at all
    inf_loss = UpdateDirection.compute(model, optimizer, x, y, loss_fn=lambda out, t: F.cross_entropy(out, t) * float("inf"))
    lost = divergence_onset(model, inf_loss, x, y, low=1e-6, high=1.0)
    assert lost.outcome == "loss before not finite" and lost.search.empty
    with pytest.raises(ValueError, match="0 < low < high"):
        divergence_onset(model, update, x, y, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="tolerance_decades must be > 0"):
        divergence_onset(model, update, x, y, low=1e-6, high=1.0, tolerance_decades=0)
