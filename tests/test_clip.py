"""nfstudy.clip: hand-computed AGC, its invariants (for the definition in clip.agc and the
vectorised clip.fast alike), the head rule, agreement with torch and timm where the
definitions coincide, and the places where timm's differs."""

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from _numerics import agc_rtol
from torch import nn

from nfstudy.clip import (
    AGC_EPS,
    GradientClipper,
    adaptive_clip_grad_,
    apply_gradient_clipping,
    find_head,
    unitwise_clip,
    unitwise_norm,
)
from nfstudy.clip.agc import default_unit_dim
from nfstudy.clip.fast import foreach_adaptive_clip_grad_
from nfstudy.models import ScaledStdConv2d, cifar_resnet


def param(weight, grad, dtype=torch.float32):
    p = nn.Parameter(torch.tensor(weight, dtype=dtype) if not torch.is_tensor(weight) else weight.to(dtype).clone())
    p.grad = torch.tensor(grad, dtype=dtype) if not torch.is_tensor(grad) else grad.to(dtype).clone()
    return p


def with_gradients(model, seed=0, batch=4, size=16):
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, size, size)
    F.cross_entropy(model(x), torch.arange(batch) % 10).backward()
    return model


def clone_with_grads(model):
    """copy.deepcopy, gradients included (a Parameter's deepcopy leaves .grad behind)."""
    clone = copy.deepcopy(model)
    for a, b in zip(model.parameters(), clone.parameters()):
        b.grad = None if a.grad is None else a.grad.clone()
    return clone


@functools.cache
def _resnet8_with_gradients(norm):
    return with_gradients(cifar_resnet(8, norm, skip_gain_init=0.5))


def resnet8(norm):
    """A ResNet-8 with the gradients of one batch (computed once per session; a fresh copy)."""
    return clone_with_grads(_resnet8_with_gradients(norm))


def grads_of(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# -- the definition, by hand -------------------------------------------------------------


def test_linear_rows_by_hand():
    # Row norms: W 5 and 41, G 25 and 13. lambda = 0.5: max norms 2.5 and 20.5, so row 0
    # is scaled by 2.5 / 25 = 0.1 and row 1 is left alone.
    w = param([[3.0, 4.0], [9.0, 40.0]], [[7.0, 24.0], [5.0, 12.0]])
    apply_gradient_clipping([w], "adaptive", 0.5)
    torch.testing.assert_close(w.grad, torch.tensor([[0.7, 2.4], [5.0, 12.0]]))
    # The JAX layout (units = columns) read in PyTorch, the pitfall of some ports, gives
    # another answer: column norms W 9.487, 40.200 and G 8.602, 26.833 -> both clipped.
    w = param([[3.0, 4.0], [9.0, 40.0]], [[7.0, 24.0], [5.0, 12.0]])
    apply_gradient_clipping([w], "adaptive", 0.5, unit_dims={w: 1})
    col = torch.tensor([0.5 * math.sqrt(90) / math.sqrt(74), 0.5 * math.sqrt(1616) / math.sqrt(720)])
    torch.testing.assert_close(w.grad, torch.tensor([[7.0, 24.0], [5.0, 12.0]]) * col)


def test_vector_and_scalar_are_one_unit():
    # ||W|| = 5, ||G|| = 10, lambda = 0.1: scaled by 0.05 as a whole ([0.3, 0.4] per element).
    bias = param([3.0, 4.0], [8.0, 6.0])
    gain = param(2.0, -1.0)  # max norm 0.2: -1 -> -0.2
    apply_gradient_clipping([bias, gain], "adaptive", 0.1)
    torch.testing.assert_close(bias.grad, torch.tensor([0.4, 0.3]))
    torch.testing.assert_close(gain.grad, torch.tensor(-0.2))


def test_conv_filters_and_a_zero_filter_by_hand():
    w = torch.zeros(2, 1, 2, 2)
    w[0] = 1.0  # filter norm 2; filter 1 is zero: its norm counts as eps = 1e-3
    g = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 1e-3)])  # norms 2 and 2e-3
    conv = param(w, g)
    apply_gradient_clipping([conv], "adaptive", 0.5)
    # filter 0: max 1, scale 0.5; filter 1: max 0.5 * 1e-3, scale 5e-4 / 2e-3 = 0.25
    torch.testing.assert_close(conv.grad[0], torch.full((1, 2, 2), 0.5))
    torch.testing.assert_close(conv.grad[1], torch.full((1, 2, 2), 2.5e-4))


