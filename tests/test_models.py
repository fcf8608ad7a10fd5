import math

import pytest
import torch
import torch.nn.functional as F
from _numerics import norm_rtol, sum_rtol
from torch import nn

from nfstudy.models import (
    INITS,
    NORMS,
    RELU_GAMMA,
    GlobalAvgPool,
    NFBlock,
    ScaledStdConv2d,
    cifar_resnet,
    create_model,
    get_layer,
    initialize,
    remove_batchnorm,
    swap_convs_for_ws,
    swap_relus_for_scaled,
    weight_layers,
)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("depth", [20, 56, 110])
def test_forward_shape_and_layer_count(norm, depth):
    torch.manual_seed(0)
    model = cifar_resnet(depth, norm, num_classes=7)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    layers = model.weight_layers()
    assert len(layers) == depth
    assert [layer.depth for layer in layers] == list(range(1, depth + 1))
    assert layers[0].name == "conv1" and layers[-1].name == "fc"
    if norm == "bn":
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == depth - 1
    else:
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_layer_55_of_resnet110_is_the_middle_conv_of_every_variant():
    names = {norm: get_layer(cifar_resnet(110, norm), 55).name for norm in NORMS}
    # stem = 1, stage 1 = layers 2..37, stage 2 starts at 38: layer 55 = block 8, conv 2
    assert set(names.values()) == {"layer2.8.branch.conv2"}


def test_layer_out_of_range_names_the_valid_range():
    model = cifar_resnet(20, "bn")
    with pytest.raises(IndexError, match=r"1\.\.20"):
        model.layer(21)
    with pytest.raises(IndexError, match=r"1\.\.20"):
        get_layer(model, 0)
    with pytest.raises(TypeError):
        get_layer(model, "5")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 21}, "6n\\+2"),
        ({"norm": "batchnorm"}, "bn, none, ws, nf"),
        ({"init": "orthogonal"}, "kaiming_fan_out, kaiming_fan_in, xavier_uniform, xavier_normal, pytorch_default"),
    ],
)
def test_bad_configuration_lists_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cifar_resnet(**{"depth": 20, **kwargs})


def test_create_model_by_name():
    assert create_model("resnet56", "nf").config.depth == 56
    with pytest.raises(ValueError, match="resnet20, resnet32, resnet44, resnet56, resnet110"):
        create_model("resnet51")
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        create_model("vgg16")


