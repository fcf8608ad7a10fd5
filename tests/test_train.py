"""The training engine: schedule, clipping hook, divergence, checkpoints and resume, DDP."""

import json
import math
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from _numerics import FIRST_LOSS_RTOL, FUSED_ACC_IMAGES, FUSED_LOSS_RTOL
from torch.optim.optimizer import register_optimizer_step_pre_hook

from nfstudy.models import cifar_resnet
from nfstudy.train import (
    CheckpointMismatch,
    TrainConfig,
    has_plateaued,
    learning_rate,
    milestone_epochs,
    train,
)


@pytest.fixture(scope="module")
def tiny():
    """Digits at their native 8x8, a quarter of them: a ResNet-8 epoch takes ~0.1 s."""
    from nfstudy.data import load_dataset

    d = load_dataset("digits", image_size=8)
    return type(d)(d.name, d.train_images[:384], d.train_labels[:384], d.test_images[:128], d.test_labels[:128], d.classes, d.mean, d.std)


def resnet8(norm="bn", seed=0):
    torch.manual_seed(seed)
    return cifar_resnet(8, norm)


def config(**kw):
    return TrainConfig(**{"epochs": 4, "batch_size": 64, "lr": 0.05, "augment": False, **kw})


# --------------------------------------------------------------------------- schedule


def test_schedule_drops_tenfold_at_half_and_three_quarters():
    assert milestone_epochs(165) == [82, 123]  # the public reproduction's MultiStepLR([82, 123])
    lrs = [learning_rate(e, 165, 0.1) for e in range(165)]
    assert lrs[:82] == [0.1] * 82
    assert lrs[82:123] == pytest.approx([0.01] * 41, rel=1e-12)
    assert lrs[123:] == pytest.approx([0.001] * 42, rel=1e-12)
    assert [learning_rate(e, 4, 1.0, (0.5,), 0.5) for e in range(4)] == [1.0, 1.0, 0.5, 0.5]
    assert milestone_epochs(1) == [1, 1]  # a one-epoch budget never drops


def test_plateau_judges_the_last_window_against_the_best_before():
    assert not has_plateaued([3.0, 2.0, 1.5, 1.2], window=2, tol=0.01)  # 1.2 < 0.99 * 2.0
    assert has_plateaued([3.0, 1.0, 1.0, 0.995], window=2, tol=0.01)  # 0.5% better: a plateau
    assert has_plateaued([3.0, 1.0, float("nan"), float("nan")], window=2, tol=0.01)
    with pytest.raises(ValueError, match="more than 2 epochs"):
        has_plateaued([1.0, 1.0], window=2, tol=0.01)


def test_plateau_rule_doubles_the_budget_before_the_first_drop(tiny):
    # A loss still falling at the first milestone (epoch 2 of 4): twice the epochs, the drop moves to epoch 4.
    result = train(
        resnet8(),
        tiny,
        config(epochs=4, lr=0.01, extend_until_plateau=True, plateau_window=1, plateau_tol=0.0, max_extensions=1),
        device="cpu",
    )
    assert result.budget == 8 and result.epochs == 8
    assert result.history["lr"].tolist() == pytest.approx([0.01] * 4 + [0.001] * 2 + [1e-4] * 2)
    assert result.history["progress_pct"].tolist() == pytest.approx([12.5 * k for k in range(1, 9)])


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": -0.1}, "lr must be > 0"),
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"epochs": 0}, "epochs must be > 0"),
        ({"epochs": -3}, "epochs must be > 0"),
        ({"milestones": (0.5, 1.2)}, r"milestone 1.2 is outside the budget.*e.g. \(0.5, 0.75\)"),
        ({"milestones": (0.0,)}, "milestone 0.0 is outside the budget"),
        ({"milestones": (0.75, 0.5)}, "milestones must increase"),
        ({"extend_until_plateau": True, "epochs": 30}, "lower plateau_window below 15 or raise epochs"),
        ({"precision": "fp16"}, "unknown precision 'fp16': choose one of auto, fp32, bf16"),
        ({"divergence_factor": 0.5}, "divergence_factor must be > 1"),
    ],
)
def test_bad_configuration_names_the_fix(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"epochs": 10, **kw})