def test_gain_stored_as_a_column_is_one_unit():
    # NF gains are [out, 1, 1, 1]: one unit, as the official code's squeeze rule has it.
    gain = param(torch.tensor([1.0, 2.0, 2.0]).view(3, 1, 1, 1), torch.tensor([3.0, 0.0, 4.0]).view(3, 1, 1, 1))
    assert default_unit_dim(gain.shape) is None
    apply_gradient_clipping([gain], "adaptive", 0.2)  # ||W|| 3, ||G|| 5: scale 0.6 / 5
    torch.testing.assert_close(gain.grad.flatten(), torch.tensor([0.36, 0.0, 0.48]))


def test_a_zero_initialised_gain_still_learns():
    # SkipInit: the skip gain starts at 0. Its gradient is clipped to lambda * eps, not to 0.
    gain = param(0.0, 3.0)
    opt = torch.optim.SGD([gain], lr=1.0)
    apply_gradient_clipping([gain], "adaptive", 0.01)
    assert gain.grad.item() == pytest.approx(0.01 * AGC_EPS)
    opt.step()
    assert gain.item() == pytest.approx(-1e-5)


def test_the_gradient_norm_guard_acts_on_clipped_units_only():
    # lambda * eps = 1e-7 lies below the official 1e-6 guard. A gradient of norm 5e-8 is
    # under the bound and left alone (a min(1, ratio) shortcut would scale it by 0.1);
    # one of norm 5e-7 is over it and scaled by 1e-7 / max(5e-7, 1e-6) = 0.1.
    under, over = param(0.0, 5e-8), param(0.0, 5e-7)
    apply_gradient_clipping([under, over], "adaptive", 1e-4)
    assert under.grad.item() == pytest.approx(5e-8, rel=1e-6)
    assert over.grad.item() == pytest.approx(5e-8, rel=1e-6)


def test_zero_initialised_skip_gains_of_an_nf_resnet_move():
    model = with_gradients(cifar_resnet(8, "nf", skip_gain_init=0.0))
    gains = [b.skip_gain for _, b in model.blocks()]
    before = torch.stack([g.grad for g in gains])
    assert (before != 0).all()
    apply_gradient_clipping(model, "adaptive", 0.01)
    after = torch.stack([g.grad for g in gains])
    assert (after != 0).all() and (after.sign() == before.sign()).all()
    assert (after.abs() <= 0.01 * AGC_EPS * (1 + 1e-6)).all()


# -- invariants on random models ---------------------------------------------------------


def random_parameters(seed):
    """Linear, conv (grouped too), conv1d, vectors, scalars and [out,1,1,1] gains, with
    weights and gradients spread over many orders of magnitude and some exact zeros."""
    gen = torch.Generator().manual_seed(seed)

    def scale():
        return 10 ** (torch.rand((), generator=gen).item() * 10 - 7)

    shapes = [(16, 8), (16, 8), (7, 3, 3, 3), (8, 2, 3, 3), (8, 2, 3, 3), (5, 4, 3), (16,), (16,), (), (), (8, 1, 1, 1), (300, 70)]
    params = []
    for i, shape in enumerate(shapes):
        w = torch.randn(shape, generator=gen) * scale()
        g = torch.randn(shape, generator=gen) * scale()
        if i % 5 == seed % 5:
            w.zero_()  # eps must take over
        if len(shape) > 1 and i % 4 == seed % 4:
            g[0].zero_()  # a unit without gradient
        params.append(param(w, g))
    return params