def _channel_variances(model, x):
    """Average channel variance of the input of the network and of every block output."""
    found = []
    hooks = [b.register_forward_hook(lambda m, i, o: found.append(o.var(dim=(0, 2, 3)).mean().item())) for _, b in model.blocks()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return found


def test_nf_keeps_channel_variance_order_one_while_no_bn_grows():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    none = _channel_variances(cifar_resnet(110, "none").eval(), x)
    nf = _channel_variances(cifar_resnet(110, "nf", skip_gain_init=1.0).eval(), x)
    nf_skip = _channel_variances(cifar_resnet(110, "nf").eval(), x)
    # No BN: each block roughly doubles the variance (He init keeps Var(f(x)) ~ Var(x)).
    assert none[-1] / none[0] > 1e10
    # NF: the analytic recursion Var += alpha^2 per block, reset at each stage's first block,
    # predicts 1 + 18 * 0.04 = 1.72 at the end of a stage; allow a factor 2 for the
    # finite batch and the spatial correlations of real features.
    assert max(nf) < 4.0 and min(nf) > 0.25
    assert nf[-1] == pytest.approx(1 + 18 * 0.2**2, rel=0.5)
    # SkipInit (gain 0): every block output is its shortcut, variance stays ~1.
    assert max(nf_skip) < 2.0 and min(nf_skip) > 0.25


def test_nf_betas_follow_the_analytic_variance_recursion():
    model = cifar_resnet(20, "nf")
    betas = [b.beta for _, b in model.blocks()]
    a2 = 0.2**2
    expected_var = [1.0, 1 + a2, 1 + 2 * a2, 1 + 3 * a2, 1 + a2, 1 + 2 * a2, 1 + 3 * a2, 1 + a2, 1 + 2 * a2]
    assert betas == pytest.approx([math.sqrt(v) for v in expected_var])
    blocks = [b for _, b in model.blocks()]
    assert all(isinstance(b, NFBlock) for b in blocks)
    assert [b.shortcut is not None for b in blocks] == [False, False, False, True, False, False, True, False, False]
    assert all(b.skip_gain.item() == 0.0 and b.skip_gain.requires_grad for b in blocks)


def test_scaled_relu_preserves_unit_variance():
    torch.manual_seed(0)
    z = torch.randn(2_000_000)
    y = torch.relu(z) * RELU_GAMMA
    assert y.var().item() == pytest.approx(1.0, abs=0.01)


@pytest.mark.numerics
def test_scaled_ws_conv_matches_its_definition_and_timm():
    timm_std_conv = pytest.importorskip("timm.layers.std_conv")
    torch.manual_seed(0)
    conv = ScaledStdConv2d(8, 16, 3, padding=1, bias=False)
    nn.init.normal_(conv.gain, 1.0, 0.3)
    w = conv.weight
    fan_in = w[0].numel()
    expected = conv.gain * (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(fan_in * w.var((1, 2, 3), unbiased=False, keepdim=True))
    # Standardised weights by two computations agree to the mean's and the variance's rounding
    # over a filter's 72 values (tests/_numerics.py): norm_rtol(72) = 2.2e-6 of |w_hat| <= 0.5.
    rtol = norm_rtol(fan_in) + sum_rtol(fan_in)
    assert torch.allclose(conv.standardized_weight(), expected, rtol=rtol, atol=rtol * expected.abs().max().item())
    # Each standardised filter has zero mean and squared norm gain^2.
    ws = conv.standardized_weight().detach()
    assert ws.mean((1, 2, 3)).abs().max() < 1e-6
    assert torch.allclose(ws.pow(2).sum((1, 2, 3)), conv.gain.detach().flatten() ** 2, rtol=1e-4)
    # timm's ScaledStdConv2d (gamma = 1) agrees where eps is negligible against N * var.
    ref = timm_std_conv.ScaledStdConv2d(8, 16, 3, padding=1, bias=False, gamma=1.0, eps=1e-12)
    with torch.no_grad():
        ref.weight.copy_(conv.weight)
        ref.gain.copy_(conv.gain)
    x = torch.randn(4, 8, 10, 10)
    # conv2d on weights that differ by <= rtol of each filter's norm (the gain): an output moves by
    # <= rtol x gain x the norm of its 72 inputs (Cauchy-Schwarz), and each conv2d's own sum of 72
    # products rounds by <= sum_rtol(72) x gain x that norm.
    patch_norm = F.unfold(x, 3, padding=1).norm(dim=1).max().item()
    bound = (rtol + 2 * sum_rtol(fan_in)) * conv.gain.abs().max().item() * patch_norm
    assert torch.allclose(conv(x), ref(x), rtol=0, atol=bound)


def test_scaled_ws_differs_from_timm_only_in_where_eps_goes():
    # Official NF code guards with max(N * var, 1e-4); timm adds eps inside the root:
    # for a (near-)constant filter ours divides by sqrt(1e-4), timm's by sqrt(N * eps).
    timm_std_conv = pytest.importorskip("timm.layers.std_conv")
    conv = ScaledStdConv2d(1, 1, 3, bias=False)
    ref = timm_std_conv.ScaledStdConv2d(1, 1, 3, bias=False, gamma=1.0, eps=1e-4)
    with torch.no_grad():
        conv.weight.fill_(0.5)
        conv.weight[0, 0, 0, 0] += 1e-4
        ref.weight.copy_(conv.weight)
    x = torch.randn(1, 1, 3, 3)
    with torch.no_grad():
        ours, theirs = conv(x), ref(x)
        assert not torch.allclose(ours, theirs, rtol=0.1)
        # N * var = 1e-8 * 72/81 < 1e-4, so the guard applies: max |w_hat| = (1e-4 * 8/9) / sqrt(1e-4)
        assert conv.standardized_weight().abs().max().item() == pytest.approx((1e-4 * 8 / 9) / math.sqrt(1e-4), rel=1e-3)


# Weight std of each scheme on a conv of fan_in / fan_out (3x3 kernels): He's sqrt(2 / fan),
# Glorot's sqrt(2 / (fan_in + fan_out)), and PyTorch's kaiming_uniform(a=sqrt(5)):
# bound 1 / sqrt(fan_in), std 1 / sqrt(3 fan_in).
EXPECTED_STD = {
    "kaiming_fan_out": lambda fan_in, fan_out: math.sqrt(2 / fan_out),
    "kaiming_fan_in": lambda fan_in, fan_out: math.sqrt(2 / fan_in),
    "xavier_uniform": lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out)),
    "xavier_normal": lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out)),
    "pytorch_default": lambda fan_in, fan_out: 1 / math.sqrt(3 * fan_in),
}
# The largest |w| a uniform scheme can give (std * sqrt(3)); a Gaussian one exceeds it.
UNIFORM_INITS = ("xavier_uniform", "pytorch_default")