def test_the_default_precision_is_fp32_on_every_device_and_bf16_is_asked_for():
    """``precision="auto"`` (the default) trains in fp32 in the default layout on CUDA too (bf16
    autocast with channels_last measured slower than fp32 there: benchmarks/README.md, "GPU");
    ``"bf16"`` turns on autocast, and channels_last with it on CUDA unless set; CPU unchanged."""
    autocast_and_layout = {p: TrainConfig(epochs=1, precision=p).autocast_and_layout for p in ("auto", "fp32", "bf16")}
    assert autocast_and_layout["auto"](True) == autocast_and_layout["fp32"](True) == (False, False)
    assert autocast_and_layout["auto"](False) == autocast_and_layout["fp32"](False) == (False, False)
    assert autocast_and_layout["bf16"](True) == (True, True)
    assert autocast_and_layout["bf16"](False) == (True, False)
    assert TrainConfig(epochs=1, precision="bf16", channels_last=False).autocast_and_layout(True) == (True, False)
    assert TrainConfig(epochs=1, channels_last=True).autocast_and_layout(True) == (False, True)


def test_epochs_must_be_an_int():
    with pytest.raises(TypeError, match="epochs must be an int"):
        TrainConfig(epochs=2.5)


# --------------------------------------------------------------------------- the loop


def test_training_learns_and_reports_per_epoch(tiny, tmp_path):
    result = train(resnet8(), tiny, config(epochs=4), device="cpu", out_dir=tmp_path)
    h = result.history
    assert h.columns.tolist() == ["epoch", "step", "progress_pct", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    assert h["epoch"].tolist() == [1, 2, 3, 4] and h["step"].tolist() == [6, 12, 18, 24]
    assert h["progress_pct"].tolist() == [25.0, 50.0, 75.0, 100.0]
    assert h["lr"].tolist() == pytest.approx([0.05, 0.05, 0.005, 0.0005])
    assert result.status == "completed" and result.steps == 24 and result.diverged_step is None
    assert h["train_loss"].iloc[-1] < 0.5 * result.initial_loss  # it learns
    assert h["test_accuracy"].iloc[-1] > 0.5  # ten classes: chance is 0.1
    assert ((h[["train_accuracy", "test_accuracy"]] >= 0) & (h[["train_accuracy", "test_accuracy"]] <= 1)).all().all()
    assert result.initial_loss == pytest.approx(math.log(10), rel=0.5)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "history.csv"), h, check_dtype=False)


def test_divergence_is_recorded_at_its_exact_step_and_does_not_raise(tiny):
    runs = {every: train(resnet8("none"), tiny, config(lr=50.0, sync_every=every), device="cpu") for every in (1, 50)}
    a, b = runs[1], runs[50]
    assert a.status == "diverged" and a.diverged_step is not None and a.diverged_step <= 6
    assert (a.diverged_step, a.diverged_loss) == (b.diverged_step, b.diverged_loss)  # syncs do not change the step
    assert not math.isfinite(a.diverged_loss) or a.diverged_loss > 1000 * a.initial_loss
    assert len(a.history) == (a.diverged_step - 1) // 6  # only epochs completed before it
    assert a.summary()["status"] == "diverged" and math.isnan(a.summary()["final_test_accuracy"])
    assert a.diverged_pct == pytest.approx(100 * a.diverged_step / 24)


def test_clip_hook_sees_the_gradients_and_changes_the_step(tiny):
    calls = []

    def record_then_zero(model):  # between backward (gradients present) and step (zeroed: no update)
        grads = [p.grad for p in model.parameters()]
        calls.append(all(g is not None for g in grads) and sum(float(g.norm()) for g in grads) > 0)
        for g in grads:
            g.zero_()

    model = resnet8("nf")
    before = [p.detach().clone() for p in model.parameters()]
    result = train(model, tiny, config(epochs=2, weight_decay=0.0), device="cpu", clip=record_then_zero)
    assert len(calls) == result.steps == 12 and all(calls)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the step saw the clipped gradients

    def halve(model):
        for p in model.parameters():
            p.grad.mul_(0.5)

    plain = dict(epochs=2, weight_decay=0.0, momentum=0.0)
    halved = train(resnet8("nf"), tiny, config(lr=0.05, **plain), device="cpu", clip=halve).history
    half_lr = train(resnet8("nf"), tiny, config(lr=0.025, **plain), device="cpu").history
    cols = ["train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    # SGD: lr * (g / 2) == (lr / 2) * g, bit for bit (halving is exact in binary floating point:
    # the same products, the same roundings); 1e-6 is only a margin for another summation order.
    pd.testing.assert_frame_equal(halved[cols], half_lr[cols], rtol=1e-6)


def test_nfstudy_clip_plugs_into_the_hook(tiny):
    from nfstudy.clip import GradientClipper

    def distance_moved(clip):
        model = resnet8("nf")
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        plain = config(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0)
        result = train(model, tiny, plain, device="cpu", clip=clip)
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm()), result.steps

    clipped, steps = distance_moved(GradientClipper("norm", 1e-3))
    assert clipped <= steps * 0.1 * 1e-3 * (1 + 1e-4)  # each plain SGD step moves lr * ||g|| <= lr * 1e-3
    unclipped, _ = distance_moved(None)
    assert unclipped > 10 * steps * 0.1 * 1e-3