# The definition applied tensor by tensor, and its vectorised optimisation.
IMPLEMENTATIONS = {"agc": adaptive_clip_grad_, "fast": foreach_adaptive_clip_grad_}
# The two reduce the units' norms in different orders (a tensor at a time, or stacked): they
# agree to tests/_numerics.py's agc_rtol of the largest unit. random_parameters: a row of the
# 300 x 70 matrix, 70 values (agc_rtol 8.7e-6); a ResNet-8: a 64 x 3 x 3 filter, 576 (6.9e-5).
RANDOM_RTOL = agc_rtol(70)
RESNET8_RTOL = agc_rtol(576)


@pytest.mark.numerics
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("seed", range(12))
def test_agc_invariants_on_random_parameters(seed, impl):
    params = random_parameters(seed)
    threshold = 10 ** (-(seed % 4) - 0.5)
    before = [p.grad.clone() for p in params]
    reference = [unitwise_clip(g, p.detach(), threshold) for p, g in zip(params, before)]
    IMPLEMENTATIONS[impl](params, threshold)
    clipped = untouched = 0
    for p, g0, ref in zip(params, before, reference):
        torch.testing.assert_close(p.grad, ref, rtol=RANDOM_RTOL, atol=0)  # == the definition
        # The invariants, in float64 of the float32 result: margins of 1e-5, above one
        # implementation's own rounding (half of RANDOM_RTOL), so that only units clearly under
        # the bound must be untouched, and those bit for bit (their factor is exactly 1).
        w64, g64, new64 = p.detach().double(), g0.double(), p.grad.double()
        max_norm = threshold * unitwise_norm(w64).clamp(min=AGC_EPS)
        g_norm, new_norm = unitwise_norm(g64), unitwise_norm(new64)
        assert (new_norm <= max_norm * (1 + 1e-5)).all()  # ||G_i|| <= lambda max(||W_i||, eps)
        kept = (g_norm < max_norm * (1 - 1e-5)).expand_as(g0)
        assert torch.equal(p.grad[kept], g0[kept])  # units under the bound untouched, bit for bit
        # clipped units keep their direction: G_i is only rescaled
        factor = torch.where(g_norm > 0, new_norm / g_norm.clamp(min=1e-300), torch.ones_like(g_norm))
        torch.testing.assert_close(new64, g64 * factor, rtol=1e-5, atol=1e-30)
        clipped += int((~kept).any())
        untouched += int(kept.any())
    assert clipped >= 3 and untouched >= 1  # both branches exercised, not vacuous


@pytest.mark.parametrize("count, length", [(1, 8), (3, 8), (1, 20000)])  # one tensor, stacked, large
def test_unit_dim_overrides_on_vectors_reach_every_path(count, length):
    # A vector with unit_dim 0 has one unit per element (timm's layout for [out, 1, 1, 1]).
    torch.manual_seed(count)
    params = [param(torch.randn(length), torch.randn(length) * 10) for _ in range(count)]
    expected = [unitwise_clip(p.grad, p.detach(), 0.1, unit_dim=0) for p in params]
    bound = [0.1 * p.detach().abs().clamp(min=AGC_EPS) for p in params]
    per_element = [torch.where(p.grad.abs() < b, p.grad, p.grad * b / p.grad.abs()) for p, b in zip(params, bound)]
    apply_gradient_clipping(params, "adaptive", 0.1, unit_dims={p: 0 for p in params})
    for p, e, by_hand in zip(params, expected, per_element):
        torch.testing.assert_close(p.grad, e)
        torch.testing.assert_close(p.grad, by_hand)