def test_every_init_has_an_expected_scale():
    assert set(EXPECTED_STD) == set(INITS)


@pytest.mark.parametrize("init", INITS)
def test_init_schemes_set_the_documented_scales(init):
    torch.manual_seed(0)
    model = cifar_resnet(20, "bn", init=init)
    conv = model.layer3[0].branch.conv2  # 64 -> 64, 3x3: fan_in = fan_out = 576
    assert conv.weight.std().item() == pytest.approx(EXPECTED_STD[init](576, 576), rel=0.05)
    first = model.layer2[0].branch.conv1  # 16 -> 32: fan_in 144, fan_out 288 tell the schemes apart
    std = EXPECTED_STD[init](144, 288)
    assert first.weight.std().item() == pytest.approx(std, rel=0.05)
    bound = std * math.sqrt(3)
    if init in UNIFORM_INITS:
        assert first.weight.abs().max().item() <= bound
    else:  # 4608 Gaussian values: some beyond sqrt(3) std (8% of them, in expectation)
        assert (first.weight.abs() > bound).float().mean().item() == pytest.approx(0.083, abs=0.02)
    bn = model.layer2[0].branch.bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_pytorch_default_is_what_torch_layers_do_on_their_own():
    """``pytorch_default`` re-draws exactly what nn.Conv2d / nn.Linear draw on construction."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, bias=False)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, bias=False))
    torch.manual_seed(0)
    initialize(model, "pytorch_default")
    assert torch.equal(model[0].weight, conv.weight)


def test_scheme_sets_a_no_bn_network_s_activation_growth():
    """Without BN the init sets how fast activations grow with depth: per block the variance
    grows by ~(1 + branch gain), the branch gain being 1 for He, 1/4 for Glorot and 1/36 for
    PyTorch's default. Over the 27 blocks of a ResNet-56 that predicts std ratios of
    (2 / 1.25) ** 13.5 ~ 570 (He / Glorot) and (1.25 / 1.028) ** 13.5 ~ 14 (Glorot / PyTorch)
    at the last block's output; the thresholds leave a factor 3-6 for a finite batch."""
    x = torch.randn(32, 3, 16, 16)
    std = {}
    for init in ("kaiming_fan_in", "xavier_uniform", "pytorch_default"):
        torch.manual_seed(0)
        model = cifar_resnet(56, "none", init=init)
        with torch.no_grad():
            std[init] = model.layer3(model.layer2(model.layer1(model.relu(model.conv1(x))))).std().item()
    assert std["kaiming_fan_in"] > 100 * std["xavier_uniform"]
    assert std["xavier_uniform"] > 5 * std["pytorch_default"]


def test_surgery_on_torchvision_resnet101():
    from nfstudy.compat import import_torchvision

    tv = import_torchvision()
    model = tv.models.resnet101(num_classes=10)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_conv = sum(type(m) is nn.Conv2d for m in model.modules())
    assert len(weight_layers(model)) == 101  # downsample convs are not on the main path
    before = weight_layers(model)[54]
    remove_batchnorm(model)
    assert n_bn == 104 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.Identity) for m in model.modules()) >= n_bn
    swap_convs_for_ws(model)
    swap_relus_for_scaled(model)
    ws = [m for m in model.modules() if isinstance(m, ScaledStdConv2d)]
    assert len(ws) == n_conv and not any(type(m) is nn.Conv2d for m in model.modules())
    after = weight_layers(model)[54]
    assert after.name == before.name and torch.equal(after.module.weight, before.module.weight)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_surgery_keeps_conv_config_and_weights():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=True)
    model = nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU())
    swap_convs_for_ws(remove_batchnorm(model))
    ws = model[0]
    assert isinstance(ws, ScaledStdConv2d) and isinstance(model[1], nn.Identity)
    assert (ws.stride, ws.padding, ws.groups) == ((2, 2), (1, 1), 2)
    assert torch.equal(ws.weight, conv.weight) and torch.equal(ws.bias, conv.bias)