# --------------------------------------------------------------------------- checkpoints


class Interrupt(KeyboardInterrupt):
    pass


def test_resume_after_an_interruption_gives_the_same_history(tiny, tmp_path):
    cfg = config(epochs=6, checkpoint_every=2, augment=True)
    whole = train(resnet8(), tiny, cfg, device="cpu", out_dir=tmp_path / "whole")

    def stop_after_3(row):
        if row["epoch"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(resnet8(), tiny, cfg, device="cpu", out_dir=tmp_path / "cut", on_epoch=stop_after_3)
    assert len(pd.read_csv(tmp_path / "cut" / "history.csv")) == 3  # the log had reached epoch 3
    resumed = train(resnet8(), tiny, cfg, device="cpu", out_dir=tmp_path / "cut")
    assert resumed.resumed_from == 2  # the last checkpoint: epoch 3 is trained again
    pd.testing.assert_frame_equal(resumed.history, whole.history, check_exact=True)
    assert (tmp_path / "cut" / "history.csv").read_bytes() == (tmp_path / "whole" / "history.csv").read_bytes()
    assert all(torch.equal(p, q) for p, q in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()))
    again = train(resnet8(), tiny, cfg, device="cpu", out_dir=tmp_path / "cut")  # finished: nothing to train
    assert again.resumed_from == 6 and math.isnan(again.images_per_s)
    pd.testing.assert_frame_equal(again.history, whole.history, check_exact=True)


def test_a_diverged_run_is_not_trained_again(tiny, tmp_path):
    first = train(resnet8("none"), tiny, config(lr=50.0), device="cpu", out_dir=tmp_path)
    again = train(resnet8("none"), tiny, config(lr=50.0), device="cpu", out_dir=tmp_path)
    assert again.status == "diverged" and again.diverged_step == first.diverged_step and math.isnan(again.images_per_s)


def test_a_checkpoint_of_another_configuration_is_refused(tiny, tmp_path):
    train(resnet8(), tiny, config(epochs=1), device="cpu", out_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match=rf"lr: 0.05 there, 0.1 here.*delete {re.escape(str(tmp_path))}"):
        train(resnet8(), tiny, config(epochs=1, lr=0.1), device="cpu", out_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="model_initial_weights"):
        train(resnet8(seed=1), tiny, config(epochs=1), device="cpu", out_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="model_architecture"):
        train(resnet8("nf"), tiny, config(epochs=1), device="cpu", out_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="seed: 0 there, 3 here"):
        train(resnet8(), tiny, config(epochs=1), seed=3, device="cpu", out_dir=tmp_path)
    # Speed knobs are not part of the configuration: this resumes (and finds the run finished).
    same = train(resnet8(), tiny, config(epochs=1, checkpoint_every=7, sync_every=3), device="cpu", out_dir=tmp_path)
    assert same.resumed_from == 1


def test_an_unreadable_checkpoint_is_named(tiny, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match=r"cannot read the checkpoint .*checkpoint.pt.*delete it"):
        train(resnet8(), tiny, config(epochs=1), device="cpu", out_dir=tmp_path)