@pytest.mark.numerics
def test_float64_and_mixed_precision_parameters():
    params = random_parameters(5)
    params[0] = param(params[0].detach().double(), params[0].grad.double(), torch.float64)
    params[3] = param(params[3].detach(), params[3].grad, torch.bfloat16)
    expected = [unitwise_clip(p.grad, p.detach(), 0.03) for p in params]
    foreach_adaptive_clip_grad_(params, 0.03)
    for p, e in zip(params, expected):
        assert p.grad.dtype == e.dtype  # with a float64 tensor present all norms are float64
        # float32 norms as above; a bf16 result is rounded from them: one bf16 step (eps) apart at most
        torch.testing.assert_close(p.grad, e, rtol=max(RANDOM_RTOL, torch.finfo(p.dtype).eps), atol=0)


@pytest.mark.numerics
def test_threads_clipping_same_shaped_models_do_not_share_buffers():
    from concurrent.futures import ThreadPoolExecutor

    def run(seed):
        results = []
        for step in range(30):
            params = random_parameters(seed * 100 + step)[:-1]
            expected = [unitwise_clip(p.grad, p.detach(), 0.05) for p in params]
            foreach_adaptive_clip_grad_(params, 0.05)  # its reused buffers are per thread
            results.append(all(torch.allclose(p.grad, e, rtol=RANDOM_RTOL, atol=0) for p, e in zip(params, expected)))
        return all(results)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(4)))


@pytest.mark.numerics
@pytest.mark.parametrize("norm", ["bn", "nf"])
def test_fast_path_equals_the_definition_on_resnets(norm):
    model, by_definition = resnet8(norm), resnet8(norm)
    before = grads_of(model)
    apply_gradient_clipping(model, "adaptive", 0.01, head=None)  # clip.fast
    adaptive_clip_grad_(by_definition.parameters(), 0.01)  # clip.agc, tensor by tensor
    changed = 0
    for (name, p), q in zip(model.named_parameters(), by_definition.parameters()):
        expected = unitwise_clip(before[name], p.detach(), 0.01)
        torch.testing.assert_close(p.grad, expected, rtol=RESNET8_RTOL, atol=1e-12)
        torch.testing.assert_close(p.grad, q.grad, rtol=RESNET8_RTOL, atol=1e-12, msg=name)
        changed += int(not torch.equal(p.grad, before[name]))
    assert changed > 10


def test_kernels_do_not_grow_with_the_number_of_tensors():
    # 60 small same-shaped Linear layers: the loop launches a norm per tensor, AGC a few.
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(60)])
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        apply_gradient_clipping(model, "adaptive", 0.01, head=None)
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get("aten::linalg_vector_norm", 0) <= 4  # (weights, biases) x (W, G)
    assert counts.get("aten::_foreach_mul_", 0) == 1


# -- the head ----------------------------------------------------------------------------


def test_model_head_weight_is_unclipped_and_its_bias_clipped():
    model = resnet8("nf")
    before = grads_of(model)
    apply_gradient_clipping(model, "adaptive", 1e-4)
    assert torch.equal(model.fc.weight.grad, before["fc.weight"])
    assert not torch.equal(model.fc.bias.grad, before["fc.bias"])
    torch.testing.assert_close(model.fc.bias.grad, unitwise_clip(before["fc.bias"], model.fc.bias.detach(), 1e-4))


def test_plain_parameters_are_all_clipped():
    model = resnet8("bn")
    before = grads_of(model)
    apply_gradient_clipping(model.parameters(), "adaptive", 1e-4)
    assert not torch.equal(model.fc.weight.grad, before["fc.weight"])


class Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return x / self.value


