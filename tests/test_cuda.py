"""What only a CUDA device can check: the engine's GPU paths against their CPU / fp32 twins.

Skipped without CUDA (marker ``cuda``); ``make gpu-check`` runs them on a GPU machine.
TF32 is off in these tests where they compare to the CPU: with it, cuDNN's convolutions
round their inputs to 10 mantissa bits and the comparisons would measure that instead.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from _numerics import agc_rtol, forward_rtol

from nfstudy.clip import GradientClipper
from nfstudy.data import load_dataset
from nfstudy.models import create_model
from nfstudy.probes.landscape import relative_loss_along_update
from nfstudy.train import TrainConfig, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check on a GPU machine)"),
]
CUDA = torch.device("cuda")


@contextlib.contextmanager
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", train_size=1280, test_size=256, image_size=32)


def test_bf16_autocast_and_channels_last_train_like_fp32(synthetic):
    """Two epochs of a ResNet-20 (20 steps): bf16 autocast with channels_last (``precision=
    "bf16"``, opt-in) against fp32 in the default layout (the default, ``"auto"``), from the
    same weights and batches. bf16 keeps 8 mantissa bits, so the losses agree to about 1e-2,
    not bit for bit."""
    results = {}
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        model = create_model("resnet20", "bn")
        config = TrainConfig(epochs=2, batch_size=128, lr=0.05, precision=precision, channels_last=channels_last, eval_batch_size=256)
        with no_tf32():
            results[precision] = train(model, synthetic, config, seed=0, device=CUDA)
    fp32, bf16 = results["fp32"], results["bf16"]
    assert fp32.status == bf16.status == "completed" and fp32.steps == bf16.steps == 20
    assert bf16.initial_loss == pytest.approx(fp32.initial_loss, rel=2e-2)
    for column in ("train_loss", "test_loss"):
        assert bf16.history[column].to_numpy() == pytest.approx(fp32.history[column].to_numpy(), rel=0.1, abs=0.05)
    assert abs(bf16.history["train_accuracy"].iloc[-1] - fp32.history["train_accuracy"].iloc[-1]) < 0.1


def test_the_default_precision_trains_in_fp32_and_the_default_layout_on_cuda(synthetic):
    """``precision="auto"`` (the default) is fp32 on CUDA too: no autocast, and the weights
    stay in the default layout (bf16's channels_last only comes with ``precision="bf16"``)."""
    torch.manual_seed(0)
    model = create_model("resnet8", "bn")
    result = train(model, synthetic, TrainConfig(epochs=1, batch_size=128, lr=0.05, eval_batch_size=256), seed=0, device=CUDA)
    assert result.status == "completed"
    conv = model.conv1.weight
    assert conv.is_cuda and conv.dtype == torch.float32 and conv.is_contiguous()
    assert not conv.is_contiguous(memory_format=torch.channels_last)  # a 16x3x3x3 filter bank: the two layouts differ


def test_the_device_resident_loader_gives_the_cpu_batches_on_cuda(synthetic):
    """Same seed, same epoch: the same images (crop, flip and normalisation done on the
    GPU) and labels as the CPU loader, and channels_last when asked."""
    kwargs = {"augment": True, "shuffle": True, "seed": 3, "drop_last": True}
    cpu = synthetic.loader("train", 256, device="cpu", **kwargs)
    gpu = synthetic.loader("train", 256, device=CUDA, channels_last=True, **kwargs)
    for epoch in (0, 1):
        n = 0
        for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(cpu.epoch_batches(epoch), gpu.epoch_batches(epoch), strict=True):
            assert x_gpu.device.type == "cuda" and x_gpu.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(y_gpu.cpu(), y_cpu)
            torch.testing.assert_close(x_gpu.cpu(), x_cpu, rtol=1e-6, atol=1e-6)
            n += 1
        assert n == len(cpu) == 5


def _model_with_gradients(device):
    torch.manual_seed(0)
    model = create_model("resnet8", "nf").to(device)
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(device)
    y = torch.arange(32, device=device) % 10
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return model


def test_agc_on_cuda_clips_as_on_the_cpu():
    """AGC's vectorised path (grouped unit norms, one clip factor per unit) on CUDA gives the
    CPU's gradients; the order of the norms' reductions differs, hence tests/_numerics.py's
    agc_rtol of a ResNet-8's largest unit (576 values): 6.9e-5."""
    with no_tf32():
        cpu = _model_with_gradients("cpu")
        gpu = copy.deepcopy(cpu).to(CUDA)
    for p_cpu, p_gpu in zip(cpu.parameters(), gpu.parameters(), strict=True):  # deepcopy leaves .grad behind
        p_gpu.grad = None if p_cpu.grad is None else p_cpu.grad.to(CUDA, copy=True)
    clip = GradientClipper("adaptive", 0.01)
    before = {n: p.grad.clone() for n, p in cpu.named_parameters() if p.grad is not None}
    clip(cpu)
    clip(gpu)
    changed = 0
    for (name, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        if p_cpu.grad is None:  # a parameter this forward pass did not use
            assert p_gpu.grad is None
            continue
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=agc_rtol(576), atol=1e-9, msg=name)
        changed += not torch.equal(p_cpu.grad, before[name])
    assert changed > 0  # lambda 0.01 clips something: the comparison is not of untouched gradients


def test_the_landscape_probes_chunked_path_on_cuda_matches_one_step_size_at_a_time_and_the_cpu():
    """On CUDA the probe evaluates 16 step sizes per vmapped forward pass by default; it must
    give what one step size at a time gives there, and what the CPU gives."""
    steps = torch.logspace(-4, 0.5, 21).tolist()
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.arange(64) % 10
    probes = {}
    with no_tf32():
        for device, chunk in (("cpu", 1), ("cuda", 1), ("cuda", None)):
            torch.manual_seed(0)
            model = create_model("resnet8", "bn").to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
            probes[device, chunk] = relative_loss_along_update(model, optimizer, x.to(device), y.to(device), steps, chunk_size=chunk)
    reference = probes["cpu", 1].relative_loss
    assert len(reference) == 21 and (reference[0] == pytest.approx(1.0, abs=1e-2))
    # Chunked (vmapped) or not: a ratio of two forward passes of 16 reductions of <= 16384 terms
    # (BatchNorm over 64 16x16 images) summed in other orders (tests/_numerics.py): 2.4e-4.
    assert probes["cuda", None].relative_loss == pytest.approx(probes["cuda", 1].relative_loss, rel=2 * forward_rtol(16, 16384))
    assert probes["cuda", None].relative_loss == pytest.approx(reference, rel=1e-3)