# --------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.numerics
def test_two_ddp_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """torchrun, 2 CPU processes (gloo), against the same global batch in one process.

    The model is an NF-ResNet: without BatchNorm every image's forward pass is independent
    of the others, so the two runs compute the same mathematics and differ only in the
    order of floating-point sums. (With BatchNorm, DDP normalises over each rank's half
    batch, a different computation; SyncBatchNorm, its fix, has no CPU kernel.)
    """
    args = [
        "--model",
        "resnet8",
        "--norm",
        "nf",
        "--dataset",
        "digits",
        "--image-size",
        "8",
        "--epochs",
        "2",
        "--lr",
        "0.1",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--checkpoint-every",
        "1",
    ]
    env = {**os.environ, "NFSTUDY_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "nfstudy.train",
        "--out",
        str(tmp_path / "ddp"),
    ]
    two = subprocess.run(launch + args, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "nfstudy.train", "--out", str(tmp_path / "one"), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-3000:]
    summary = [json.loads(p.stdout.strip().splitlines()[-1]) for p in (one, two)]
    assert [s["world_size"] for s in summary] == [1, 2]  # one line of results: rank 0 alone writes
    a, b = (pd.read_csv(tmp_path / d / "history.csv") for d in ("one", "ddp"))
    assert len(a) == len(b) == 2 and a["step"].tolist() == b["step"].tolist() == [24, 48]
    # DDP sums each gradient over two half batches, then across the ranks: another order than
    # one process's, as fused training's is (tests/_numerics.py): losses to FUSED_LOSS_RTOL
    # after training, the first loss to FIRST_LOSS_RTOL, accuracies to FUSED_ACC_IMAGES images.
    # Measured: ~1e-7, accuracies equal.
    pd.testing.assert_frame_equal(a[["train_loss", "test_loss"]], b[["train_loss", "test_loss"]], rtol=FUSED_LOSS_RTOL)
    accuracy = ["train_accuracy", "test_accuracy"]
    assert (a[accuracy] - b[accuracy]).abs().max().max() <= (FUSED_ACC_IMAGES + 0.01) / 299
    assert a["train_loss"].iloc[-1] < 0.9 * summary[0]["initial_loss"]  # it trained: a comparison of moving weights
    assert summary[0]["initial_loss"] == pytest.approx(summary[1]["initial_loss"], rel=FIRST_LOSS_RTOL)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint.pt", "history.csv"]


def test_warmup_ramps_the_rate_per_step_then_follows_the_schedule(tiny, tmp_path):
    cfg = config(warmup_epochs=1.5, checkpoint_every=1)  # 6 steps an epoch: 9 warmup steps
    seen = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        whole = train(resnet8(), tiny, cfg, device="cpu", out_dir=tmp_path / "whole")
    finally:
        handle.remove()
    expected = [0.05 * t / 9 for t in range(1, 10)] + [0.05] * 3 + [0.005] * 6 + [0.0005] * 6
    assert seen == pytest.approx(expected, rel=1e-12)
    assert whole.history["lr"].tolist() == pytest.approx([0.05 * 6 / 9, 0.05, 0.005, 0.0005], rel=1e-12)

    def stop_after_1(row):  # inside the warmup: resuming must pick the ramp up where it was
        if row["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(resnet8(), tiny, cfg, device="cpu", out_dir=tmp_path / "cut", on_epoch=stop_after_1)
    resumed = train(resnet8(), tiny, cfg, device="cpu", out_dir=tmp_path / "cut")
    pd.testing.assert_frame_equal(resumed.history, whole.history, check_exact=True)


def test_warmup_past_the_first_drop_is_refused_and_no_warmup_keeps_old_checkpoints():
    with pytest.raises(ValueError, match="past the first lr drop"):
        config(epochs=4, warmup_epochs=3)
    with pytest.raises(ValueError, match="warmup_epochs"):
        config(warmup_epochs=-1)
    from nfstudy.train import describe

    data = SimpleNamespace(
        name="x",
        train_labels=torch.zeros(1),
        test_labels=torch.zeros(1),
        train_images=torch.zeros(1, 3, 8, 8),
        test_images=torch.zeros(1, 3, 8, 8),
    )
    assert "warmup_epochs" not in describe(resnet8(), data, config(), 0, 1)
    assert describe(resnet8(), data, config(warmup_epochs=1), 0, 1)["warmup_epochs"] == 1


def test_the_engine_keeps_the_names_other_trainers_build_on():
    import nfstudy.train as engine

    stable = [
        "CheckpointMismatch",
        "HISTORY_COLUMNS",
        "TrainConfig",
        "TrainResult",
        "accuracy_has_plateaued",
        "backward_and_step",
        "describe",
        "evaluate",
        "fingerprint",
        "has_plateaued",
        "learning_rate",
        "load_checkpoint",
        "milestone_epochs",
        "save_checkpoint",
        "train",
    ]
    assert set(stable) <= set(engine.__all__) and all(hasattr(engine, name) for name in engine.__all__)


def test_a_checkpoint_round_trips_and_refuses_another_configuration(tmp_path, tiny):
    from nfstudy.train import describe, fingerprint, load_checkpoint, save_checkpoint

    description = describe(resnet8(), tiny, config(), 0, 1)
    save_checkpoint(tmp_path / "c.pt", {"fingerprint": fingerprint(description), "description": description, "x": torch.ones(2)})
    assert torch.equal(load_checkpoint(tmp_path / "c.pt", description)["x"], torch.ones(2))
    with pytest.raises(CheckpointMismatch, match="lr: 0.05 there, 0.1 here"):
        load_checkpoint(tmp_path / "c.pt", describe(resnet8(), tiny, config(lr=0.1), 0, 1))