class HeadThenScalar(nn.Module):
    """A classifier followed, in parameter order, by a learnable temperature."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 3)
        self.temperature = Temperature()

    def forward(self, x):
        return self.temperature(self.fc(torch.relu(self.body(x))))


def head_then_scalar_with_gradients():
    torch.manual_seed(0)
    model = HeadThenScalar()
    F.cross_entropy(model(torch.randn(8, 6) * 10), torch.arange(8) % 3).backward()
    return model


def test_head_is_found_by_module_not_by_parameter_order():
    model = head_then_scalar_with_gradients()
    assert find_head(model) == [model.fc]
    before = grads_of(model)
    apply_gradient_clipping(model, "adaptive", 1e-3)
    assert torch.equal(model.fc.weight.grad, before["fc.weight"])
    for name in ("fc.bias", "temperature.value", "body.weight"):
        assert not torch.equal(dict(model.named_parameters())[name].grad, before[name]), name


def test_head_rule_overrides_and_get_classifier():
    class Classifier(HeadThenScalar):
        def get_classifier(self):  # timm's convention wins over "the last Linear"
            return self.body

    model = resnet8("bn")
    for head, kept in [("fc", "fc.weight"), ("layer3.0.branch.conv2", "layer3.0.branch.conv2.weight")]:
        m = clone_with_grads(model)
        before = grads_of(m)
        apply_gradient_clipping(m, "adaptive", 1e-4, head=head)
        after = {n: p.grad for n, p in m.named_parameters()}
        assert [n for n in before if torch.equal(after[n], before[n])] == [kept]  # that weight only
    m = clone_with_grads(model)
    before = grads_of(m)
    apply_gradient_clipping(m, "adaptive", 1e-4, head=None)
    assert not torch.equal(m.fc.weight.grad, before["fc.weight"])
    m = clone_with_grads(model)
    apply_gradient_clipping(m, "adaptive", 1e-4, head=m.fc)
    torch.testing.assert_close(m.fc.weight.grad, model.fc.weight.grad)
    c = Classifier()
    assert find_head(c) == [c.body]


def test_ddp_wrapped_model_clips_like_the_model(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = cifar_resnet(8, "nf", skip_gain_init=0.5)
        wrapped = nn.parallel.DistributedDataParallel(copy.deepcopy(plain))
        assert find_head(wrapped) == [wrapped.module.fc]
        for model in (plain, wrapped):
            with_gradients(model)  # DDP averages the gradients during backward
            apply_gradient_clipping(model, "adaptive", 1e-3)
        for (name, a), b in zip(plain.named_parameters(), wrapped.module.parameters()):
            torch.testing.assert_close(b.grad, a.grad, msg=name)
    finally:
        dist.destroy_process_group()


# -- low precision and missing gradients ---------------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gradients_match_a_float32_computation(dtype, impl):
    params = [p for p in random_parameters(3) if p.dim() != 2 or p.shape[0] != 300]
    low = [param(p.detach().to(dtype).clamp(-6e4, 6e4), p.grad.to(dtype).clamp(-6e4, 6e4), dtype) for p in params]
    expected = [unitwise_clip(p.grad.float(), p.detach().float(), 0.05).to(dtype) for p in low]
    IMPLEMENTATIONS[impl](low, 0.05)
    for p, e in zip(low, expected):
        assert p.grad.dtype == dtype
        info = torch.finfo(dtype)  # float32 factors within RANDOM_RTOL, rounded to dtype: at most one step apart
        torch.testing.assert_close(p.grad, e, rtol=info.eps, atol=info.smallest_normal)


def test_fp16_norms_do_not_overflow():
    # A row of fp16 gradients whose norm (80000) exceeds fp16's range (65504).
    w = param(torch.ones(2, 4), torch.full((2, 4), 4e4), torch.float16)
    apply_gradient_clipping([w], "adaptive", 0.5)  # max norm 0.5 * 2 = 1: each element 1 / 2
    torch.testing.assert_close(w.grad, torch.full((2, 4), 0.5, dtype=torch.float16))
    apply_gradient_clipping([w], "norm", 1.0)  # total norm 1.6e5 in float32, not inf
    assert w.grad.float().norm().item() == pytest.approx(1.0, rel=1e-3)


def test_parameters_without_gradients_are_skipped():
    model = resnet8("nf")
    model.conv1.weight.grad = None
    model.fc.bias.requires_grad_(False)
    model.fc.bias.grad = None
    before = grads_of(model)
    for kind in ("adaptive", "norm", "value"):
        apply_gradient_clipping(model, kind, 1e-3)
        assert model.conv1.weight.grad is None and model.fc.bias.grad is None
    assert not torch.equal(model.layer1[0].branch.conv1.weight.grad, before["layer1.0.branch.conv1.weight"])


# -- value and norm against torch ----------------------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("threshold", [1e-3, 0.1, 1e3])
def test_value_and_norm_agree_with_torch(threshold):
    model = resnet8("bn")
    model.conv1.weight.grad = None
    for kind, torch_clip in [("value", nn.utils.clip_grad_value_), ("norm", nn.utils.clip_grad_norm_)]:
        ours, theirs = clone_with_grads(model), clone_with_grads(model)
        apply_gradient_clipping(ours, kind, threshold)
        torch_clip(theirs.parameters(), threshold)
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            if a.grad is None:
                assert b.grad is None
            else:
                # value: a clamp, exact. norm: the same operations as torch's (a float32 norm per
                # tensor, the norm of those, torch.nn.utils.clip_grads_with_norm_), so the same
                # rounding; 1e-6 = 17 U32 leaves room for a rounding or two of another order.
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0, msg=f"{kind} {name}")
    total = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    clipped = clone_with_grads(model)
    apply_gradient_clipping(clipped, "norm", threshold)
    new_total = nn.utils.get_total_norm([p.grad for p in clipped.parameters() if p.grad is not None])
    assert new_total.item() == pytest.approx(min(total.item(), threshold), rel=1e-5)


def test_norm_clipping_in_fp16_where_torch_zeroes_every_gradient():
    big = param(torch.ones(4), torch.full((4,), 4e4), torch.float16)  # norm 8e4 > 65504
    small = param(torch.ones(3), torch.full((3,), 1.0), torch.float16)
    theirs = [param(p.detach(), p.grad.clone(), torch.float16) for p in (big, small)]
    nn.utils.clip_grad_norm_(theirs, 1.0)
    assert all((p.grad == 0).all() for p in theirs)  # torch: an inf total norm, a factor of 0
    apply_gradient_clipping([big, small], "norm", 1.0)
    total = math.sqrt(4 * 4e4**2 + 3)
    torch.testing.assert_close(small.grad, torch.full((3,), 1.0 / total, dtype=torch.float16), rtol=1e-3, atol=0)
    torch.testing.assert_close(big.grad, torch.full((4,), 4e4 / total, dtype=torch.float16), rtol=1e-3, atol=0)


# -- timm: where the definitions coincide, and where they do not -----------------------------


def timm_agc():
    from timm.utils.agc import adaptive_clip_grad

    return adaptive_clip_grad


@pytest.mark.numerics
@pytest.mark.parametrize("threshold", [0.01, 0.16])
@pytest.mark.parametrize("norm", ["bn", "nf"])
def test_agrees_with_timm_where_the_definitions_coincide(norm, threshold):
    model = resnet8(norm)
    theirs = clone_with_grads(model)
    before = grads_of(model)
    # timm makes every element of an [out, 1, 1, 1] gain its own unit: say so, and they agree.
    units = {p: 0 for p in model.parameters() if p.dim() > 1 and default_unit_dim(p.shape) is None}
    assert bool(units) == (norm == "nf")
    apply_gradient_clipping(model.parameters(), "adaptive", threshold, unit_dims=units)
    timm_agc()(theirs.parameters(), clip_factor=threshold)
    changed = 0
    for (name, a), b in zip(model.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=RESNET8_RTOL, atol=1e-12, msg=name)  # two AGCs, as above
        changed += int(not torch.equal(a.grad, before[name]))
    assert changed > 10


def test_where_timm_differs_and_why():
    adaptive_clip_grad = timm_agc()
    from timm.models import model_parameters

    # 1. Layout of gains stored as [out, 1, 1, 1] (timm's own ScaledStdConv2d and ours):
    #    the official code squeezes them to a vector, one unit; timm clips each element.
    w, g = torch.tensor([1.0, 2.0, 2.0]).view(3, 1, 1, 1), torch.tensor([3.0, 0.0, 4.0]).view(3, 1, 1, 1)
    ours, theirs = param(w, g), param(w, g)
    apply_gradient_clipping([ours], "adaptive", 0.2)
    adaptive_clip_grad([theirs], 0.2)
    torch.testing.assert_close(ours.grad.flatten(), torch.tensor([0.36, 0.0, 0.48]))
    torch.testing.assert_close(theirs.grad.flatten(), torch.tensor([0.2, 0.0, 0.4]))
    assert isinstance(ScaledStdConv2d(2, 4, 3).gain, nn.Parameter) and ScaledStdConv2d(2, 4, 3).gain.shape == (4, 1, 1, 1)

    # 2. The head. timm's training script excludes it by parameter order, the last two
    #    parameters (model_parameters(exclude_head=True)): the head's weight *and bias*,
    #    or, when anything is registered after the head, the wrong tensors.
    model = head_then_scalar_with_gradients()
    before = grads_of(model)
    timm_model = clone_with_grads(model)
    adaptive_clip_grad(model_parameters(timm_model, exclude_head=True), 1e-3)
    apply_gradient_clipping(model, "adaptive", 1e-3)
    timm_grads = dict(timm_model.named_parameters())
    assert list(timm_grads)[-2:] == ["fc.bias", "temperature.value"]
    assert torch.equal(timm_grads["temperature.value"].grad, before["temperature.value"])  # timm: left alone
    assert torch.equal(timm_grads["fc.bias"].grad, before["fc.bias"])  # timm: left alone
    assert not torch.equal(timm_grads["fc.weight"].grad, before["fc.weight"])  # timm: clipped
    assert torch.equal(model.fc.weight.grad, before["fc.weight"])  # ours: the head's weight only

    # 3. fp16: timm takes norms in the gradient's dtype; a unit norm above 65504 is inf,
    #    and its gradient is multiplied by max_norm / inf = 0. Ours are float32.
    ours = param(torch.ones(2, 4), torch.full((2, 4), 4e4), torch.float16)
    theirs = param(torch.ones(2, 4), torch.full((2, 4), 4e4), torch.float16)
    apply_gradient_clipping([ours], "adaptive", 0.5)
    adaptive_clip_grad([theirs], 0.5)
    assert (theirs.grad == 0).all()
    torch.testing.assert_close(ours.grad, torch.full((2, 4), 0.5, dtype=torch.float16))


# -- engine hook and optimizers --------------------------------------------------------------


def test_clipper_object_in_a_training_loop_and_attached_to_an_optimizer():
    torch.manual_seed(0)
    base = cifar_resnet(8, "nf", skip_gain_init=0.5)
    manual, hooked = copy.deepcopy(base), copy.deepcopy(base)
    clip = GradientClipper("adaptive", 0.01)
    opt_manual = torch.optim.SGD(manual.parameters(), lr=0.1, momentum=0.9)
    opt_hooked = torch.optim.SGD(hooked.parameters(), lr=0.1, momentum=0.9)
    handle = clip.attach(opt_hooked, hooked)
    for step in range(2):
        x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(step))
        for model, opt in ((manual, opt_manual), (hooked, opt_hooked)):
            opt.zero_grad(set_to_none=True)  # fresh gradient tensors every step
            F.cross_entropy(model(x), torch.arange(4)).backward()
            if model is manual:
                raw = grads_of(model)
                clip(model)  # the training engine's hook: after backward, before step
            opt.step()
    changed = [n for n, p in manual.named_parameters() if not torch.equal(p.grad, raw[n])]
    assert len(changed) > 10 and "fc.weight" not in changed
    for (name, a), b in zip(manual.named_parameters(), hooked.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)  # the hook clipped before the step
        torch.testing.assert_close(b, a, msg=name)
    handle.remove()
    F.cross_entropy(hooked(torch.randn(4, 3, 16, 16)), torch.arange(4)).backward()
    before = grads_of(hooked)
    opt_hooked.step()
    assert all(torch.equal(p.grad, before[n]) for n, p in hooked.named_parameters())


def test_attached_clipper_clips_only_the_optimizers_parameters():
    model = resnet8("bn")
    before = grads_of(model)
    opt = torch.optim.SGD(model.layer1.parameters(), lr=0.0)
    GradientClipper("adaptive", 1e-4).attach(opt, model)
    opt.step()
    assert not torch.equal(model.layer1[0].branch.conv1.weight.grad, before["layer1.0.branch.conv1.weight"])
    assert torch.equal(model.conv1.weight.grad, before["conv1.weight"])


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"clipping_type": "agc"}, ValueError, "unknown clipping_type 'agc': choose one of value, norm, adaptive"),
        ({"clipping_threshold": 0.0}, ValueError, "clipping_threshold must be > 0"),
        ({"clipping_threshold": -0.1}, ValueError, "clipping_threshold must be > 0"),
        ({"clipping_threshold": float("nan")}, ValueError, "clipping_threshold must be > 0"),
        ({"clipping_threshold": "0.1"}, TypeError, "clipping_threshold must be a number"),
        ({"eps": 0.0}, ValueError, "eps must be > 0"),
        ({"eps": -1e-3}, ValueError, "eps must be > 0"),
        ({"head": 3}, TypeError, "head must be 'auto', None, a module or its qualified name"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, error, match):
    args = {"clipping_type": "adaptive", "clipping_threshold": 0.01, **kwargs}
    with pytest.raises(error, match=match):
        GradientClipper(**args)
    with pytest.raises(error, match=match):
        apply_gradient_clipping(nn.Linear(2, 2), **args)


def test_transposed_conv_needs_a_unit_dim():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    with pytest.raises(ValueError, match=r"0\.weight.*ConvTranspose2d.*unit_dims=\{'0\.weight': 1\}"):
        apply_gradient_clipping(model, "adaptive", 0.01)
    weight = model[0].weight
    expected = unitwise_clip(weight.grad.clone(), weight.detach(), 0.01, unit_dim=1)
    apply_gradient_clipping(model, "adaptive", 0.01, unit_dims={"0.weight": 1})
    torch.testing.assert_close(weight.grad, expected)
    assert unitwise_norm(weight.detach(), 1).shape == (1, 4, 1, 1)  # one unit per output channel


def test_bad_overrides_and_targets_name_the_fix():
    model = resnet8("bn")
    cases = [
        (dict(unit_dims={"fc.wieght": 0}), ValueError, "not a parameter of CifarResNet"),
        (dict(unit_dims={"fc.weight": 2}), ValueError, r"out of range .* shape \(10, 64\): use 0..1, or None"),
        (dict(unit_dims={"fc.weight": 0.5}), TypeError, "must be an int or None"),
        (dict(unit_dims={3: 0}), TypeError, "keys must be parameters or their names"),
        (dict(head="classifier"), ValueError, "'classifier' is not a module of CifarResNet.*Linear layers: fc"),
        (dict(head=nn.ReLU()), ValueError, "has no weight"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            apply_gradient_clipping(model, "adaptive", 0.01, **kwargs)
    params = list(model.parameters())
    with pytest.raises(ValueError, match="pass the model itself"):
        apply_gradient_clipping(params, "adaptive", 0.01, head="fc")
    with pytest.raises(ValueError, match="pass the model, or key unit_dims by parameter"):
        apply_gradient_clipping(params, "adaptive", 0.01, unit_dims={"fc.weight": 0})
    opt = torch.optim.SGD(params, lr=0.1)
    with pytest.raises(TypeError, match=r"param_groups\? use GradientClipper.attach"):
        apply_gradient_clipping(opt.param_groups, "adaptive", 0.01)
    with pytest.raises(TypeError, match="expected a model or an iterable of parameters"):
        apply_gradient_clipping(3, "norm", 0.01)
    embedding = nn.Embedding(10, 4, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        apply_gradient_clipping(embedding, "adaptive", 0.01)