def test_the_paper_init_is_one_of_the_schemes():
    from nfstudy.models import PAPER_INIT

    assert PAPER_INIT in INITS


def test_blocks_take_their_layers_as_callables():
    from nfstudy.models.resnet import NORM_LAYERS, BasicBlock, ScaledReLU

    block = BasicBlock(8, 8, 1, norm_layer=lambda c: nn.GroupNorm(2, c), act_layer=nn.GELU)
    assert isinstance(block.branch.bn1, nn.GroupNorm) and isinstance(block.relu, nn.GELU)
    x = torch.randn(2, 8, 4, 4)
    assert block(x).shape == x.shape
    # Each norm's network is built from exactly the layers its table entry names.
    for norm, layers in NORM_LAYERS.items():
        model = cifar_resnet(8, norm, ws_eps=1e-3, gamma=1.5)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(isinstance(m, ScaledStdConv2d) == layers.ws for m in convs), norm
        assert all(m.eps == 1e-3 for m in convs if layers.ws), norm
        assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (layers.norm_layer is nn.BatchNorm2d), norm
        acts = [m for m in model.modules() if isinstance(m, ScaledReLU)]
        assert bool(acts) == layers.nf, norm
        assert all(m.gamma == (1.5 if layers.ws else 1.0) for m in acts), norm  # no WS: the init carries the gain


# The check below, run in this process and in one whose ATen kernels are the portable ones.
_POOL_CHECK = """
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from nfstudy.models import NORMS, cifar_resnet

def results(model, x, y):
    model.zero_grad(set_to_none=True)
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    return [out.detach()] + [p.grad for p in model.parameters()]

def fused(model, x):
    params, buffers = stack_module_state([model, model])
    return vmap(lambda p, b: functional_call(model, (p, b), (x,)))(params, buffers)

torch.manual_seed(0)
x, y = torch.randn(16, 3, 16, 16), torch.arange(16) % 10
same = True
for norm in NORMS:
    for channels_last in (False, True):
        torch.manual_seed(1)
        model = cifar_resnet(8, norm)
        xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        ours = results(model, xx, y) + [fused(model, xx)]
        model.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))  # what it replaced
        before = results(model, xx, y) + [fused(model, xx)]
        same &= all(torch.equal(a, b) for a, b in zip(ours, before, strict=True))
print("bitwise", same, torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.parametrize("capability", [None, "default"])
def test_the_global_pool_is_what_adaptive_avg_pool_computed_on_a_cpu(capability):
    """The networks pool with a mean over H and W (``GlobalAvgPool``: no ``as_strided_``,
    which vmap lacks a batching rule for) where they used ``nn.AdaptiveAvgPool2d(1)`` and
    ``flatten(1)``. On a CPU ATen computes that pooling *by* this mean, so CPU results, the
    committed gallery's included, stay bit for bit what they were: outputs, every gradient
    and the fused (vmapped) forward pass, in both memory layouts and every norm, with this
    machine's kernels and with the portable ones (``ATEN_CPU_CAPABILITY=default``)."""
    import os
    import subprocess
    import sys
    import warnings

    if capability is None:
        namespace: dict = {}
        with warnings.catch_warnings():  # the old pooling's vmap fallback warns, as the next test shows
            warnings.filterwarnings("ignore", message=".*batching rule for aten::as_strided_")
            exec(_POOL_CHECK, namespace)
        assert namespace["same"]
        return

    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _POOL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bitwise", "True", "DEFAULT"]


def test_fused_pooling_of_channels_last_activations_needs_no_vmap_fallback():
    """The reason for ``GlobalAvgPool``: vmapped over stacked runs with channels_last
    activations (the fused path on CUDA with bf16), ``adaptive_avg_pool2d`` warns that it
    falls back to a loop (``as_strided_`` has no batching rule); the mean does not."""
    import warnings

    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    model = cifar_resnet(8, "bn").to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)

    def fallback_warnings(pool: nn.Module) -> int:
        model.pool = pool
        params, buffers = stack_module_state([model, model])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vmap(lambda p, b: functional_call(model, (p, b), (x,)))(params, buffers)
        return sum("batching rule" in str(w.message) for w in caught)

    assert fallback_warnings(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))) >= 1  # the control: the old pooling falls back
    assert fallback_warnings(GlobalAvgPool()) == 0
